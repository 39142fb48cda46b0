//! Browser sessions: the session cookie a portal login sets, the CSRF token derived from it,
//! and the same-origin rule for requests that a browser sends on its own. A cookie is sent
//! with any request to this host, so a cookie-authenticated request that changes something
//! (or opens a WebSocket) must prove it comes from the portal's own pages: its `Origin` is
//! this host, or it carries the CSRF token that only the portal's pages know.

use axum::http::{HeaderMap, Method, header};
use sha2::{Digest, Sha256};

/// The cookie holding the session token: `__Host-`, so browsers take it only over HTTPS,
/// only from this host and never with a `Domain` (a cookie tossed onto a parent domain by a
/// neighbouring host cannot pose as it), `Secure`, `HttpOnly` and `SameSite=Strict`.
pub const SESSION_COOKIE: &str = "__Host-docklet_session";
/// The cookie a workspace host sets from a one-time grant: `__Host-` too, so it stays on
/// that user's workspace host, and `SameSite=Lax`, so it survives the redirect from the
/// portal when the workspace domain is another site. It is never taken as a login.
pub const WORKSPACE_COOKIE: &str = "__Host-docklet_workspace";
/// Whether a cookie of this name is (or could pose as) one of Docklet's own: nothing a node
/// serves may set one, and none is passed on to a node.
pub fn is_docklet_cookie(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    name.starts_with("__host-docklet")
        || name.starts_with("__secure-docklet")
        || name.starts_with("docklet")
}

/// The header scripts send the CSRF token in; forms send it as the field `csrf`.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of a session: unguessable without the session token, which scripts on
/// other sites cannot read (HttpOnly), and the same for the whole session.
pub fn csrf_token(session_token: &str) -> String {
    let digest = Sha256::digest(format!("docklet-csrf\0{session_token}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The session token in the request's cookies, if any.
pub fn session_from_cookies(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// The value of the cookie `name` (exactly: a cookie without the `__Host-` prefix may have
/// come from a neighbouring host through a parent domain), if any.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for a workspace host's cookie (`max_age` seconds).
pub fn workspace_cookie(token: &str, max_age: u64) -> String {
    format!("{WORKSPACE_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// `Set-Cookie` for a new session (`max_age` seconds), or to end one (`None`).
pub fn session_cookie(token: Option<&str>, max_age: u64) -> String {
    let (value, max_age) = match token {
        Some(token) => (token, max_age),
        None => ("", 0),
    };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    )
}

/// Whether the request's `Origin` is this host itself (as the browser addressed it).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin.split_once("://").is_some_and(|(scheme, authority)| {
        matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host)
    })
}

/// Whether a browser could have sent this request without a page of ours asking for it:
/// anything but a plain read, and every WebSocket handshake.
pub fn needs_proof(method: &Method, headers: &HeaderMap) -> bool {
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    websocket || !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the browser says the request comes from another site or another origin of this
/// site: `Sec-Fetch-Site` (`cross-site`, `same-site`: a workspace or another host under the
/// same domain), or an `Origin` that is not this host.
pub fn from_elsewhere(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if matches!(fetch_site, "cross-site" | "same-site") {
        return true;
    }
    headers.contains_key(header::ORIGIN) && !same_origin(headers)
}

/// Whether a request carrying one of our cookies must be refused because another origin's
/// page made it: anything but a plain read, every WebSocket, and every read that is not the
/// browser navigating to a page (a script's fetch, an image, a frame's subresource), so a
/// page elsewhere (a workspace under the same domain included) can neither change nor
/// probe anything with the cookie. Navigations pass: links into the portal keep working.
pub fn refused_from_elsewhere(method: &Method, headers: &HeaderMap) -> bool {
    if !from_elsewhere(headers) {
        return false;
    }
    let navigation = headers
        .get("sec-fetch-mode")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|mode| mode == "navigate");
    needs_proof(method, headers) || !navigation
}

/// Refuses, for every route of the portal port, a request carrying the session cookie that
/// [`refused_from_elsewhere`]: one rule in front of every form and JSON call, so no handler
/// can forget it. Requests with a bearer token carry no ambient credential and pass; the
/// handlers still check the CSRF token of cookie requests that name no origin.
pub async fn refuse_cross_site(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let headers = request.headers();
    if !headers.contains_key(header::AUTHORIZATION)
        && session_from_cookies(headers).is_some()
        && refused_from_elsewhere(request.method(), headers)
    {
        return crate::master::actions::ApiError::Forbidden(
            "a browser request from another site: send it from the portal's own pages".into(),
        )
        .into_response();
    }
    next.run(request).await
}

/// The same-origin rule for a cookie-authenticated request: reads pass; changes and
/// WebSockets need this host's `Origin` or the session's CSRF token in [`CSRF_HEADER`].
pub fn browser_request_allowed(method: &Method, headers: &HeaderMap, session: &str) -> bool {
    if !needs_proof(method, headers) {
        return true;
    }
    let token_ok = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| crate::model::account::same_secret(v, &csrf_token(session)));
    token_ok || same_origin(headers)
}

/// The client's address: the connection's peer, unless that peer is one of the
/// `trusted_proxies`; then the rightmost `X-Forwarded-For` entry that is not a trusted proxy
/// (entries to its left were written by the client and prove nothing).
pub fn client_address(
    peer: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> String {
    let Some(peer) = peer.map(|p| p.to_canonical()) else {
        return String::new();
    };
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer.to_string();
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client.to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// Request headers from name-value pairs, for tests.
    pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; __Host-docklet_session=dkt_x ; b=2")]);
        assert_eq!(session_from_cookies(&h).as_deref(), Some("dkt_x"));
        let h = headers(&[
            ("cookie", "a=1"),
            ("cookie", "__Host-docklet_session=dkt_y"),
        ]);
        assert_eq!(session_from_cookies(&h).as_deref(), Some("dkt_y"));
        assert_eq!(
            session_from_cookies(&headers(&[("cookie", "__Host-docklet_session=")])),
            None
        );
        // Only the __Host- cookie counts: one without the prefix may have come from a
        // neighbouring host through a parent domain.
        let h = headers(&[("cookie", "docklet_session=dkt_z")]);
        assert_eq!(session_from_cookies(&h), None);
        assert_eq!(session_from_cookies(&HeaderMap::new()), None);
    }

    #[test]
    fn cookies_are_host_only_secure_http_only_and_strict() {
        let c = session_cookie(Some("dkt_x"), 60);
        assert!(
            c.starts_with("__Host-docklet_session=dkt_x; Path=/;"),
            "{c}"
        );
        for attribute in [
            "; Secure",
            "; HttpOnly",
            "; SameSite=Strict",
            "; Max-Age=60",
        ] {
            assert!(c.contains(attribute), "{c}");
        }
        assert!(!c.contains("Domain"), "{c}");
        assert!(session_cookie(None, 60).contains("Max-Age=0"));
    }

    #[test]
    fn changes_need_this_origin_or_the_csrf_token() {
        let session = "dkt_session";
        let post = Method::POST;
        let same = headers(&[
            ("host", "10.0.0.1:8000"),
            ("origin", "http://10.0.0.1:8000"),
        ]);
        assert!(browser_request_allowed(&post, &same, session));
        let other = headers(&[("host", "10.0.0.1:8000"), ("origin", "http://evil.example")]);
        assert!(!browser_request_allowed(&post, &other, session));
        let none = headers(&[("host", "10.0.0.1:8000")]);
        assert!(!browser_request_allowed(&post, &none, session));
        assert!(browser_request_allowed(&Method::GET, &other, session));
        let mut with_token = other.clone();
        with_token.insert(CSRF_HEADER, csrf_token(session).parse().unwrap());
        assert!(browser_request_allowed(&post, &with_token, session));
        with_token.insert(CSRF_HEADER, csrf_token("dkt_other").parse().unwrap());
        assert!(!browser_request_allowed(&post, &with_token, session));
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let peer = |ip: &str| Some(ip.parse().unwrap());
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.3")]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(peer("198.51.100.1"), &xff, &trusted),
            "198.51.100.1"
        );
        // Behind trusted proxies: the rightmost hop that is not one of them.
        assert_eq!(
            client_address(peer("10.0.0.2"), &xff, &trusted),
            "203.0.113.9"
        );
        assert_eq!(
            client_address(peer("::ffff:10.0.0.2"), &xff, &trusted),
            "203.0.113.9"
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(
            client_address(peer("10.0.0.2"), &HeaderMap::new(), &trusted),
            "10.0.0.2"
        );
        let junk = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(
            client_address(peer("10.0.0.2"), &junk, &trusted),
            "10.0.0.2"
        );
        // Nothing trusted: the header never counts.
        assert_eq!(client_address(peer("10.0.0.2"), &xff, &[]), "10.0.0.2");
        assert_eq!(client_address(None, &xff, &trusted), "");
    }

    #[test]
    fn requests_from_elsewhere_are_told_apart() {
        let host = ("host", "portal.example:8000");
        assert!(!from_elsewhere(&headers(&[
            host,
            ("origin", "https://portal.example:8000")
        ])));
        assert!(!from_elsewhere(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!from_elsewhere(&headers(&[
            host,
            ("sec-fetch-site", "none")
        ])));
        assert!(!from_elsewhere(&headers(&[host])), "curl names no origin");
        assert!(from_elsewhere(&headers(&[
            host,
            ("origin", "https://evil.example")
        ])));
        assert!(from_elsewhere(&headers(&[host, ("origin", "null")])));
        // A workspace under the same domain is same-site, and still elsewhere.
        assert!(from_elsewhere(&headers(&[
            host,
            ("origin", "https://portal.example:8000"),
            ("sec-fetch-site", "same-site")
        ])));
        assert!(from_elsewhere(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn pages_elsewhere_may_link_here_but_not_fetch_with_the_cookie() {
        let host = ("host", "portal.example:8000");
        let get = Method::GET;
        let navigate = headers(&[
            host,
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "navigate"),
        ]);
        assert!(!refused_from_elsewhere(&get, &navigate));
        assert!(refused_from_elsewhere(&Method::POST, &navigate));
        let fetch = headers(&[
            host,
            ("sec-fetch-site", "same-site"),
            ("sec-fetch-mode", "cors"),
        ]);
        assert!(refused_from_elsewhere(&get, &fetch));
        let no_cors = headers(&[
            host,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "no-cors"),
        ]);
        assert!(refused_from_elsewhere(&get, &no_cors));
        let own = headers(&[
            host,
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
        ]);
        assert!(!refused_from_elsewhere(&get, &own));
        assert!(!refused_from_elsewhere(&Method::POST, &headers(&[host])));
        let c = workspace_cookie("dkt_w", 60);
        assert!(
            c.starts_with("__Host-docklet_workspace=dkt_w; Path=/; Secure; HttpOnly; SameSite=Lax"),
            "{c}"
        );
        assert!(!c.contains("Domain"));
        let h = headers(&[(
            "cookie",
            "docklet_workspace=x; __Host-docklet_workspace=dkt_w",
        )]);
        assert_eq!(cookie(&h, WORKSPACE_COOKIE).as_deref(), Some("dkt_w"));
        assert_eq!(session_from_cookies(&h), None);
    }

    #[test]
    fn websocket_handshakes_need_this_origin() {
        let mut h = headers(&[("host", "h:8000"), ("origin", "http://evil.example")]);
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(!browser_request_allowed(&Method::GET, &h, "dkt_s"));
        h.insert("origin", HeaderValue::from_static("http://h:8000"));
        assert!(browser_request_allowed(&Method::GET, &h, "dkt_s"));
    }
}
