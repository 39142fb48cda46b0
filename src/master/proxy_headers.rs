//! What crosses the workspace proxy besides the body: the request headers a node receives
//! (Docklet's credentials out, the node's Jupyter token and this hop's `X-Forwarded-*` in) and
//! the response headers a browser receives (nothing that would let a node's page act beyond its
//! workspace).

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use super::session::{CSRF_HEADER, is_docklet_cookie};

pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Headers that concern one hop only (RFC 9110 7.6.1), plus those the `Connection` header
/// names.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        if !(keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE)) {
            headers.remove(name);
        }
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// What the vnode receives: the request's headers without any Docklet credential (the
/// `Authorization` header, the session cookie, the CSRF token) and with the node's Jupyter
/// token and the `X-Forwarded-*` headers of this hop.
pub fn forwarded_request_headers(
    headers: &mut HeaderMap,
    jupyter_token: &str,
    peer: Option<&str>,
    proto: &str,
    upgrade: bool,
) {
    remove_hop_by_hop(headers, upgrade);
    headers.remove(header::AUTHORIZATION);
    headers.remove(CSRF_HEADER);
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !is_docklet_cookie(pair.split('=').next().unwrap_or("")))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(value) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("token {jupyter_token}")) {
        headers.insert(header::AUTHORIZATION, value);
    }
    // This master is the edge: what a client claims about earlier hops is not passed on.
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "forwarded",
    ] {
        headers.remove(name);
    }
    if let Some(peer) = peer.and_then(|p| HeaderValue::from_str(p).ok()) {
        headers.insert("x-forwarded-for", peer.clone());
        headers.insert("x-real-ip", peer);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
    );
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
}

/// What the browser receives from the vnode: no hop-by-hop headers, and no cookie the
/// vnode would set in Docklet's name.
pub fn filter_response_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers, false);
    // A node's script may not register a service worker beyond its workspace's path, and
    // its pages may be framed by nothing but their own origin (a policy of the node's own,
    // if any, is enforced as well).
    headers.remove("service-worker-allowed");
    // Nothing but the workspace's own pages reads its answers with the owner's cookie.
    headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    headers.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("frame-ancestors 'self'"),
    );
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| {
            v.to_str().map_or(true, |v| {
                !is_docklet_cookie(v.split('=').next().unwrap_or(""))
            })
        })
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in kept {
        headers.append(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::session::tests::headers;

    #[test]
    fn the_vnode_never_sees_docklet_credentials() {
        let mut h = headers(&[
            ("authorization", "Bearer dkt_secret"),
            (
                "cookie",
                "a=1; __Host-docklet_session=dkt_session ; _xsrf=x",
            ),
            ("cookie", "docklet_session=dkt_other"),
            ("x-csrf-token", "0123"),
            ("x-forwarded-for", "6.6.6.6"),
            ("host", "portal:8000"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "hop"),
            ("accept", "text/html"),
        ]);
        forwarded_request_headers(&mut h, "jt", Some("10.0.0.9"), "http", false);
        let all = format!("{h:?}");
        assert!(!all.contains("dkt_"), "{all}");
        assert_eq!(h[header::AUTHORIZATION], "token jt");
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; _xsrf=x");
        assert!(h.get(CSRF_HEADER).is_none());
        assert!(h.get("x-private").is_none() && h.get(header::CONNECTION).is_none());
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "portal:8000");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h[header::ACCEPT], "text/html");

        let mut only_session = headers(&[("cookie", "__Host-docklet_session=dkt_x")]);
        forwarded_request_headers(&mut only_session, "jt", None, "https", false);
        assert!(only_session.get(header::COOKIE).is_none());
        assert_eq!(only_session["x-forwarded-proto"], "https");
    }

    #[test]
    fn upgrades_keep_their_handshake_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("authorization", "Bearer dkt_x"),
        ]);
        assert!(is_upgrade(&h));
        forwarded_request_headers(&mut h, "jt", None, "http", true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        assert_eq!(h[header::AUTHORIZATION], "token jt");
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn responses_cannot_set_docklets_cookie() {
        let mut h = headers(&[
            ("set-cookie", "docklet_session=evil; Path=/"),
            ("set-cookie", "__Host-docklet_session=evil; Path=/; Secure"),
            ("set-cookie", "__HOST-Docklet_session=evil; Path=/; Secure"),
            ("set-cookie", "_xsrf=abc; Path=/go/a/c/0/"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/html"),
        ]);
        h.insert("service-worker-allowed", HeaderValue::from_static("/"));
        filter_response_headers(&mut h);
        assert!(h.get("service-worker-allowed").is_none());
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "frame-ancestors 'self'");
        let cookies: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["_xsrf=abc; Path=/go/a/c/0/"]);
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h[header::CONTENT_TYPE], "text/html");
    }
}
