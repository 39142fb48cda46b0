//! End-to-end: user images on the testbed, through the REST API as users call it. A user
//! changes a node, saves it as an image and starts a new cluster from it (the changes are
//! there, deletions too, `/root/nfs`, scratch and identity are not); a node started from an
//! image is saved again (its image's layer folded in); images are private until shared;
//! names, quotas, a save racing a delete, a damaged image directory and deleting an image in
//! use all get clear errors and leave nothing half-made.

mod common;

use common::rest::*;
use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Runs `script` in node `index` of `cluster` as root; returns its output, failing on
/// a non-zero exit.
#[track_caller]
fn run_in(token: &str, cluster: &str, index: u32, script: &str) -> String {
    let r = post(
        &format!("/clusters/{cluster}/nodes/{index}/exec"),
        token,
        &json!({ "argv": ["sh", "-c", script] }),
    );
    assert_eq!(r.status, 200, "exec {script:?}: {r}");
    assert_eq!(r.json["exit_code"], 0, "exec {script:?}: {r}");
    r.json["stdout"].as_str().unwrap_or_default().to_owned()
}

/// Asks for a save; returns the answer (202 and the image, being saved, or an error).
fn save(token: &str, cluster: &str, name: &str, force: bool) -> Resp {
    post(
        "/images",
        token,
        &json!({"cluster": cluster, "node": 0, "name": name,
            "description": format!("{name}, saved by the end-to-end test"), "force": force}),
    )
}

/// The image once its save ended.
#[track_caller]
fn saved(token: &str, owner: &str, name: &str) -> Value {
    for _ in 0..3 {
        let r = get(&format!("/images/{owner}/{name}?wait=60"), token);
        assert_eq!(r.status, 200, "{r}");
        if !r.json["state"].as_str().unwrap_or("").starts_with("saving") {
            return r.json;
        }
    }
    panic!("image {owner}/{name} still saving after 3 minutes");
}

fn cluster_from(token: &str, name: &str, image: &str) -> Resp {
    post(
        "/clusters",
        token,
        &json!({"name": name, "size": 1, "image": image}),
    )
}

fn delete_image(token: &str, reference: &str) -> Resp {
    api("DELETE", &format!("/images/{reference}"), token, None)
}

fn delete_cluster(token: &str, name: &str) {
    let r = api(
        "DELETE",
        &format!("/clusters/{name}?force=true"),
        token,
        None,
    );
    succeeds(token, &r);
}

/// Files an image's layers left on the shared filesystem (`*.tar` and `*.part`).
fn layer_files(owner: &str, name: &str) -> Vec<String> {
    ok(
        "tb1",
        &format!("ls /var/lib/docklet/global/images/{owner}/{name} 2>/dev/null || true"),
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Deletes every image of the test's users, after every cluster of theirs (which may use
/// each other's images); at the start (what a failed run left) and however a run ends.
struct ImagesCleanup(&'static [&'static str]);

impl ImagesCleanup {
    fn new(users: &'static [&'static str]) -> ImagesCleanup {
        let cleanup = ImagesCleanup(users);
        cleanup.run();
        cleanup
    }

    fn run(&self) {
        for user in self.0 {
            remove_clusters(user);
        }
        let all = get("/images?all=true", root());
        for image in all.json.as_array().cloned().unwrap_or_default() {
            if self
                .0
                .contains(&image["owner"].as_str().unwrap_or_default())
            {
                let _ = delete_image(root(), image["reference"].as_str().unwrap_or_default());
            }
        }
    }
}

impl Drop for ImagesCleanup {
    fn drop(&mut self) {
        self.run();
    }
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_saved_node_starts_new_clusters_and_images_refuse_what_would_break_them() {
    let (a, b, group) = ("imga", "imgb", "imgg");
    // Dropped in reverse order: images (and the clusters using them) go before the users.
    let _users = Cleanup(&["imga", "imgb"], "imgg");
    let _images = ImagesCleanup::new(&["imga", "imgb"]);
    let token_a = fresh_user(a);
    let token_b = fresh_user(b);
    group_for(
        group,
        json!({"vnodes": 6, "images": 2, "image_bytes": GIB}),
        json!({}),
        &[a, b],
    );

    // A configures a node: a new file, a directory, a base file deleted; plus what an image
    // must not carry: the shared data, scratch space.
    succeeds(
        &token_a,
        &post("/clusters", &token_a, &json!({"name": "src", "size": 1})),
    );
    run_in(
        &token_a,
        "src",
        0,
        "echo hello from an image > /opt/hello.txt && mkdir -p /srv/data && \
         echo one > /srv/data/one && echo two > /srv/data/two && rm /etc/issue.net && \
         echo shared > /root/nfs/shared.txt && echo scratch > /var/tmp/scratch && \
         cp /bin/true /opt/suid-true && chmod 4755 /opt/suid-true && \
         ln -s /etc /opt/hostetc && ln -s / /opt/root-link",
    );

    // Bad requests say what is wrong and record nothing.
    for (body, status, code) in [
        (
            json!({"cluster": "src", "node": 0, "name": "../etc"}),
            422,
            "invalid_image",
        ),
        (
            json!({"cluster": "src", "node": 0, "name": "x;reboot"}),
            422,
            "invalid_image",
        ),
        (
            json!({"cluster": "src", "node": 0, "name": "Hello"}),
            422,
            "invalid_image",
        ),
        (
            json!({"cluster": "src", "node": 7, "name": "x"}),
            404,
            "not_found",
        ),
        (
            json!({"cluster": "nope", "node": 0, "name": "x"}),
            404,
            "not_found",
        ),
        (
            json!({"cluster": "src", "node": 0, "name": "x", "bogus": 1}),
            422,
            "invalid_body",
        ),
    ] {
        post("/images", &token_a, &body).assert_error(status, code);
    }
    post(
        "/images",
        &token_a,
        &json!({"cluster": "src", "node": 0, "name": "x", "description": "x".repeat(501)}),
    )
    .assert_error(422, "invalid_image");
    assert_eq!(get("/images", &token_a).json, json!([]));

    // The save: accepted, then ready with its size; the node runs on.
    let r = save(&token_a, "src", "hello", false);
    assert_eq!(r.status, 202, "{r}");
    assert_eq!(r.json["reference"], "imga/hello", "{r}");
    assert!(
        r.json["state"].as_str().unwrap().starts_with("saving"),
        "{r}"
    );
    let hello = saved(&token_a, a, "hello");
    assert_eq!(hello["state"], "ready", "{hello}");
    assert_eq!(hello["current"]["base"], "base", "{hello}");
    assert_eq!(hello["public"], false, "{hello}");
    let bytes = hello["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < 64 * MIB, "{hello}");
    assert_eq!(
        run_in(&token_a, "src", 0, "cat /opt/hello.txt"),
        "hello from an image\n"
    );
    let me = get("/me", &token_a).json;
    assert_eq!(me["usage"]["images"], 1, "{me}");
    assert_eq!(me["usage"]["image_bytes"], bytes, "{me}");
    // The layer holds the vnode's changes only, owned as in an image (root is 0).
    let version = hello["current"]["version"].as_str().unwrap();
    let listing = ok(
        "tb1",
        &format!(
            "tar -tvf /var/lib/docklet/global/images/imga/hello/{version}.tar --numeric-owner"
        ),
    );
    assert!(listing.contains("./opt/hello.txt"), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("c") && l.contains("./etc/issue.net")),
        "the deletion is a whiteout: {listing}"
    );
    for absent in ["root/nfs", "var/tmp/scratch", "etc/machine-id", "ssh_host_"] {
        assert!(!listing.contains(absent), "{absent} saved: {listing}");
    }
    assert!(
        listing
            .lines()
            .filter(|l| l.contains("./opt/hello.txt"))
            .all(|l| l.contains(" 0/0 ")),
        "{listing}"
    );

    // The same name again needs force.
    let r = save(&token_a, "src", "hello", false);
    r.assert_error(409, "conflict");
    assert!(r.text.contains("already have an image named hello"), "{r}");

    // Private: B neither sees nor uses it.
    assert_eq!(get("/images", &token_b).json, json!([]));
    get("/images/imga/hello", &token_b).assert_error(404, "not_found");
    let r = cluster_from(&token_b, "stolen", "imga/hello");
    r.assert_error(422, "unusable_image");
    assert!(r.text.contains("private"), "{r}");
    api(
        "PATCH",
        "/images/imga/hello",
        &token_b,
        Some(&json!({"public": true})),
    )
    .assert_error(403, "forbidden");
    delete_image(&token_b, "imga/hello").assert_error(403, "forbidden");

    // A new cluster from it has the changes and none of the excluded files.
    succeeds(&token_a, &cluster_from(&token_a, "copy", "imga/hello"));
    let seen = run_in(
        &token_a,
        "copy",
        0,
        "cat /opt/hello.txt /srv/data/one; test -e /etc/issue.net && echo issue.net; \
         test -e /var/tmp/scratch && echo scratch; stat -c '%u %U' /opt/hello.txt; \
         cat /root/nfs/shared.txt; hostname",
    );
    assert_eq!(
        seen, "hello from an image\none\n0 root\nshared\nhost-0\n",
        "issue.net and scratch absent, the file root's, /root/nfs the user's share"
    );
    // A setuid file of the layer: on the hosts' disks it would be root's, so it is unpacked
    // without the bit (the tar keeps what the node had); the node that made it keeps its
    // own, on a disk the host mounts nosuid,nodev.
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwsr-xr-x") && l.contains("./opt/suid-true")),
        "{listing}"
    );
    let unpacked = ["tb1", "tb2", "tb3"]
        .iter()
        .map(|host| {
            sh(
                host,
                &format!(
                    "f=/var/lib/docklet/local/image-layers/imga/hello/{version}/opt/suid-true; test -f $f && stat -c '%a %u' $f"
                ),
            )
            .stdout
        })
        .collect::<String>();
    assert_eq!(unpacked, "755 0\n", "setuid on a host's disk");
    // Links the node planted stay links in the layer, pointing where they pointed: the
    // worker unpacked and folded them without following them (issue 17).
    let links = ["tb1", "tb2", "tb3"]
        .iter()
        .map(|host| {
            sh(
                host,
                &format!(
                    "d=/var/lib/docklet/local/image-layers/imga/hello/{version}/opt; \
                     test -d $d && stat -c '%F %N' $d/hostetc $d/root-link"
                ),
            )
            .stdout
        })
        .collect::<String>();
    assert!(
        links.contains("symbolic link '/var/lib/docklet/local/image-layers/imga/hello/")
            && links.contains("/opt/hostetc' -> '/etc'")
            && links.contains("/opt/root-link' -> '/'"),
        "{links}"
    );
    assert_eq!(
        run_in(&token_a, "copy", 0, "stat -c %a /opt/suid-true"),
        "755\n"
    );
    // Inside a node of the image, the links lead into the node's own tree.
    assert_eq!(
        run_in(
            &token_a,
            "copy",
            0,
            "readlink /opt/hostetc; cmp /opt/hostetc/machine-id /etc/machine-id && echo same"
        ),
        "/etc\nsame\n"
    );
    assert_eq!(
        run_in(&token_a, "src", 0, "stat -c %a /opt/suid-true"),
        "4755\n"
    );
    let disk_options = ["tb1", "tb2", "tb3"]
        .iter()
        .map(|host| {
            sh(
                host,
                "findmnt -no OPTIONS /run/docklet/vnodes/imga-src-0/disk || true",
            )
            .stdout
        })
        .collect::<String>();
    assert!(
        disk_options.contains("nosuid") && disk_options.contains("nodev"),
        "{disk_options:?}"
    );

    // Its own identity: not the saved node's machine id.
    let id_src = run_in(&token_a, "src", 0, "cat /etc/machine-id");
    let id_copy = run_in(&token_a, "copy", 0, "cat /etc/machine-id");
    assert_ne!(id_src, id_copy);

    // Shared: B sees it and starts from it; its files are B's root's in B's range.
    let r = api(
        "PATCH",
        "/images/imga/hello",
        &token_a,
        Some(&json!({"public": true})),
    );
    assert_eq!((r.status, &r.json["public"]), (200, &json!(true)), "{r}");
    let listed = get("/images", &token_b).json;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["reference"], "imga/hello", "{listed}");
    succeeds(&token_b, &cluster_from(&token_b, "shared", "imga/hello"));
    assert_eq!(
        run_in(
            &token_b,
            "shared",
            0,
            "cat /opt/hello.txt; stat -c %U /opt/hello.txt"
        ),
        "hello from an image\nroot\n"
    );

    // In use: deleting is refused and says by whom; the image stays usable.
    let r = delete_image(&token_a, "imga/hello");
    r.assert_error(409, "conflict");
    assert!(
        r.text.contains("imga/copy") && r.text.contains("imgb/shared"),
        "{r}"
    );
    assert_eq!(saved(&token_a, a, "hello")["state"], "ready");

    // A node started from an image, saved: the image's layer is folded in, its own changes
    // (a new file, a deleted file of the layer) on top.
    run_in(
        &token_a,
        "copy",
        0,
        "echo second > /opt/second.txt && rm /srv/data/one",
    );
    assert_eq!(save(&token_a, "copy", "hello2", false).status, 202);
    let hello2 = saved(&token_a, a, "hello2");
    assert_eq!(hello2["state"], "ready", "{hello2}");
    assert_eq!(hello2["current"]["base"], "base", "{hello2}");
    succeeds(&token_a, &cluster_from(&token_a, "copy2", "imga/hello2"));
    assert_eq!(
        run_in(
            &token_a,
            "copy2",
            0,
            "cat /opt/hello.txt /opt/second.txt /srv/data/two; ls /srv/data; \
             test -e /etc/issue.net || echo no-issue",
        ),
        "hello from an image\nsecond\ntwo\ntwo\nno-issue\n"
    );

    // The group allows two images.
    let r = save(&token_a, "src", "hello3", false);
    r.assert_error(422, "quota_exceeded");
    assert!(r.text.contains("images quota exceeded"), "{r}");

    // Replacing with force: a new version; the old file goes; clusters using it run on.
    run_in(&token_a, "src", 0, "echo v2 > /opt/v2.txt");
    assert_eq!(save(&token_a, "src", "hello", true).status, 202);
    let replaced = saved(&token_a, a, "hello");
    assert_eq!(replaced["state"], "ready", "{replaced}");
    let new_version = replaced["current"]["version"].as_str().unwrap();
    assert_ne!(new_version, version);
    assert_eq!(layer_files(a, "hello"), [format!("{new_version}.tar")]);
    assert_eq!(
        run_in(&token_a, "copy", 0, "cat /opt/hello.txt"),
        "hello from an image\n"
    );

    // A save racing a delete: the delete is refused while the save runs.
    run_in(&token_a, "src", 0, "head -c 100M /dev/urandom > /opt/big");
    assert_eq!(save(&token_a, "src", "hello", true).status, 202);
    let r = delete_image(&token_a, "imga/hello");
    r.assert_error(409, "conflict");
    assert!(r.text.contains("being saved"), "{r}");
    assert_eq!(saved(&token_a, a, "hello")["state"], "ready");

    // Over the image size quota: the save fails, says why, and leaves no file; the image
    // keeps its last layer.
    let r = api(
        "PATCH",
        &format!("/groups/{group}"),
        root(),
        Some(&json!({"quota": {"image_bytes": 60 * MIB}})),
    );
    assert_eq!(r.status, 200, "{r}");
    run_in(&token_a, "src", 0, "head -c 30M /dev/urandom > /opt/big2");
    let before = saved(&token_a, a, "hello");
    assert_eq!(save(&token_a, "src", "hello", true).status, 202);
    let after = saved(&token_a, a, "hello");
    assert!(
        after["state"]
            .as_str()
            .unwrap()
            .contains("image size quota exceeded"),
        "{after}"
    );
    assert_eq!(after["current"], before["current"], "{after}");
    assert_eq!(
        layer_files(a, "hello"),
        [format!(
            "{}.tar",
            before["current"]["version"].as_str().unwrap()
        )]
    );
    assert_eq!(
        get("/me", &token_a).json["usage"]["image_bytes"],
        before["bytes"].as_u64().unwrap() + hello2["bytes"].as_u64().unwrap()
    );

    // A damaged image directory: a host that must unpack it refuses the vnode and says so,
    // leaving nothing half-unpacked.
    let file = format!(
        "/var/lib/docklet/global/images/imga/hello2/{}.tar",
        hello2["current"]["version"].as_str().unwrap()
    );
    ok("tb1", &format!("truncate -s 10240 {file}"));
    for host in ["tb1", "tb2", "tb3"] {
        ok(
            host,
            "rm -rf /var/lib/docklet/local/image-layers/imga/hello2",
        );
    }
    let r = cluster_from(&token_a, "broken", "imga/hello2");
    let op = wait_operation(&token_a, &r);
    assert_eq!(op["state"], "failed", "{op}");
    let message = op["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("does not match the catalog") && message.contains("damaged"),
        "the node says why: {op}"
    );
    for host in ["tb1", "tb2", "tb3"] {
        let left = ok(
            host,
            "ls /var/lib/docklet/local/image-layers/imga/hello2 2>/dev/null || true",
        );
        assert_eq!(left.trim(), "", "{host}: {left}");
    }
    delete_cluster(&token_a, "broken");

    // Once no cluster uses them, images delete: files, record and quota.
    for cluster in ["copy", "copy2"] {
        delete_cluster(&token_a, cluster);
    }
    delete_cluster(&token_b, "shared");
    for name in ["hello", "hello2"] {
        let r = delete_image(&token_a, &format!("imga/{name}"));
        assert_eq!(r.status, 204, "{r}");
        get(&format!("/images/imga/{name}"), &token_a).assert_error(404, "not_found");
        assert!(layer_files(a, name).is_empty());
    }
    let usage = &get("/me", &token_a).json["usage"];
    assert_eq!(
        (&usage["images"], &usage["image_bytes"]),
        (&json!(0), &json!(0))
    );
    // Gone means gone: no new cluster from it.
    cluster_from(&token_a, "late", "imga/hello").assert_error(422, "unusable_image");

    // A stopped node saves too (its disk is mounted for the save and released after), and
    // starts again as it was. (Without the big files: the group's image size is down to
    // 60 MiB.)
    run_in(&token_a, "src", 0, "rm /opt/big /opt/big2");
    let r = post("/clusters/src/stop", &token_a, &json!({}));
    succeeds(&token_a, &r);
    assert_eq!(save(&token_a, "src", "cold", false).status, 202);
    let cold = saved(&token_a, a, "cold");
    assert_eq!(cold["state"], "ready", "{cold}");
    let listing = ok(
        "tb1",
        &format!(
            "tar -tf /var/lib/docklet/global/images/imga/cold/{}.tar",
            cold["current"]["version"].as_str().unwrap()
        ),
    );
    assert!(listing.contains("./opt/v2.txt"), "{listing}");
    let r = post("/clusters/src/start", &token_a, &json!({}));
    succeeds(&token_a, &r);
    assert_eq!(run_in(&token_a, "src", 0, "cat /opt/v2.txt"), "v2\n");

    // A user with images stays until they are deleted.
    delete_cluster(&token_a, "src");
    let r = api("DELETE", "/users/imga", root(), None);
    r.assert_error(409, "conflict");
    assert!(r.text.contains("still has images (cold)"), "{r}");
    assert_eq!(delete_image(&token_a, "imga/cold").status, 204);
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn administrators_list_share_and_delete_images_with_docklet_admin() {
    let a = "imgadm";
    let _users = Cleanup(&["imgadm"], "");
    let _images = ImagesCleanup::new(&["imgadm"]);
    let token = fresh_user(a);
    succeeds(
        &token,
        &post("/clusters", &token, &json!({"name": "src", "size": 1})),
    );
    run_in(&token, "src", 0, "echo admin > /opt/admin.txt");

    // Saved over D-Bus, waiting with progress.
    let out = ok(
        "tb1",
        "docklet-admin image save imgadm/src 0 tools --description 'made by an admin'",
    );
    assert!(
        out.contains("imgadm/tools") && out.contains("ready"),
        "{out}"
    );
    let list = ok("tb1", "docklet-admin images");
    assert!(
        list.lines()
            .any(|l| l.contains("imgadm/tools") && l.contains("private")),
        "{list}"
    );
    let out = ok("tb1", "docklet-admin image share imgadm/tools");
    assert!(out.contains("public"), "{out}");
    let json: Value = serde_json::from_str(&ok("tb1", "docklet-admin images --json")).unwrap();
    let tools = json
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["reference"] == "imgadm/tools")
        .cloned()
        .unwrap();
    assert_eq!(tools["public"], true, "{tools}");
    // Bad input is refused before reaching the master.
    let bad = sh("tb1", "docklet-admin image share tools");
    assert_eq!(bad.code, 2, "{bad}");
    // In use by nothing: deleted.
    let out = ok("tb1", "docklet-admin image delete imgadm/tools");
    assert!(out.contains("deleted"), "{out}");
    assert!(!ok("tb1", "docklet-admin images").contains("imgadm/tools"));
    get("/images/imgadm/tools", &token).assert_error(404, "not_found");
}

/// The version `images/base/current` points at on `host`.
fn base_version(host: &str) -> String {
    ok(host, "readlink /var/lib/docklet/local/images/base/current")
        .trim()
        .to_owned()
}

/// The system image `base` once no update of it is under way.
#[track_caller]
fn settled_base() -> Value {
    for _ in 0..5 {
        let r = get("/system-images/base?wait=60", root());
        assert_eq!(r.status, 200, "{r}");
        if r.json["settled"] == true {
            return r.json;
        }
    }
    panic!("system image base still updating after 5 minutes");
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn an_administrator_updates_the_base_image_from_a_saved_node() {
    let u = "imgsys";
    let hosts = ["tb1", "tb2", "tb3"];
    let _users = Cleanup(&["imgsys"], "imgsysg");
    let _images = ImagesCleanup::new(&["imgsys"]);
    let token = fresh_user(u);
    group_for(
        "imgsysg",
        json!({"vnodes": 8, "images": 2, "image_bytes": GIB}),
        json!({}),
        &[u],
    );
    let before = settled_base();
    let old_version = base_version("tb1");
    for host in hosts {
        assert_eq!(base_version(host), old_version, "{host}");
    }
    assert!(
        before["state"]
            .as_str()
            .unwrap()
            .starts_with(&format!("3 hosts on {old_version}")),
        "{before}"
    );

    // A cluster that runs through the update, and the node the update is made from: a new
    // file (this run's own: the testbed keeps the updated base), a new directory, a file of
    // the base deleted (on a fresh testbed: an earlier run deleted it for good).
    let release = format!("next-{}", std::process::id());
    succeeds(
        &token,
        &post("/clusters", &token, &json!({"name": "running", "size": 3})),
    );
    succeeds(
        &token,
        &post("/clusters", &token, &json!({"name": "src", "size": 1})),
    );
    run_in(
        &token,
        "src",
        0,
        &format!(
            "echo {release} > /etc/e2e-release && mkdir -p /opt/site && echo ok > /opt/site/x \
             && rm -f /etc/issue.net"
        ),
    );
    assert_eq!(save(&token, "src", "next", false).status, 202);
    assert_eq!(saved(&token, u, "next")["state"], "ready");
    let has_release = format!("test \"$(cat /etc/e2e-release 2>/dev/null)\" = {release}");

    // Only administrators; only saved images of this system image; clear errors.
    let from_next = json!({"from": "imgsys/next"});
    post("/system-images/base", &token, &from_next).assert_error(403, "forbidden");
    post(
        "/system-images/base",
        root(),
        &json!({"from": "imgsys/none"}),
    )
    .assert_error(404, "not_found");
    post("/system-images/base", root(), &json!({"from": "base"}))
        .assert_error(422, "invalid_image");
    post(
        "/system-images/base",
        root(),
        &json!({"from": "imgsys/next", "x": 1}),
    )
    .assert_error(422, "invalid_body");
    post("/system-images/Bad..", root(), &from_next).assert_error(422, "invalid_image");
    post("/system-images/nosuch", root(), &from_next).assert_error(404, "not_found");
    get("/system-images/nosuch", &token).assert_error(404, "not_found");

    // The update: every host builds the version; a second request meanwhile is refused.
    let r = post("/system-images/base", root(), &from_next);
    assert_eq!(r.status, 202, "{r}");
    let version = r.json["update"]["version"].as_str().unwrap().to_owned();
    assert!(version > old_version, "{version} after {old_version}");
    let again = post("/system-images/base", root(), &from_next);
    again.assert_error(409, "conflict");
    assert!(again.text.contains("under way"), "{again}");
    let after = settled_base();
    assert_eq!(after["state"], format!("3 hosts on {version}"), "{after}");
    for host in hosts {
        let entry = after["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .unwrap_or_else(|| panic!("{host} missing: {after}"));
        assert_eq!(entry["current"], version.as_str(), "{after}");
        assert_eq!(entry["build"]["state"], "ready", "{after}");
        assert_eq!(base_version(host), version, "{host}");
        let dir = format!("/var/lib/docklet/local/images/base/{version}");
        assert_eq!(
            ok(host, &format!("cat {dir}/etc/e2e-release")),
            format!("{release}\n")
        );
        assert_eq!(ok(host, &format!("cat {dir}/opt/site/x")), "ok\n");
        let gone = sh(host, &format!("test -e {dir}/etc/issue.net"));
        assert_ne!(gone.code, 0, "{host}: the deleted file came back");
        // Nothing half-made, no mount left behind.
        let leftovers = ok(
            host,
            "ls -d /var/lib/docklet/local/images/base/*.part 2>/dev/null; \
             findmnt -rn -o TARGET | grep image-work || true",
        );
        assert_eq!(leftovers, "", "{host}");
    }
    let listed = get("/system-images", &token);
    assert_eq!(listed.status, 200, "{listed}");
    assert!(
        listed
            .json
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "base"),
        "{listed}"
    );

    // Running nodes keep their version until they restart; new ones get the new one.
    for node in 0..3 {
        let r = post(
            &format!("/clusters/running/nodes/{node}/exec"),
            &token,
            &json!({"argv": ["sh", "-c", has_release]}),
        );
        assert_eq!(r.json["exit_code"], 1, "node {node}: {r}");
    }
    succeeds(
        &token,
        &post("/clusters", &token, &json!({"name": "fresh", "size": 1})),
    );
    run_in(&token, "fresh", 0, &has_release);

    // Over D-Bus: the next version again, waited for with progress; the listing; an update
    // refused with the master's reason.
    let out = ok(
        "tb1",
        "docklet-admin system-image update base --from imgsys/next",
    );
    let second = base_version("tb1");
    assert!(second > version, "{second} after {version}");
    assert!(out.contains(&format!("3 hosts on {second}")), "{out}");
    for host in hosts {
        assert_eq!(base_version(host), second, "{host}");
    }
    let table = ok("tb1", "docklet-admin system-images");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("base") && l.contains("imgsys/next")),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&ok("tb1", "docklet-admin system-images --json")).unwrap();
    assert_eq!(json[0]["update"]["version"], second.as_str(), "{json}");
    let bad = sh(
        "tb1",
        "docklet-admin system-image update base --from imgsys/none",
    );
    assert_ne!(bad.code, 0, "{bad}");
    assert!(
        bad.stderr.contains("there is no image imgsys/none"),
        "{bad}"
    );

    // A worker that restarts meanwhile keeps the versions its running nodes are on, before
    // it has even read their statuses (the kernel's mounts say so).
    for host in hosts {
        ok(
            host,
            "systemctl restart docklet-worker && docklet-admin wait worker",
        );
    }
    // Long enough for the workers' first pass over the system images (at their start).
    std::thread::sleep(std::time::Duration::from_secs(10));
    for node in 0..3 {
        run_in(
            &token,
            "running",
            node,
            "cat /usr/lib/os-release >/dev/null",
        );
    }
    assert!(
        hosts.iter().any(|host| sh(
            host,
            &format!("test -d /var/lib/docklet/local/images/base/{old_version}")
        )
        .code
            == 0),
        "the version the running cluster is on was removed"
    );

    // Restarted, the running cluster gets the newest version.
    succeeds(&token, &post("/clusters/running/stop", &token, &json!({})));
    succeeds(&token, &post("/clusters/running/start", &token, &json!({})));
    for node in 0..3 {
        run_in(
            &token,
            "running",
            node,
            &format!("{has_release} && test ! -e /etc/issue.net"),
        );
    }
    // With nothing on them any more, the older versions go from every host.
    delete_cluster(&token, "src");
    delete_cluster(&token, "fresh");
    wait_for(
        "the older base versions to be removed",
        std::time::Duration::from_secs(90),
        || {
            hosts.iter().all(|host| {
                ok(host, "ls /var/lib/docklet/local/images/base")
                    .lines()
                    .eq([second.as_str(), "current"])
            })
        },
    );
}
