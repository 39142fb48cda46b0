//! The portal: server-rendered pages on the portal port, beside the API. Pages work as plain
//! HTML forms (every change is a POST with the session's CSRF token, answered by a redirect);
//! scripts only add live updates from the event stream, the terminal and small comforts.
//! Every page calls the same typed actions as the API, so every authorization decision is
//! made there. Templates live in `templates/` (minijinja, HTML auto-escaped); front-end files
//! are embedded ([`assets`]).

mod account;
mod admin;
mod assets;
mod images;
mod jobs;
mod pages;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::Environment;
use serde::Serialize;

use super::Master;
use super::actions::{ApiError, Caller};
use super::session;

/// Every portal page's security headers: scripts, styles and connections only from this
/// origin (no inline script), no framing by anyone, no sniffing, no referrers to elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<Arc<Master>> {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/clusters", post(pages::create_cluster))
        .route("/clusters/{name}", get(pages::cluster))
        .route("/clusters/{name}/start", post(pages::start_cluster))
        .route("/clusters/{name}/stop", post(pages::stop_cluster))
        .route("/clusters/{name}/scale-out", post(pages::scale_out))
        .route("/clusters/{name}/scale-in", post(pages::scale_in))
        .route(
            "/clusters/{name}/delete",
            get(pages::confirm_delete).post(pages::delete_cluster),
        )
        .route(
            "/clusters/{name}/nodes/{index}/terminal",
            get(pages::terminal),
        )
        .route("/clusters/{name}/ports", post(pages::map_port))
        .route(
            "/clusters/{name}/ports/{public_port}/unmap",
            post(pages::unmap_port),
        )
        .route(
            "/clusters/{name}/nodes/{index}/save-image",
            post(images::save_image),
        )
        .route("/images", get(images::images))
        .route("/images/{owner}/{name}/share", post(images::share_image))
        .route(
            "/images/{owner}/{name}/unshare",
            post(images::unshare_image),
        )
        .route("/images/{owner}/{name}/delete", post(images::delete_image))
        .route(
            "/system-images/{name}/update",
            post(images::update_system_image),
        )
        .route("/jobs", get(jobs::jobs))
        .route("/jobs/new", get(jobs::new_job).post(jobs::submit_job))
        .route("/jobs/{id}", get(jobs::job))
        .route("/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/jobs/{id}/tasks/{task}/{index}/log", get(jobs::job_log))
        .route("/admin/jobs", get(jobs::admin_jobs))
        .route("/admin/jobs/{id}/{action}", post(jobs::admin_job_action))
        .route("/account", get(account::account))
        .route("/account/password", post(account::change_password))
        .route("/account/tokens", post(account::create_token))
        .route("/account/tokens/{id}/revoke", post(account::revoke_token))
        .route("/admin/users", get(admin::users).post(admin::create_user))
        .route("/admin/users/{name}", post(admin::update_user))
        .route("/admin/users/{name}/delete", post(admin::delete_user))
        .route(
            "/admin/groups",
            get(admin::groups).post(admin::create_group),
        )
        .route("/admin/groups/{name}", post(admin::update_group))
        .route("/admin/groups/{name}/delete", post(admin::delete_group))
        .route("/admin/default-group", post(admin::set_default_group))
        .route("/admin/hosts", get(admin::hosts))
        .route("/admin/hosts/{name}/drain", post(admin::drain))
        .route("/admin/hosts/{name}/undrain", post(admin::undrain))
        .route("/admin/usage", get(admin::usage))
        .layer(axum::middleware::from_fn(security_headers))
        .route("/static/{*path}", get(assets::serve))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // A page may set a policy of its own.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages show one user's data: never from a shared cache.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn templates() -> &'static Environment<'static> {
    static TEMPLATES: OnceLock<Environment<'static>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut env = Environment::new();
        macro_rules! add {
            ($($name:literal),*) => {$(
                env.add_template($name, include_str!(concat!("../../../templates/", $name)))
                    .expect(concat!("template ", $name));
            )*};
        }
        add!(
            "base.html",
            "macros.html",
            "login.html",
            "dashboard.html",
            "cluster.html",
            "confirm_delete.html",
            "terminal.html",
            "images.html",
            "account.html",
            "admin_users.html",
            "admin_groups.html",
            "admin_hosts.html",
            "admin_usage.html",
            "jobs.html",
            "job_new.html",
            "job.html",
            "job_log.html",
            "admin_jobs.html",
            "error.html"
        );
        env.add_filter("bytes", format_bytes);
        env.add_filter("cpus", format_cpus);
        env.add_filter("when", format_time);
        env.add_filter("duration", format_duration);
        env
    })
}

/// `1.5 GiB`, `512 MiB`, ...
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Millicores as CPUs: `1`, `0.5`, `2.25`.
pub fn format_cpus(millis: u64) -> String {
    let text = format!("{:.3}", millis as f64 / 1000.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM`.
pub fn format_time(secs: u64) -> String {
    if secs == 0 {
        return "never".into();
    }
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// A span of seconds in its two largest units: `45 s`, `12 min`, `1 h 30 min`, `2 d 3 h`.
pub fn format_duration(secs: u64) -> String {
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// A logged-in browser: the caller, and the session token its CSRF token derives from.
pub struct Session {
    pub caller: Caller,
    pub csrf: String,
    pub token: String,
    /// The address the browser reached the master at, for the public addresses of port
    /// mappings (when no `ports_host` is configured).
    pub reached: Option<std::net::IpAddr>,
}

impl Session {
    /// The refusal of a form whose CSRF field is not this session's token, if it is not.
    fn refuse_forged(&self, presented: &str) -> Option<Response> {
        if crate::model::account::same_secret(presented, &self.csrf) {
            None
        } else {
            Some(render_error(
                Some(self),
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from the portal. Reload the page and try again.",
            ))
        }
    }
}

impl FromRequestParts<Arc<Master>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        master: &Arc<Master>,
    ) -> Result<Self, Self::Rejection> {
        let to_login = |parts: &Parts| {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let target = if parts.method == axum::http::Method::GET && next != "/" {
                login_url(next)
            } else {
                "/login".to_owned()
            };
            Redirect::to(&target).into_response()
        };
        let Some(token) = session::session_from_cookies(&parts.headers) else {
            return Err(to_login(parts));
        };
        match master.authenticate_login(&token).await {
            Ok(caller) => Ok(Session {
                caller,
                csrf: session::csrf_token(&token),
                token,
                reached: parts
                    .extensions
                    .get::<crate::master::serve::LocalAddr>()
                    .map(|a| a.0.ip()),
            }),
            Err(ApiError::Unauthenticated(_)) => {
                let mut response = to_login(parts);
                if let Ok(value) = HeaderValue::from_str(&session::session_cookie(None, 0)) {
                    response.headers_mut().insert(header::SET_COOKIE, value);
                }
                Err(response)
            }
            Err(e) => Err(render_error(None, status_of(&e), &e.to_string())),
        }
    }
}

/// The client's address, for the login throttle and the logs: the connection's peer, or
/// what `trusted_proxies` say it is ([`session::client_address`]).
pub struct Peer(pub String);

impl FromRequestParts<Arc<Master>> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        master: &Arc<Master>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Peer(session::client_address(
            peer,
            &parts.headers,
            &master.config.trusted_proxies,
        )))
    }
}

/// The login page, sending the browser back to `next` (a path of this site) afterwards.
pub(crate) fn login_url(next: &str) -> String {
    format!("/login?next={}", percent_encode(next))
}

/// `text` as a query value: everything but unreserved characters and `/` escaped.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut url = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// Where a login may send the browser afterwards: a path of this site, nothing else.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control)
                && n.len() <= 2048 =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn status_of(e: &ApiError) -> StatusCode {
    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// What every page's frame shows.
#[derive(Serialize)]
struct Frame<'a> {
    user: Option<&'a str>,
    admin: bool,
    csrf: Option<&'a str>,
    cluster_name: &'a str,
    version: &'a str,
    notice: Option<&'a str>,
    error: Option<&'a str>,
}

/// Renders `template` with the frame and the page's own values (`page`, a serializable
/// struct or map), answering `status`.
fn render(
    master: &Master,
    session: Option<&Session>,
    template: &str,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
    page: impl Serialize,
) -> Response {
    let frame = Frame {
        user: session.map(|s| s.caller.name()),
        admin: session.is_some_and(|s| s.caller.admin),
        csrf: session.map(|s| s.csrf.as_str()),
        cluster_name: &master.config.cluster_name,
        version: crate::VERSION,
        notice,
        error,
    };
    let context = minijinja::context! { frame => frame, page => page };
    match templates()
        .get_template(template)
        .and_then(|t| t.render(context))
    {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!("rendering {template}: {e:#}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// A page that only says what went wrong, with a way back.
fn render_error(session: Option<&Session>, status: StatusCode, message: &str) -> Response {
    // The frame needs the master only for its name and version; an error page can do
    // without the name.
    let frame = Frame {
        user: session.map(|s| s.caller.name()),
        admin: session.is_some_and(|s| s.caller.admin),
        csrf: session.map(|s| s.csrf.as_str()),
        cluster_name: "",
        version: crate::VERSION,
        notice: None,
        error: Some(message),
    };
    let context = minijinja::context! { frame => frame, page => minijinja::context! { status => status.as_u16() } };
    match templates()
        .get_template("error.html")
        .and_then(|t| t.render(context))
    {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => (status, message.to_owned()).into_response(),
    }
}

/// After a change: back to `target` with a fixed notice (`done=<code>`, never free text from
/// the request, so nobody can make the portal say something of their choosing).
fn see_other(target: &str, done: &str) -> Response {
    let sep = if target.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{target}{sep}done={done}")).into_response()
}

/// The notices `see_other` may ask for.
fn notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "created" => "The cluster is being created; it shows its nodes' progress below.",
        "started" => "The cluster is starting.",
        "stopped" => "The cluster is stopping.",
        "scaled-out" => "A node is being added.",
        "scaled-in" => "The node is being removed.",
        "deleted" => "The cluster is being deleted.",
        "mapped" => "The port is mapped: it answers while its node runs.",
        "unmapped" => "The port mapping is removed.",
        "image-saving" => "The image is being saved; this page shows its progress.",
        "image-shared" => "The image is shared: every user may start clusters from it.",
        "image-unshared" => "The image is private again.",
        "image-deleted" => "The image has been deleted.",
        "system-image-updating" => {
            "The hosts are making the new version of the system image; this page shows their \
             progress. Running nodes keep their version until they restart."
        }
        "password" => "Your password has been changed.",
        "revoked" => "The token has been revoked.",
        "user-created" => "The user has been created.",
        "user-saved" => "The user has been saved.",
        "user-deleted" => "The user has been deleted.",
        "group-created" => "The group has been created.",
        "group-saved" => "The group has been saved.",
        "group-deleted" => "The group has been deleted.",
        "default-group" => "New users now join that group.",
        "draining" => "The host is draining: its vnodes move elsewhere.",
        "undrained" => "The host takes new vnodes again.",
        "job-submitted" => "The job is queued; this page follows it.",
        "job-cancelled" => "The job is cancelled: what ran is stopping.",
        "job-held" => "The job is held: nothing more of it starts until it is released.",
        "job-released" => "The job is released: it may start again.",
        _ => return None,
    })
}

#[derive(serde::Deserialize, Default)]
pub struct DoneQuery {
    done: Option<String>,
}

/// The CSRF field alone, for forms that carry nothing else.
#[derive(serde::Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// A number typed into form field `label`: `None` if left empty, an error naming the field
/// if it is not a number that `fits` (described by `what`).
fn form_number(
    field: &Option<String>,
    label: &str,
    fits: impl Fn(f64) -> bool,
    what: &str,
) -> Result<Option<f64>, String> {
    match given(field) {
        None => Ok(None),
        Some(text) => match text.parse::<f64>() {
            Ok(v) if v.is_finite() && fits(v) => Ok(Some(v)),
            _ => Err(format!("{label}: {text:?} is not {what}")),
        },
    }
}

/// An empty field means "not given".
fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `template` rendered for a signed-in user (an administrator if `admin`) with the
    /// page's values; slashes in attributes read as slashes, as the browser reads them.
    pub(super) fn render_page(template: &str, admin: bool, page: impl Serialize) -> String {
        let frame = Frame {
            user: Some("alice"),
            admin,
            csrf: Some("t"),
            cluster_name: "c",
            version: "v",
            notice: None,
            error: None,
        };
        templates()
            .get_template(template)
            .unwrap()
            .render(minijinja::context! { frame => frame, page => page })
            .unwrap()
            .replace("&#x2f;", "/")
    }

    #[test]
    fn every_template_parses() {
        let env = templates();
        for name in [
            "login.html",
            "dashboard.html",
            "cluster.html",
            "terminal.html",
            "images.html",
            "account.html",
            "admin_users.html",
            "admin_groups.html",
            "admin_hosts.html",
            "admin_usage.html",
            "jobs.html",
            "job_new.html",
            "job.html",
            "job_log.html",
            "admin_jobs.html",
            "error.html",
        ] {
            env.get_template(name).unwrap();
        }
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(20 << 30), "20 GiB");
        assert_eq!(format_cpus(1000), "1");
        assert_eq!(format_cpus(500), "0.5");
        assert_eq!(format_cpus(2250), "2.25");
        assert_eq!(format_time(0), "never");
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06 UTC");
        assert_eq!(format_duration(45), "45 s");
        assert_eq!(format_duration(720), "12 min");
        assert_eq!(format_duration(3600), "1 h");
        assert_eq!(format_duration(5400 + 59), "1 h 30 min");
        assert_eq!(format_duration(2 * 86_400 + 3 * 3600 + 60), "2 d 3 h");
    }

    #[test]
    fn logins_only_send_browsers_to_this_site() {
        assert_eq!(safe_next(Some("/clusters/c1")), "/clusters/c1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(Some("/a\nb")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn user_strings_are_escaped() {
        let html = templates()
            .get_template("error.html")
            .unwrap()
            .render(minijinja::context! {
                frame => Frame { user: Some("<b>x</b>"), admin: false, csrf: Some("t"), cluster_name: "c", version: "v", notice: None, error: Some("<script>alert(1)</script>") },
                page => minijinja::context! { status => 400 },
            })
            .unwrap();
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<b>x</b>"));
    }
}
