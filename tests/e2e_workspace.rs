//! End-to-end: what a user reaches in a browser through the master, on the testbed — the web
//! terminal (`/api/v1/clusters/{name}/nodes/{index}/terminal`: a real shell in a real vnode,
//! UTF-8, resize, Ctrl-C, reattaching after a dropped connection) and the workspace proxy
//! (`/go/<user>/<cluster>/<node>/`: the node's real Jupyter, its REST API, kernels over
//! WebSocket, files up and down), with bearer tokens and with the portal's session cookie,
//! and for nobody but the cluster's owner.
//!
//! Each test has PAM users of its own (made on tb1), removes what an interrupted earlier run
//! left, and deletes its clusters and accounts however it ends.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

/// Where the portal port is reached (tb1), for WebSockets over TLS.
const ADDRESS: &str = "10.213.0.11:8000";
const MIB: u64 = 1 << 20;

// ---- HTTP through curl ----

struct Resp {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.text();
        let cut: String = text.chars().take(600).collect();
        write!(f, "HTTP {} {}", self.status, cut)
    }
}

/// Credentials of a request: none, a bearer token, or a browser's cookie (the portal's
/// session cookie, or a workspace host's cookie) with the `Origin` the browser would send,
/// if any.
#[derive(Clone, Copy)]
enum Cred<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str, Option<&'a str>),
    Workspace(&'a str, Option<&'a str>),
}

impl Cred<'_> {
    /// The `Cookie` and `Origin` headers of a browser's request.
    fn cookie_headers(&self) -> Vec<(&'static str, String)> {
        let (name, token, origin) = match *self {
            Cred::Cookie(token, origin) => (SESSION_COOKIE, token, origin),
            Cred::Workspace(token, origin) => (WORKSPACE_COOKIE, token, origin),
            Cred::None | Cred::Bearer(_) => return Vec::new(),
        };
        let mut headers = vec![("Cookie", format!("{name}={token}"))];
        if let Some(origin) = origin {
            headers.push(("Origin", origin.to_owned()));
        }
        headers
    }
}

/// One request to the portal port, with curl: `path` on the portal, or a whole URL (a
/// workspace host's).
fn http(
    method: &str,
    path: &str,
    cred: Cred,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Resp {
    let url = if path.starts_with("https://") {
        path.to_owned()
    } else {
        format!("{PORTAL}{path}")
    };
    let mut cmd = curl_for(&url);
    cmd.args(["-s", "-S", "-m", "60", "-X", method, "-D", "/dev/stderr"])
        .args(["-o", "-"]);
    if let Cred::Bearer(token) = cred {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    for (name, value) in cred.cookie_headers() {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    for (name, value) in headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run curl");
    {
        let mut stdin = child.stdin.take().unwrap();
        if let Some(body) = body {
            stdin.write_all(body).unwrap();
        }
    }
    let output = child.wait_with_output().expect("curl");
    let headers = String::from_utf8_lossy(&output.stderr).into_owned();
    // The last header block (after any 1xx).
    let block = headers
        .rsplit("\r\n\r\n")
        .find(|b| b.starts_with("HTTP/"))
        .unwrap_or_default()
        .to_owned();
    let status = block
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {url}: no answer: {headers}"));
    Resp {
        status,
        headers: block,
        body: output.stdout,
    }
}

fn api(method: &str, path: &str, token: &str, body: Option<&Value>) -> Resp {
    let body = body.map(|b| b.to_string().into_bytes());
    http(
        method,
        &format!("/api/v1{path}"),
        Cred::Bearer(token),
        body.as_deref(),
        &[("Content-Type", "application/json")],
    )
}

fn login(user: &str, password: &str) -> String {
    let body = json!({"user": user, "password": password}).to_string();
    let r = http(
        "POST",
        "/api/v1/auth/login",
        Cred::None,
        Some(body.as_bytes()),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 200, "login of {user}: {r}");
    r.json()["token"].as_str().unwrap().to_owned()
}

fn root() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let password = ok("tb1", "cat /var/lib/docklet-master/generated_password.txt");
        login("root", password.trim())
    })
}

// ---- users and clusters ----

/// A PAM user on tb1 of whom Docklet knows nothing yet; returns a session token.
fn fresh_user(name: &str) -> String {
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

/// Deletes `user`'s clusters (waiting for them to go) and account.
fn forget_user(user: &str) {
    let list = api("GET", &format!("/clusters?user={user}"), root(), None);
    let mut operations = Vec::new();
    for cluster in list.json().as_array().cloned().unwrap_or_default() {
        let name = cluster["name"].as_str().unwrap_or_default();
        let r = api(
            "DELETE",
            &format!("/clusters/{name}?user={user}&force=true"),
            root(),
            None,
        );
        if r.status == 202 {
            operations.push(r.json()["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    for id in operations {
        for _ in 0..3 {
            let r = api("GET", &format!("/operations/{id}?wait=60"), root(), None);
            if r.json()["state"] != "running" {
                break;
            }
        }
    }
    let r = api("DELETE", &format!("/users/{user}"), root(), None);
    assert!(matches!(r.status, 204 | 404), "delete user {user}: {r}");
}

/// Removes the users' clusters and accounts when the test ends, however it ends.
struct Cleanup(Vec<&'static str>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for user in &self.0 {
            forget_user(user);
        }
    }
}

/// Creates a one-node cluster and waits until it runs.
fn cluster(token: &str, name: &str) -> Value {
    let body = json!({"name": name, "size": 1, "cpu_millis": 500,
        "memory_bytes": 512 * MIB, "disk_bytes": 1024 * MIB});
    let r = api("POST", "/clusters", token, Some(&body));
    assert_eq!(r.status, 202, "create {name}: {r}");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let op = api("GET", &format!("/operations/{id}?wait=120"), token, None);
    assert_eq!(op.json()["state"], "succeeded", "create {name}: {op}");
    let shown = api("GET", &format!("/clusters/{name}"), token, None);
    assert_eq!(shown.status, 200, "{shown}");
    shown.json()
}

// ---- WebSockets ----

type Socket = tungstenite::WebSocket<TlsStream>;

/// Opens a WebSocket on the portal port (`path` on the portal, or a whole `https://` URL of
/// a workspace host); `Err` carries the HTTP status of a refusal.
fn websocket(path: &str, cred: Cred) -> Result<Socket, u16> {
    let url = match path.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("wss://{PORTAL_NAME}:8000{path}"),
    };
    let name = url["wss://".len()..]
        .split([':', '/'])
        .next()
        .unwrap()
        .to_owned();
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    if let Cred::Bearer(token) = cred {
        headers.insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    for (name, value) in cred.cookie_headers() {
        headers.insert(name, value.parse().unwrap());
    }
    let stream = tls_connect_to(&name, ADDRESS, Duration::from_secs(20));
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("WebSocket {path}: {e}"),
    }
}

/// A terminal as a test drives it: what it printed so far, as bytes.
struct Terminal {
    socket: Socket,
    screen: Vec<u8>,
    /// The first frame: `{"session", "new"}`.
    hello: Value,
}

impl Terminal {
    fn open(path: &str, cred: Cred) -> Result<Terminal, u16> {
        let mut socket = websocket(path, cred)?;
        let hello = match socket.read() {
            Ok(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("the first frame of a terminal: {other:?}"),
        };
        Ok(Terminal {
            socket,
            screen: Vec::new(),
            hello,
        })
    }

    fn session(&self) -> String {
        self.hello["session"].as_str().unwrap().to_owned()
    }

    fn type_keys(&mut self, keys: &str) {
        self.socket
            .send(Message::Binary(keys.as_bytes().to_vec().into()))
            .unwrap();
    }

    fn control(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .unwrap();
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen).into_owned()
    }

    /// Reads until the screen shows `needle`, within `limit`.
    #[track_caller]
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while !self.screen().contains(needle) {
            assert!(
                start.elapsed() < limit,
                "no {needle:?} within {limit:?} in {:?}",
                self.screen()
            );
            match self.socket.read() {
                Ok(Message::Binary(data)) => self.screen.extend_from_slice(&data),
                Ok(Message::Text(text)) => self.screen.extend_from_slice(text.as_bytes()),
                Ok(_) => {}
                Err(e) => panic!("terminal read: {e}; screen so far {:?}", self.screen()),
            }
        }
    }

    /// Runs `echo <tag>-$$-end` and returns the shell's PID.
    fn shell_pid(&mut self, tag: &str) -> u32 {
        self.type_keys(&format!("echo {tag}-$$-end\r"));
        let start = self.screen.len();
        let pattern = format!("{tag}-");
        let limit = Duration::from_secs(15);
        let begin = Instant::now();
        loop {
            let text = String::from_utf8_lossy(&self.screen[start..]).into_owned();
            for piece in text.split(&pattern).skip(1) {
                if let Some(pid) = piece.strip_suffix_end() {
                    return pid;
                }
            }
            assert!(begin.elapsed() < limit, "no PID in {text:?}");
            match self.socket.read() {
                Ok(Message::Binary(data)) => self.screen.extend_from_slice(&data),
                Ok(_) => {}
                Err(e) => panic!("terminal read: {e}"),
            }
        }
    }
}

trait PidPiece {
    fn strip_suffix_end(&self) -> Option<u32>;
}

impl PidPiece for str {
    /// `1234-end...` → 1234 (the typed `$$-end` echo does not parse).
    fn strip_suffix_end(&self) -> Option<u32> {
        let (digits, rest) = self.split_once('-')?;
        rest.starts_with("end").then(|| digits.parse().ok())?
    }
}

fn terminal_path(cluster: &str, query: &str) -> String {
    format!("/api/v1/clusters/{cluster}/nodes/0/terminal?{query}")
}

// ---- the tests ----

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn the_web_terminal_is_a_real_shell_that_survives_a_dropped_connection() {
    let (a, b) = ("wsterma", "wstermb");
    let _cleanup = Cleanup(vec![a, b]);
    let token_a = fresh_user(a);
    let token_b = fresh_user(b);
    cluster(&token_a, "t1");
    let started = Instant::now();

    let mut term = Terminal::open(
        &terminal_path("t1", "cols=80&rows=24"),
        Cred::Bearer(&token_a),
    )
    .expect("a terminal for the owner");
    assert_eq!(term.hello["new"], true, "{}", term.hello);
    let session = term.session();

    // A real shell in node 0.
    term.type_keys("hostname\r");
    term.wait_for("host-0\r\n", Duration::from_secs(20));
    // Resize.
    term.control(json!({"resize": {"cols": 101, "rows": 31}}));
    term.type_keys("stty size\r");
    term.wait_for("31 101", Duration::from_secs(10));
    // UTF-8 both ways: what printf prints is not what was typed (the echo of the line).
    term.type_keys("printf '%s-%s\\n' 'héllo' '✓'\r");
    term.wait_for("héllo-✓", Duration::from_secs(10));
    // Ctrl-C interrupts a long command and the prompt comes back.
    term.type_keys("sleep 100\r");
    std::thread::sleep(Duration::from_millis(500));
    let interrupted = Instant::now();
    term.type_keys("\x03");
    term.type_keys("echo after-$((40+2))\r");
    term.wait_for("after-42", Duration::from_secs(10));
    assert!(interrupted.elapsed() < Duration::from_secs(10));
    let pid = term.shell_pid("first");
    term.type_keys("echo marker-$((3*5))\r");
    term.wait_for("marker-15", Duration::from_secs(10));

    // The connection drops (no close frame): the same shell is there for a new one, with what
    // it printed replayed first.
    drop(term);
    std::thread::sleep(Duration::from_millis(500));
    let mut again = Terminal::open(
        &terminal_path("t1", &format!("cols=90&rows=20&session={session}")),
        Cred::Bearer(&token_a),
    )
    .expect("reattach");
    assert_eq!(
        again.hello,
        json!({"session": session, "new": false}),
        "reattached"
    );
    again.wait_for("marker-15", Duration::from_secs(5));
    assert_eq!(again.shell_pid("second"), pid, "the same shell");
    // The new connection's size applies.
    again.type_keys("stty size\r");
    again.wait_for("20 90", Duration::from_secs(10));

    // An explicit close (code 1000) ends the session; its id then starts a new one.
    again
        .socket
        .close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        }))
        .unwrap();
    let _ = again.socket.flush();
    std::thread::sleep(Duration::from_millis(500));
    let mut fresh = Terminal::open(
        &terminal_path("t1", &format!("session={session}")),
        Cred::Bearer(&token_a),
    )
    .unwrap();
    assert_eq!(fresh.hello["new"], true, "{}", fresh.hello);
    assert_ne!(fresh.session(), session);
    assert_ne!(fresh.shell_pid("third"), pid, "a new shell");
    // The shell's exit ends it: the last frame says how.
    fresh.type_keys("exit 3\r");
    fresh.wait_for(r#"{"exit":3}"#, Duration::from_secs(10));

    // A browser: the session cookie, with the portal's own Origin — and never another's.
    let origin = PORTAL.to_owned();
    let mut browser = Terminal::open(
        &terminal_path("t1", ""),
        Cred::Cookie(&token_a, Some(&origin)),
    )
    .expect("a terminal for the owner's browser");
    browser.type_keys("hostname\r");
    browser.wait_for("host-0\r\n", Duration::from_secs(20));
    drop(browser);
    for foreign in [Some("http://evil.example"), None] {
        let refused = Terminal::open(&terminal_path("t1", ""), Cred::Cookie(&token_a, foreign));
        assert_eq!(refused.err(), Some(403), "a cross-site WebSocket");
    }

    // Nobody else: another user gets nothing of A's (not even whether it exists), an
    // administrator neither; no credentials, no terminal.
    let forbidden = Terminal::open(
        &terminal_path("t1", &format!("user={a}")),
        Cred::Bearer(&token_b),
    );
    assert_eq!(forbidden.err(), Some(403));
    let own_namespace = Terminal::open(&terminal_path("t1", ""), Cred::Bearer(&token_b));
    assert_eq!(own_namespace.err(), Some(404));
    let admin = Terminal::open(
        &terminal_path("t1", &format!("user={a}")),
        Cred::Bearer(root()),
    );
    assert_eq!(admin.err(), Some(403));
    assert_eq!(
        Terminal::open(&terminal_path("t1", ""), Cred::None).err(),
        Some(401)
    );
    // Not a WebSocket: said plainly.
    let r = http(
        "GET",
        &terminal_path("t1", ""),
        Cred::Bearer(&token_a),
        None,
        &[],
    );
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "{r}"
    );
    eprintln!("terminal checks took {:?}", started.elapsed());
}

/// Runs `code` in a kernel over its WebSocket and returns what it printed on stdout.
/// Reads a Jupyter terminal's `["stdout", text]` messages until `needle` shows (true) or
/// 30 s pass (false).
fn jupyter_terminal_prints(socket: &mut Socket, needle: &str) -> bool {
    let start = Instant::now();
    let mut printed = String::new();
    while start.elapsed() < Duration::from_secs(30) {
        let Ok(Message::Text(text)) = socket.read() else {
            continue;
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message[0] == "stdout" {
            printed.push_str(message[1].as_str().unwrap_or_default());
            if printed.contains(needle) {
                return true;
            }
        }
    }
    eprintln!("the Jupyter terminal printed: {printed:?}");
    false
}

fn run_cell(socket: &mut Socket, code: &str) -> String {
    let msg_id = format!("e2e-{}", std::process::id());
    let request = json!({
        "header": {"msg_id": msg_id, "username": "e2e", "session": "e2e-session",
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": false, "store_history": false,
                    "user_expressions": {}, "allow_stdin": false, "stop_on_error": true},
    });
    socket
        .send(Message::Text(request.to_string().into()))
        .unwrap();
    let start = Instant::now();
    let mut stdout = String::new();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        let message = match socket.read() {
            Ok(Message::Text(text)) => serde_json::from_str::<Value>(&text).unwrap(),
            Ok(_) => continue,
            Err(e) => panic!("kernel channel: {e}; seen {seen:?}"),
        };
        if message["parent_header"]["msg_id"] != msg_id {
            continue;
        }
        let kind = message["msg_type"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "stream" if message["content"]["name"] == "stdout" => {
                stdout.push_str(message["content"]["text"].as_str().unwrap_or_default());
            }
            "status" if message["content"]["execution_state"] == "idle" => return stdout,
            "error" => panic!("the cell failed: {message}"),
            _ => {}
        }
        seen.push(kind);
    }
    panic!("the cell did not finish in 60 s; seen {seen:?}, stdout {stdout:?}");
}

/// Enters `user`'s workspace host as a browser does from the portal: the portal's `path`
/// (a `/go/…` path) with the session cookie answers with a one-time grant for the user's
/// workspace host, which exchanges it for its cookie and sends the browser on to `path`.
/// Returns the grant's URL and the cookie.
fn enter_workspace(user: &str, session: &str, path: &str) -> (String, String) {
    let navigate = [
        ("Accept", "text/html"),
        ("Sec-Fetch-Site", "same-origin"),
        ("Sec-Fetch-Mode", "navigate"),
    ];
    let r = http("GET", path, Cred::Cookie(session, None), None, &navigate);
    assert_eq!(r.status, 303, "{r}");
    let grant = r.header("location").unwrap();
    assert!(
        grant.starts_with(&format!(
            "{}/_docklet/enter?grant=dkt_",
            workspace_origin(user)
        )),
        "{grant}"
    );
    assert_eq!(r.header("referrer-policy").as_deref(), Some("no-referrer"));
    let r = http("GET", &grant, Cred::None, None, &navigate);
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(r.header("location").as_deref(), Some(path), "{r}");
    let cookie = r.header("set-cookie").unwrap_or_default();
    for attribute in ["; Path=/", "; Secure", "; HttpOnly", "; SameSite=Lax"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    let value = cookie
        .strip_prefix(&format!("{WORKSPACE_COOKIE}="))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no workspace cookie: {cookie}"))
        .to_owned();
    (grant, value)
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn the_workspace_is_the_nodes_jupyter_for_its_owner_only() {
    let (a, b) = ("wsjupa", "wsjupb");
    let _cleanup = Cleanup(vec![a, b]);
    let token_a = fresh_user(a);
    let token_b = fresh_user(b);
    cluster(&token_a, "w1");
    let started = Instant::now();
    let origin = workspace_origin(a);
    let base = format!("{origin}/go/{a}/w1/0");

    // Into the workspace host from the portal: a one-time grant for the signed-in owner,
    // exchanged for a cookie of that host alone.
    let (grant, cookie_a) = enter_workspace(a, &token_a, &format!("/go/{a}/w1/0/tree"));
    let browser = Cred::Workspace(&cookie_a, Some(&origin));
    let r = http("GET", &grant, Cred::None, None, &[]);
    assert_eq!(r.status, 401, "a grant is good once: {r}");
    assert!(r.header("set-cookie").is_none(), "{r}");
    // b's grant, taken to a's host, opens nothing (and is spent).
    let r = http(
        "GET",
        &format!("/go/{b}/w1/0/"),
        Cred::Cookie(&token_b, None),
        None,
        &[],
    );
    assert_eq!(r.status, 303, "{r}");
    let grant_b = r.header("location").unwrap();
    let stolen = grant_b.replace(&workspace_origin(b), &origin);
    assert_ne!(stolen, grant_b);
    let r = http("GET", &stolen, Cred::None, None, &[]);
    assert_eq!(r.status, 401, "b's grant on a's host: {r}");
    assert_eq!(http("GET", &grant_b, Cred::None, None, &[]).status, 401);

    // The workspace cookie opens neither the portal nor the API...
    for cred in [
        Cred::Cookie(&cookie_a, Some(PORTAL)),
        Cred::Bearer(&cookie_a),
    ] {
        let r = http("GET", "/api/v1/me", cred, None, &[]);
        assert_eq!(r.status, 401, "{r}");
    }
    let r = http(
        "GET",
        "/account",
        Cred::Cookie(&cookie_a, None),
        None,
        &[("Accept", "text/html")],
    );
    assert_eq!(
        (r.status, r.header("location").as_deref()),
        (303, Some("/login?next=/account")),
        "a portal page for a workspace cookie: {r}"
    );
    // ... the portal's session cookie opens no workspace (browsers never send it there) ...
    let r = http(
        "GET",
        &format!("{base}/api/status"),
        Cred::Cookie(&token_a, Some(&origin)),
        None,
        &[],
    );
    assert_eq!(r.status, 401, "{r}");
    // ... and the portal's host proxies nothing: its /go/ hands out grants, and a change
    // sent there is told where workspaces are.
    let r = http(
        "GET",
        &format!("/go/{a}/w1/0/api/status"),
        Cred::Bearer(&token_a),
        None,
        &[],
    );
    assert_eq!(r.status, 303, "{r}");
    assert!(!r.text().contains("started"), "{r}");
    let r = http(
        "POST",
        &format!("/go/{a}/w1/0/api/kernels"),
        Cred::Bearer(&token_a),
        Some(b"{}"),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 404, "{r}");
    assert!(r.text().contains(&origin), "{r}");
    // Nothing of the portal is served on a workspace host.
    let r = http(
        "GET",
        &format!("{origin}/api/v1/me"),
        Cred::Bearer(&token_a),
        None,
        &[],
    );
    assert_eq!(r.status, 404, "{r}");

    // Jupyter's REST API (its first request starts it in the node).
    let r = http(
        "GET",
        &format!("{base}/api/status"),
        Cred::Bearer(&token_a),
        None,
        &[],
    );
    assert_eq!(r.status, 200, "{r}");
    assert!(r.json()["started"].is_string(), "{r}");
    // Its pages, to the owner's browser.
    let r = http(
        "GET",
        &format!("{base}/tree"),
        browser,
        None,
        &[("Accept", "text/html")],
    );
    assert_eq!(r.status, 200, "{r}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{}",
        r.headers
    );
    assert!(
        r.text()
            .contains("<title>Home Page - Select or create a notebook</title>"),
        "{r}"
    );
    assert!(
        r.header("content-security-policy")
            .is_some_and(|p| p.contains("frame-ancestors 'self'")),
        "{}",
        r.headers
    );
    let r = http("GET", &base, browser, None, &[]);
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some(format!("/go/{a}/w1/0/"))),
        "{r}"
    );

    // A kernel, driven over its WebSocket through the proxy: with a token, and from the
    // owner's browser (the session cookie and the portal's Origin).
    let r = http(
        "POST",
        &format!("{base}/api/kernels"),
        Cred::Bearer(&token_a),
        Some(b"{}"),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 201, "{r}");
    let kernel = r.json()["id"].as_str().unwrap().to_owned();
    let channels = format!("{base}/api/kernels/{kernel}/channels");
    let mut socket = websocket(&channels, Cred::Bearer(&token_a)).expect("kernel channels");
    assert_eq!(run_cell(&mut socket, "print(6*7)"), "42\n");
    drop(socket);
    let mut socket = websocket(&channels, browser).expect("kernel channels from a browser");
    assert_eq!(run_cell(&mut socket, "print('✓', 2**10)"), "✓ 1024\n");
    drop(socket);

    // One of Jupyter's own terminals: made through its REST API, then typed into over its
    // WebSocket from the owner's browser.
    let r = http(
        "POST",
        &format!("{base}/api/terminals"),
        Cred::Bearer(&token_a),
        Some(b"{}"),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 200, "{r}");
    let name = r.json()["name"].as_str().unwrap().to_owned();
    let mut socket = websocket(&format!("{base}/terminals/websocket/{name}"), browser)
        .expect("a Jupyter terminal");
    let typed = json!(["stdin", "echo jupyter-$((6*7)) in $(hostname)\r"]).to_string();
    socket.send(Message::Text(typed.into())).unwrap();
    assert!(
        jupyter_terminal_prints(&mut socket, "jupyter-42 in host-0"),
        "the Jupyter terminal did not run the command"
    );
    drop(socket);

    // A file up and down: the contents API, then the raw file (2 MiB, streamed).
    let content: String = (0..2 * MIB as usize / 64)
        .map(|i| format!("{i:063}\n"))
        .collect();
    let body = json!({"type": "file", "format": "text", "content": content}).to_string();
    let r = http(
        "PUT",
        &format!("{base}/api/contents/x.txt"),
        Cred::Bearer(&token_a),
        Some(body.as_bytes()),
        &[("Content-Type", "application/json")],
    );
    assert!(matches!(r.status, 200 | 201), "{r}");
    let r = http("GET", &format!("{base}/files/x.txt"), browser, None, &[]);
    assert_eq!(r.status, 200, "{}", r.status);
    assert!(r.body == content.as_bytes(), "the file came back different");

    // Nobody else: another user (with a token, or the cookie of their own workspace host),
    // the administrator, another site or a neighbouring workspace host, or no credentials.
    let (_, cookie_b) = enter_workspace(b, &token_b, &format!("/go/{b}/w1/0/"));
    for cred in [
        Cred::Bearer(&token_b),
        Cred::Workspace(&cookie_b, None),
        Cred::Bearer(root()),
    ] {
        let r = http("GET", &format!("{base}/api/status"), cred, None, &[]);
        assert_eq!(r.status, 403, "{r}");
        assert!(!r.text().contains("started"), "{r}");
    }
    assert_eq!(
        websocket(&channels, Cred::Bearer(&token_b)).err(),
        Some(403)
    );
    assert_eq!(
        websocket(&channels, Cred::Workspace(&cookie_b, Some(&origin))).err(),
        Some(403)
    );
    let r = http(
        "GET",
        &format!("{origin}/go/{a}/nosuch/0/api/status"),
        Cred::Bearer(&token_b),
        None,
        &[],
    );
    assert_eq!(r.status, 403, "{r}");
    let r = http(
        "GET",
        &format!("{origin}/go/{b}/w1/0/api/status"),
        Cred::Bearer(&token_b),
        None,
        &[],
    );
    assert_eq!(r.status, 404, "b's workspace is not on a's host: {r}");
    let neighbour = workspace_origin(b);
    for (from, site) in [
        ("https://evil.example", "cross-site"),
        (neighbour.as_str(), "same-site"),
    ] {
        let r = http(
            "POST",
            &format!("{base}/api/kernels"),
            Cred::Workspace(&cookie_a, Some(from)),
            Some(b"{}"),
            &[
                ("Content-Type", "application/json"),
                ("Sec-Fetch-Site", site),
            ],
        );
        assert_eq!(r.status, 403, "a POST from {from}: {r}");
        let r = http(
            "GET",
            &format!("{base}/api/contents"),
            Cred::Workspace(&cookie_a, Some(from)),
            None,
            &[("Sec-Fetch-Site", site), ("Sec-Fetch-Mode", "cors")],
        );
        assert_eq!(r.status, 403, "a read by a script of {from}: {r}");
        assert_eq!(
            websocket(&channels, Cred::Workspace(&cookie_a, Some(from))).err(),
            Some(403),
            "a WebSocket from {from}"
        );
    }
    // Without credentials a browser goes back through the portal (which grants again or asks
    // for a login); a script is told to authenticate.
    let r = http(
        "GET",
        &format!("{base}/tree?x=1"),
        Cred::None,
        None,
        &[("Accept", "text/html,*/*")],
    );
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(
        r.header("location"),
        Some(format!("{PORTAL}/go/{a}/w1/0/tree?x=1"))
    );
    let r = http(
        "GET",
        &format!("/go/{a}/w1/0/tree?x=1"),
        Cred::None,
        None,
        &[("Accept", "text/html,*/*")],
    );
    assert_eq!(r.status, 303, "{r}");
    assert_eq!(
        r.header("location").as_deref(),
        Some(format!("/login?next=/go/{a}/w1/0/tree%3Fx%3D1").as_str())
    );
    let r = http("GET", &format!("{base}/api/status"), Cred::None, None, &[]);
    assert_eq!(r.status, 401, "{r}");
    let r = http(
        "GET",
        &format!("{origin}/go/{a}/w1/7/api/status"),
        Cred::Bearer(&token_a),
        None,
        &[],
    );
    assert_eq!(r.status, 404, "{r}");
    // Logging out of the portal ends the workspace cookie made from that login.
    let again = login(a, &format!("Pw-{a}-7d1x"));
    let (_, cookie_again) = enter_workspace(a, &again, &format!("/go/{a}/w1/0/"));
    let status = |cookie: &str| {
        http(
            "GET",
            &format!("{base}/api/status"),
            Cred::Workspace(cookie, None),
            None,
            &[],
        )
        .status
    };
    assert_eq!(status(&cookie_again), 200);
    let r = http(
        "POST",
        "/api/v1/auth/logout",
        Cred::Bearer(&again),
        None,
        &[],
    );
    assert_eq!(r.status, 204, "{r}");
    assert_eq!(
        status(&cookie_again),
        401,
        "the logout ended its workspace cookie"
    );
    assert_eq!(status(&cookie_a), 200, "another login's cookie goes on");

    // What the node receives: its own token, never Docklet's. Jupyter's token is the
    // node's own random one, which its worker keeps root-only, and a listener of ours in
    // Jupyter's place shows the headers that arrive.
    let exec = |argv: Value| {
        let r = api(
            "POST",
            "/clusters/w1/nodes/0/exec",
            &token_a,
            Some(&json!({"argv": argv})),
        );
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.json()["exit_code"], 0, "{r}");
        r.json()["stdout"].as_str().unwrap().to_owned()
    };
    let config: Value = serde_json::from_str(&exec(json!([
        "cat",
        "/etc/docklet/jupyter_notebook_config.json"
    ])))
    .unwrap();
    let expected = config["NotebookApp"]["token"].as_str().unwrap().to_owned();
    assert!(
        docklet::model::vnode::is_workspace_token(&expected),
        "{config}"
    );
    let kept = ["tb1", "tb2", "tb3"]
        .iter()
        .map(|host| {
            sh(
                host,
                &format!(
                    "f=/var/lib/docklet/local/vnodes/{a}-w1-0/workspace-token; test -f $f && stat -c '%a %U' $f && cat $f"
                ),
            )
            .stdout
        })
        .collect::<String>();
    assert_eq!(
        kept,
        format!("600 root\n{expected}"),
        "the worker keeps it, root-only"
    );
    exec(json!([
        "systemctl",
        "stop",
        "docklet-jupyter.socket",
        "docklet-jupyter-proxy.service",
        "docklet-jupyter.service"
    ]));
    let echo = "import http.server, json\n\
        class H(http.server.BaseHTTPRequestHandler):\n\
        \x20   def do_GET(self):\n\
        \x20       body = json.dumps(list(self.headers.items())).encode()\n\
        \x20       self.send_response(200)\n\
        \x20       self.send_header('Content-Length', str(len(body)))\n\
        \x20       self.end_headers()\n\
        \x20       self.wfile.write(body)\n\
        \x20   do_POST = do_GET\n\
        http.server.HTTPServer(('127.0.0.1', 8888), H).serve_forever()\n";
    exec(json!([
        "systemd-run",
        "--unit=e2e-echo",
        "python3",
        "-c",
        echo
    ]));
    let mut seen = Value::Null;
    wait_for("the echo listener", Duration::from_secs(20), || {
        let r = http(
            "GET",
            &format!("{base}/echo"),
            Cred::Bearer(&token_a),
            None,
            &[
                (
                    "Cookie",
                    &format!(
                        "theme=dark; {SESSION_COOKIE}={token_a}; {WORKSPACE_COOKIE}={cookie_a}"
                    ),
                ),
                ("X-CSRF-Token", "abc"),
            ],
        );
        seen = r.json();
        r.status == 200 && seen.is_array()
    });
    let headers: Vec<(String, String)> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_ascii_lowercase(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let all = format!("{headers:?}");
    assert!(
        !all.contains(&token_a) && !all.contains(&cookie_a) && !all.contains("dkt_"),
        "a Docklet token reached the node: {all}"
    );
    assert_eq!(
        get("authorization"),
        [format!("token {expected}").as_str()],
        "{all}"
    );
    assert_eq!(get("cookie"), ["theme=dark"], "{all}");
    assert!(get("x-csrf-token").is_empty(), "{all}");
    assert_eq!(
        get("x-forwarded-host"),
        [format!("{}:8000", workspace_host(a)).as_str()],
        "{all}"
    );
    assert_eq!(get("x-forwarded-proto"), ["https"], "{all}");
    assert_eq!(get("x-forwarded-for").len(), 1, "{all}");
    eprintln!("workspace checks took {:?}", started.elapsed());
}

/// The worker's resident memory on `host`, in KiB.
fn worker_rss(host: &str) -> u64 {
    let status = ok(
        host,
        "cat /proc/$(systemctl show -p MainPID --value docklet-worker)/status",
    );
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn closed_terminals_leave_nothing_behind() {
    let a = "wsleak";
    let _cleanup = Cleanup(vec![a]);
    let token = fresh_user(a);
    let shown = cluster(&token, "l1");
    let host = shown["nodes"][0]["host"].as_str().unwrap().to_owned();
    let id = format!("{a}-l1-0");
    let cycle = |n: usize| {
        for i in 0..n {
            let mut term =
                Terminal::open(&terminal_path("l1", ""), Cred::Bearer(&token)).expect("a terminal");
            assert_eq!(term.hello["new"], true);
            term.type_keys(&format!("echo cycle-$((1000+{i}))\r"));
            term.wait_for(&format!("cycle-{}", 1000 + i), Duration::from_secs(20));
            term.socket.close(None).unwrap();
            let _ = term.socket.flush();
            // Read to the end, so the close is sent and answered.
            while term.socket.read().is_ok() {}
        }
    };
    let sessions = || {
        ok(
            &host,
            &format!("systemctl list-units --all --no-legend 'docklet-exec-{id}-*' | wc -l"),
        )
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    // Warm up (allocator arenas, connections), then measure around 200 more.
    cycle(20);
    wait_for(
        "the warm-up's shells to end",
        Duration::from_secs(20),
        || sessions() == 0,
    );
    let before = worker_rss(&host);
    let start = Instant::now();
    cycle(200);
    let took = start.elapsed();
    // Explicitly closed, so at once: not after the grace period of a dropped connection.
    wait_for("every shell to end", Duration::from_secs(15), || {
        sessions() == 0
    });
    let after = worker_rss(&host);
    eprintln!(
        "200 terminals opened, used and closed in {took:?} ({:?} each); worker RSS {before} KiB -> {after} KiB",
        took / 200
    );
    assert!(
        after <= before + 4096,
        "the worker kept {} KiB after 200 closed terminals",
        after - before
    );
}

/// Whether a terminal's connection has ended (closed, or dropped by the master), reading
/// for at most `limit`.
fn terminal_ended(term: &mut Terminal, limit: Duration) -> bool {
    term.socket
        .get_ref()
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < limit {
        match term.socket.read() {
            Ok(Message::Close(_)) => return true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn a_password_change_ends_every_other_session_and_its_open_connections() {
    let user = "wsrev";
    let _cleanup = Cleanup(vec![user]);
    forget_user(user);
    // A local account: its password is Docklet's to change.
    let (first, second) = ("First-pass-2026", "Second-pass-2026");
    let r = api(
        "POST",
        "/users",
        root(),
        Some(&json!({"name": user, "password": first})),
    );
    assert_eq!(r.status, 201, "{r}");
    let laptop = login(user, first);
    // Another session (a browser left open elsewhere, or a stolen one) and its API token.
    let other = login(user, first);
    let r = api("POST", "/tokens", &other, Some(&json!({"name": "script"})));
    assert_eq!(r.status, 201, "{r}");
    let script = r.json()["token"].as_str().unwrap().to_owned();
    cluster(&other, "rev");
    // The other session's workspace cookie (entered from it, on the user's workspace host).
    let (_, workspace) = enter_workspace(user, &other, &format!("/go/{user}/rev/0/"));
    let workspace_status = || {
        http(
            "GET",
            &format!("{}/go/{user}/rev/0/api/status", workspace_origin(user)),
            Cred::Workspace(&workspace, None),
            None,
            &[],
        )
        .status
    };
    assert_eq!(workspace_status(), 200);

    // The other session's open terminal and event stream.
    let mut term = Terminal::open(&terminal_path("rev", ""), Cred::Bearer(&other))
        .expect("a terminal for the owner");
    term.type_keys("echo open-$((6*7))\r");
    term.wait_for("open-42", Duration::from_secs(20));
    let mut events = curl()
        .args(["-s", "-N", "-m", "120"])
        .args(["-H", &format!("Authorization: Bearer {other}")])
        .arg(format!("{PORTAL}/api/v1/events"))
        .stdout(Stdio::null())
        .spawn()
        .expect("run curl");
    std::thread::sleep(Duration::from_secs(1));
    assert!(events.try_wait().unwrap().is_none(), "the stream is open");

    // Bad changes change nothing: a session alone cannot set a new password.
    let patch = |body: Value| api("PATCH", &format!("/users/{user}"), &laptop, Some(&body));
    let r = patch(json!({"password": second}));
    assert_eq!(r.status, 422, "{r}");
    assert_eq!(r.json()["error"]["code"], "missing_current_password", "{r}");
    let r = patch(json!({"password": second, "current_password": "not-the-one-1"}));
    assert_eq!(r.status, 422, "{r}");
    assert_eq!(r.json()["error"]["code"], "wrong_password", "{r}");
    let r = patch(json!({"password": "", "current_password": first}));
    assert_eq!(r.json()["error"]["code"], "invalid_password", "{r}");
    assert!(!terminal_ended(&mut term, Duration::from_millis(500)));
    assert_eq!(api("GET", "/me", &script, None).status, 200);

    // The change: every other session and token ends, with its connections, at once.
    let r = patch(json!({"password": second, "current_password": first}));
    assert_eq!(r.status, 200, "{r}");
    let changed = Instant::now();
    assert!(
        terminal_ended(&mut term, Duration::from_secs(2)),
        "the other session's terminal is still open 2 s after the change"
    );
    let terminal_took = changed.elapsed();
    while events.try_wait().unwrap().is_none() {
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "the other session's event stream is still open 2 s after the change"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "after the change: the terminal ended in {terminal_took:?}, the event stream in {:?}",
        changed.elapsed()
    );
    for (what, token) in [("the other session", &other), ("its API token", &script)] {
        let r = api("GET", "/me", token, None);
        assert_eq!(r.status, 401, "{what} still works: {r}");
    }
    assert_eq!(workspace_status(), 401, "its workspace cookie still works");
    assert!(
        Terminal::open(&terminal_path("rev", ""), Cred::Bearer(&other)).is_err(),
        "a revoked session opens no terminal"
    );
    // The session that made the change goes on; the old password is gone.
    assert_eq!(api("GET", "/me", &laptop, None).status, 200);
    let r = http(
        "POST",
        "/api/v1/auth/login",
        Cred::None,
        Some(
            json!({"user": user, "password": first})
                .to_string()
                .as_bytes(),
        ),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(r.status, 401, "{r}");
    let fresh = login(user, second);

    // A lock ends them all, the one that changed the password too.
    let r = api(
        "PATCH",
        &format!("/users/{user}"),
        root(),
        Some(&json!({"status": "locked"})),
    );
    assert_eq!(r.status, 200, "{r}");
    for token in [&laptop, &fresh] {
        assert_eq!(api("GET", "/me", token, None).status, 401);
    }
}

#[test]
#[ignore = "end-to-end: needs the testbed; run tools/test"]
fn every_form_and_cookie_call_refuses_a_request_from_another_site() {
    // The administrator's browser session: every route below would change something for it.
    let admin = root();
    let before = api("GET", "/tokens", admin, None);
    assert_eq!(before.status, 200, "{before}");
    let forms = [
        "/logout",
        "/clusters",
        "/clusters/c/start",
        "/clusters/c/stop",
        "/clusters/c/scale-out",
        "/clusters/c/scale-in",
        "/clusters/c/delete",
        "/clusters/c/ports",
        "/clusters/c/ports/30000/unmap",
        "/clusters/c/nodes/0/save-image",
        "/images/root/i/share",
        "/images/root/i/unshare",
        "/images/root/i/delete",
        "/system-images/base/update",
        "/account/password",
        "/account/tokens",
        "/account/tokens/x/revoke",
        "/admin/users",
        "/admin/users/nobody",
        "/admin/users/nobody/delete",
        "/admin/groups",
        "/admin/groups/primary",
        "/admin/groups/primary/delete",
        "/admin/default-group",
        "/admin/hosts/tb3/drain",
        "/admin/hosts/tb3/undrain",
    ];
    let calls = [
        ("POST", "/api/v1/auth/logout"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/x"),
        ("POST", "/api/v1/clusters"),
        ("DELETE", "/api/v1/clusters/c"),
        ("POST", "/api/v1/clusters/c/start"),
        ("POST", "/api/v1/clusters/c/stop"),
        ("POST", "/api/v1/clusters/c/scale-out"),
        ("POST", "/api/v1/clusters/c/scale-in"),
        ("POST", "/api/v1/clusters/c/nodes/0/exec"),
        ("POST", "/api/v1/clusters/c/nodes/0/recover"),
        ("POST", "/api/v1/clusters/c/nodes/0/ports"),
        ("DELETE", "/api/v1/ports/30000"),
        ("POST", "/api/v1/images"),
        ("PATCH", "/api/v1/images/root/i"),
        ("DELETE", "/api/v1/images/root/i"),
        ("POST", "/api/v1/system-images/base"),
        ("POST", "/api/v1/users"),
        ("PATCH", "/api/v1/users/root"),
        ("DELETE", "/api/v1/users/nobody"),
        ("POST", "/api/v1/groups"),
        ("PATCH", "/api/v1/groups/primary"),
        ("DELETE", "/api/v1/groups/primary"),
        ("PUT", "/api/v1/settings/default-group"),
        ("POST", "/api/v1/hosts/tb3/drain"),
        ("POST", "/api/v1/hosts/tb3/undrain"),
    ];
    let requests = forms
        .iter()
        .map(|path| ("POST", *path, "application/x-www-form-urlencoded", "csrf=x"))
        .chain(
            calls
                .iter()
                .map(|(method, path)| (*method, *path, "application/json", "{}")),
        );
    let mut wrong = Vec::new();
    let mut count = 0;
    for (method, path, content_type, body) in requests {
        // Another site, and a neighbour under the same domain (a workspace host): both are
        // what a browser says of a request it sends with the portal's cookie on its own.
        for (origin, fetch_site) in [
            ("https://evil.example", "cross-site"),
            ("https://alice.ws.docklet.test:8000", "same-site"),
        ] {
            count += 1;
            let r = http(
                method,
                path,
                Cred::Cookie(admin, Some(origin)),
                Some(body.as_bytes()),
                &[
                    ("Content-Type", content_type),
                    ("Sec-Fetch-Site", fetch_site),
                ],
            );
            let refused = r.status == 403
                && r.header("x-frame-options").as_deref() == Some("DENY")
                && r.json()["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("another site"));
            if !refused {
                wrong.push(format!("{method} {path} from {origin}: {r}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused as cross-site ({} of {count}):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Nothing happened: the session lives, its tokens are as they were.
    let after = api("GET", "/tokens", admin, None);
    assert_eq!(after.status, 200, "the session still works: {after}");
    assert_eq!(after.json(), before.json());
    // From the portal's own origin the same cookie works (so the refusal above was the rule).
    let r = http(
        "POST",
        "/api/v1/tokens",
        Cred::Cookie(admin, Some(PORTAL)),
        Some(br#"{"name":"same-origin-check"}"#),
        &[
            ("Content-Type", "application/json"),
            ("Sec-Fetch-Site", "same-origin"),
        ],
    );
    assert_eq!(r.status, 201, "{r}");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        api("DELETE", &format!("/tokens/{id}"), admin, None).status,
        204
    );
}
