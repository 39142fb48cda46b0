//! The REST API as users call it, from outside the testbed: curl with a bearer token.
#![allow(dead_code)]

use std::io::Write;
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::{PORTAL, curl, ok};

pub struct Resp {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

impl Resp {
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (
                self.status,
                self.json["error"]["code"].as_str().unwrap_or("")
            ),
            (status, code),
            "wanted {status} {code}, got HTTP {} {}",
            self.status,
            self.text
        );
        assert!(
            self.json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "an error says what went wrong: {}",
            self.text
        );
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.text)
    }
}

pub fn api(method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
    let mut cmd = curl();
    let limit = if path.contains("wait=") { "150" } else { "30" };
    cmd.args([
        "-s",
        "-S",
        "-m",
        limit,
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ])
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    if body.is_some() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = cmd
        .arg(format!("{PORTAL}/api/v1{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    if let Some(body) = body {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.to_string().as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Resp {
        status: status.trim().parse().unwrap_or(0),
        text: body.to_owned(),
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

pub fn get(path: &str, token: &str) -> Resp {
    api("GET", path, token, None)
}

pub fn post(path: &str, token: &str, body: &Value) -> Resp {
    api("POST", path, token, Some(body))
}

pub fn login(user: &str, password: &str) -> String {
    let output = curl()
        .args([
            "-s",
            "-m",
            "30",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(json!({"user": user, "password": password}).to_string())
        .arg(format!("{PORTAL}/api/v1/auth/login"))
        .output()
        .expect("curl");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    answer["token"]
        .as_str()
        .unwrap_or_else(|| panic!("login of {user}: {answer}"))
        .to_owned()
}

pub fn root() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let password = ok("tb1", "cat /var/lib/docklet-master/generated_password.txt");
        login("root", password.trim())
    })
}

/// A PAM user on tb1 of whom Docklet knows nothing yet; returns a session token.
pub fn fresh_user(name: &str) -> String {
    let password = format!("Pw-{name}-7d1x");
    ok(
        "tb1",
        &format!(
            "id {name} >/dev/null 2>&1 || useradd -m {name}; echo {name}:{password} | chpasswd"
        ),
    );
    forget_user(name);
    login(name, &password)
}

/// An operation, once it has ended.
pub fn wait_operation(token: &str, r: &Resp) -> Value {
    assert_eq!(r.status, 202, "{r}");
    let id = r.json["id"].as_str().expect("operation id");
    for _ in 0..3 {
        let op = get(&format!("/operations/{id}?wait=60"), token);
        assert_eq!(op.status, 200, "{op}");
        if op.json["state"] != "running" {
            return op.json;
        }
    }
    panic!("operation {id} still running after 3 minutes");
}

#[track_caller]
pub fn succeeds(token: &str, r: &Resp) {
    let op = wait_operation(token, r);
    assert_eq!(op["state"], "succeeded", "{op}");
}

/// Deletes a user's clusters, waiting for them to go.
pub fn remove_clusters(user: &str) {
    let list = get(&format!("/clusters?user={user}"), root());
    for cluster in list.json.as_array().cloned().unwrap_or_default() {
        let name = cluster["name"].as_str().unwrap_or_default();
        let r = api(
            "DELETE",
            &format!("/clusters/{name}?user={user}&force=true"),
            root(),
            None,
        );
        if r.status == 202 {
            let _ = wait_operation(root(), &r);
        }
    }
}

/// Deletes a user's clusters (waiting for them to go) and account.
pub fn forget_user(user: &str) {
    remove_clusters(user);
    let _ = api("DELETE", &format!("/users/{user}"), root(), None);
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Makes group `group` afresh (4 cores, 8 GiB, 40 GiB; nodes of 0.2 cores, 256 MiB, 512 MiB)
/// with the fields of `quota` and `defaults` over those, and moves `users` into it.
pub fn group_for(group: &str, quota: Value, defaults: Value, users: &[&str]) {
    let _ = api("DELETE", &format!("/groups/{group}"), root(), None);
    let over = |mut base: Value, fields: Value| {
        for (key, value) in fields.as_object().expect("fields") {
            base[key] = value.clone();
        }
        base
    };
    let quota = over(
        json!({"cpu_millis": 4000, "memory_bytes": 8 * GIB, "disk_bytes": 40 * GIB,
            "vnodes": 4, "images": 1, "port_mappings": 1, "idle_secs": 0}),
        quota,
    );
    let defaults = over(
        json!({"cpu_millis": 200, "memory_bytes": 256 * MIB, "disk_bytes": 512 * MIB}),
        defaults,
    );
    let r = post(
        "/groups",
        root(),
        &json!({"name": group, "admin": false, "quota": quota, "defaults": defaults}),
    );
    assert_eq!(r.status, 201, "{r}");
    for user in users {
        let r = api(
            "PATCH",
            &format!("/users/{user}"),
            root(),
            Some(&json!({ "group": group })),
        );
        assert_eq!(r.status, 200, "{r}");
    }
}

/// Users and the group a run made, removed however it ends.
pub struct Cleanup(pub &'static [&'static str], pub &'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for user in self.0 {
            forget_user(user);
        }
        let _ = api("DELETE", &format!("/groups/{}", self.1), root(), None);
    }
}
