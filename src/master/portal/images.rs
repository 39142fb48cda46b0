//! The pages for user images: the images page (the user's own images with share, unshare,
//! delete and "new cluster from this image", and the images others share), and the cluster
//! page's form that saves a node as an image. A save runs in the background: the images page
//! polls itself while one is in progress, so the user sees it become ready. The page also
//! lists the system images with every host's version; administrators update one there from
//! a saved image (the page follows the update the same way).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::{CsrfOnly, DoneQuery, Session, notice, render, render_error, see_other, status_of};
use crate::master::Master;
use crate::master::actions::images::{ImagePatch, ImageView, SaveImageRequest};
use crate::master::actions::system_images::{SystemImageUpdateRequest, SystemImageView};
use crate::master::errors::ApiError;
use crate::model::image::Pending;

type Shared = State<Arc<Master>>;

/// An image as the images page shows it.
#[derive(Serialize)]
struct ImageRow<'a> {
    #[serde(flatten)]
    image: &'a ImageView,
    /// The state's first word (`ready`, `saving`, `failed`, ...), which picks its colour:
    /// the state itself carries progress and reasons.
    phase: &'a str,
    /// New clusters may start from it now.
    usable: bool,
}

fn image_row<'a>(image: &'a ImageView, user: &str) -> ImageRow<'a> {
    ImageRow {
        phase: image
            .state
            .split([' ', ':', ';'])
            .next()
            .unwrap_or_default(),
        usable: image.record.refuse_use(user).is_none(),
        image,
    }
}

/// A system image as the images page shows it.
#[derive(Serialize)]
struct SystemImageRow<'a> {
    #[serde(flatten)]
    image: &'a SystemImageView,
    /// The saved images an update could come from (ready, saved on this system image).
    candidates: Vec<&'a str>,
}

/// The images page's values: `user`'s own images, the ones others share, the system images,
/// and whether one of the user's is being saved or a system image updated (the page then
/// follows it).
fn images_context(
    images: &[ImageView],
    system: &[SystemImageView],
    user: &str,
) -> minijinja::Value {
    let (own, shared): (Vec<ImageRow>, Vec<ImageRow>) = images
        .iter()
        .map(|image| image_row(image, user))
        .partition(|row| row.image.record.owner == user);
    let saving = own
        .iter()
        .any(|row| matches!(row.image.record.pending, Some(Pending::Saving { .. })));
    let follow = saving || system.iter().any(|s| !s.settled);
    let system: Vec<SystemImageRow> = system
        .iter()
        .map(|image| SystemImageRow {
            candidates: images
                .iter()
                .filter(|i| {
                    i.record.pending.is_none()
                        && i.record
                            .current
                            .as_ref()
                            .is_some_and(|c| c.base == image.name)
                })
                .map(|i| i.reference.as_str())
                .collect(),
            image,
        })
        .collect();
    minijinja::context! { own => own, shared => shared, saving => saving, follow => follow, system => system }
}

async fn images_page(
    master: &Master,
    session: &Session,
    status: StatusCode,
    done: Option<&str>,
    error: Option<&str>,
) -> Response {
    let listed = async {
        Ok::<_, ApiError>((
            master.list_images(&session.caller, false).await?,
            master.list_system_images(&session.caller).await?,
        ))
    };
    let (images, system) = match listed.await {
        Ok(listed) => listed,
        Err(e) => return render_error(Some(session), status_of(&e), &e.to_string()),
    };
    render(
        master,
        Some(session),
        "images.html",
        status,
        notice(done),
        error,
        images_context(&images, &system, session.caller.name()),
    )
}

pub async fn images(
    State(master): Shared,
    session: Session,
    Query(query): Query<DoneQuery>,
) -> Response {
    images_page(
        &master,
        &session,
        StatusCode::OK,
        query.done.as_deref(),
        None,
    )
    .await
}

/// Runs an image action from the images page: back to it with `done`, or the page again
/// with the error.
async fn image_action<T>(
    master: &Master,
    session: &Session,
    csrf: &str,
    done: &str,
    action: impl Future<Output = Result<T, ApiError>>,
) -> Response {
    if let Some(r) = session.refuse_forged(csrf) {
        return r;
    }
    match action.await {
        Ok(_) => see_other("/images", done),
        Err(e) => images_page(master, session, status_of(&e), None, Some(&e.to_string())).await,
    }
}

async fn set_public(
    master: &Master,
    session: &Session,
    (owner, name): (String, String),
    csrf: &str,
    public: bool,
) -> Response {
    let patch = ImagePatch {
        public: Some(public),
        description: None,
    };
    let action = master.update_image(&session.caller, &owner, &name, &patch);
    let done = if public {
        "image-shared"
    } else {
        "image-unshared"
    };
    image_action(master, session, csrf, done, action).await
}

pub async fn share_image(
    State(master): Shared,
    session: Session,
    Path(image): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    set_public(&master, &session, image, &form.csrf, true).await
}

pub async fn unshare_image(
    State(master): Shared,
    session: Session,
    Path(image): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    set_public(&master, &session, image, &form.csrf, false).await
}

pub async fn delete_image(
    State(master): Shared,
    session: Session,
    Path((owner, name)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let action = master.delete_image(&session.caller, &owner, &name);
    image_action(&master, &session, &form.csrf, "image-deleted", action).await
}

#[derive(Deserialize)]
pub struct SystemImageForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    from: String,
}

/// An administrator's "Update" of a system image: back to the images page, which follows
/// the update, or the page again with the error.
pub async fn update_system_image(
    State(master): Shared,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<SystemImageForm>,
) -> Response {
    let request = SystemImageUpdateRequest {
        from: form.from.trim().to_owned(),
    };
    let action = master.update_system_image(&session.caller, &name, &request);
    image_action(
        &master,
        &session,
        &form.csrf,
        "system-image-updating",
        action,
    )
    .await
}

#[derive(Deserialize)]
pub struct SaveImageForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    /// The checkbox "replace an existing image of that name": present when ticked.
    force: Option<String>,
}

/// The cluster page's "Save as image" of one node: on to the images page, which follows the
/// save, or the cluster page again with the error.
pub async fn save_image(
    State(master): Shared,
    session: Session,
    Path((cluster, node)): Path<(String, u32)>,
    Form(form): Form<SaveImageForm>,
) -> Response {
    let request = SaveImageRequest {
        cluster: cluster.clone(),
        node,
        name: form.name.trim().to_owned(),
        description: form.description.trim().to_owned(),
        force: form.force.is_some(),
    };
    let action = master.save_image(&session.caller, None, &request);
    super::pages::cluster_action_to(
        &master,
        &session,
        &cluster,
        &form.csrf,
        "/images",
        "image-saving",
        action,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, templates};
    use super::*;
    use crate::model::image::{ImageRecord, ImageVersion};

    fn record(owner: &str, name: &str, public: bool, saved: bool) -> ImageRecord {
        ImageRecord {
            owner: owner.into(),
            name: name.into(),
            description: format!("{name} <by> {owner}"),
            public,
            created_at: 1_795_000_000,
            current: saved.then(|| ImageVersion {
                version: "1795000000-0000abcd".into(),
                base: "base".into(),
                bytes: 3 << 20,
                sha256: "0".repeat(64),
                saved_at: 1_795_000_000,
                saved_from: format!("{owner}-c1-0"),
            }),
            pending: None,
            last_error: None,
        }
    }

    fn render_images(images: &[ImageView]) -> String {
        render_page(images, &[], false)
    }

    fn render_page(images: &[ImageView], system: &[SystemImageView], admin: bool) -> String {
        templates()
            .get_template("images.html")
            .unwrap()
            .render(minijinja::context! {
                frame => Frame { user: Some("alice"), admin, csrf: Some("t"), cluster_name: "c", version: "v", notice: None, error: None },
                page => images_context(images, system, "alice"),
            })
            .unwrap()
            // Slashes in attributes are escaped; the browser reads them as slashes.
            .replace("&#x2f;", "/")
    }

    #[test]
    fn the_images_page_follows_a_save_and_offers_shared_images() {
        let mut saving = record("alice", "web", false, false);
        saving.pending = Some(Pending::Saving {
            vnode: "alice-c1-0".into(),
            host: "h1".into(),
            requested_at: 1_795_000_000,
            max_bytes: 1 << 30,
            written_bytes: 12 << 20,
            description: String::new(),
        });
        let images: Vec<ImageView> = vec![
            saving.into(),
            record("alice", "tools", true, true).into(),
            record("bob", "shared", true, true).into(),
        ];
        let html = render_images(&images);
        // Alice's own, one being saved: the page polls itself, and shows the progress.
        assert!(
            html.contains(r#"hx-trigger="docklet-event from:body""#),
            "{html}"
        );
        assert!(html.contains("saving (12"), "{html}");
        assert!(html.contains("state-saving"), "{html}");
        // A ready, shared one of hers: size, unshare, a new cluster from it.
        assert!(html.contains("3 MiB"), "{html}");
        assert!(html.contains("/images/alice/tools/unshare"), "{html}");
        assert!(html.contains("/images/alice/web/share"), "{html}");
        assert!(html.contains("/images/alice/web/delete"), "{html}");
        assert!(html.contains("/?image=alice/tools"), "{html}");
        // The one being saved cannot start a cluster yet.
        assert!(!html.contains("/?image=alice/web"), "{html}");
        // Bob's shared image: in the second table, usable, not changeable by Alice.
        assert!(html.contains("/?image=bob/shared"), "{html}");
        assert!(!html.contains("/images/bob/shared/"), "{html}");
        // Descriptions are the owners' text: escaped.
        assert!(html.contains("shared &lt;by&gt; bob"), "{html}");

        // Once ready, the page stops polling.
        let ready: Vec<ImageView> = vec![record("alice", "web", false, true).into()];
        let html = render_images(&ready);
        assert!(!html.contains("hx-trigger"), "{html}");
        assert!(html.contains("state-ready"), "{html}");
    }

    fn base(settled: bool) -> SystemImageView {
        SystemImageView {
            name: "base".into(),
            state: if settled {
                "3 hosts on 20261129T130101Z".into()
            } else {
                "updating to 20261129T130101Z from alice/tools: 1 of 3 hosts done".into()
            },
            update: None,
            hosts: vec![crate::model::system_image::HostVersion {
                host: "h1".into(),
                current: "20261129T130101Z".into(),
                build: None,
            }],
            settled,
        }
    }

    #[test]
    fn administrators_update_a_system_image_from_images_saved_on_it() {
        let mut other_base = record("alice", "other", false, true);
        other_base.current.as_mut().unwrap().base = "other".into();
        let images: Vec<ImageView> = vec![
            record("alice", "tools", false, true).into(),
            record("alice", "unsaved", false, false).into(),
            other_base.into(),
        ];
        let html = render_page(&images, &[base(true)], true);
        assert!(html.contains(r#"data-system-image="base""#), "{html}");
        assert!(html.contains("3 hosts on 20261129T130101Z"), "{html}");
        assert!(html.contains("/system-images/base/update"), "{html}");
        // Only ready images saved on base are offered.
        assert!(html.contains("<option>alice/tools</option>"), "{html}");
        assert!(!html.contains("<option>alice/unsaved</option>"), "{html}");
        assert!(!html.contains("<option>alice/other</option>"), "{html}");
        assert!(!html.contains("hx-trigger"), "{html}");

        // While an update runs: the page follows it, and offers no second one.
        let html = render_page(&images, &[base(false)], true);
        assert!(
            html.contains(r#"hx-trigger="docklet-event from:body""#),
            "{html}"
        );
        assert!(!html.contains("/system-images/base/update"), "{html}");
        assert!(html.contains("1 of 3 hosts done"), "{html}");

        // Users see the system images, not the form.
        let html = render_page(&images, &[base(true)], false);
        assert!(html.contains("3 hosts on 20261129T130101Z"), "{html}");
        assert!(!html.contains("/system-images/base/update"), "{html}");
    }
}
