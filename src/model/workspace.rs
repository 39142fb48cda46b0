//! Where workspaces are served: every user's workspaces on a host name of their own under the
//! site's `workspace_domain` (`<label>.<domain>`), never on the portal's, so that nothing a
//! node serves runs as the portal or as another user's workspace. The label is the user name
//! when that is a plain DNS label, and otherwise an encoding of it that no plain name can
//! take. Also the one-time grants that carry a portal login over to a workspace host.

use serde::{Deserialize, Serialize};

/// The path under which a workspace host serves a node's Jupyter (its base URL), the same on
/// every host name: `/go/<user>/<cluster>/<index>/`.
pub fn base_path(user: &str, cluster: &str, index: u32) -> String {
    format!("/go/{user}/{cluster}/{index}/")
}

/// `<user>`, `<cluster>`, `<index>` of a `/go/...` path.
pub fn path_parts(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.strip_prefix("/go/")?.splitn(4, '/');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// The DNS label of a user's workspace host. User names may hold `_` and end in `-`, which
/// a host name may not; those become `x--` and the name in base32 (lower case), which is
/// never a plain name since plain names have no `--`.
pub fn host_label(user: &str) -> String {
    let plain = !user.is_empty()
        && user.len() <= 63
        && user.starts_with(|c: char| c.is_ascii_lowercase())
        && !user.ends_with('-')
        && !user.contains("--")
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain {
        user.to_owned()
    } else {
        format!(
            "x--{}",
            data_encoding::BASE32_DNSSEC.encode(user.as_bytes())
        )
    }
}

/// The host name of `user`'s workspaces under `domain`.
pub fn host_name(user: &str, domain: &str) -> String {
    format!("{}.{domain}", host_label(user))
}

/// What a request's `Host` (with or without a port) names under `domain`.
#[derive(Debug, PartialEq, Eq)]
pub enum HostKind<'a> {
    /// Not a name under the workspace domain: the portal's.
    Portal,
    /// One user's workspace host: its label.
    Workspace(&'a str),
    /// The domain itself or a name deeper below it: no workspace is served there.
    Nobody,
}

pub fn host_kind<'a>(host_header: &'a str, domain: &str) -> HostKind<'a> {
    let host = host_header
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host_header, |(host, _)| host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case(domain) {
        return HostKind::Nobody;
    }
    let Some(label) = host
        .len()
        .checked_sub(domain.len() + 1)
        .filter(|&at| {
            host.is_char_boundary(at)
                && host[at..].starts_with('.')
                && host[at + 1..].eq_ignore_ascii_case(domain)
        })
        .map(|at| &host[..at])
    else {
        return HostKind::Portal;
    };
    if label.is_empty() || label.contains('.') {
        HostKind::Nobody
    } else {
        HostKind::Workspace(label)
    }
}

/// Where a workspace host sends the browser after it let it in: the path it was asked for
/// when that is one of the user's workspaces, else the user's portal (never another host:
/// no open redirect).
pub fn landing_path<'a>(next: Option<&'a str>, user: &str) -> Option<&'a str> {
    next.filter(|next| {
        next.starts_with('/')
            && !next.starts_with("//")
            && !next.contains('\\')
            && path_parts(next).is_some_and(|(owner, _, _)| owner == user)
    })
}

/// How long a grant may wait for its exchange.
pub const GRANT_SECS: u64 = 60;

/// A one-time grant, stored at `workspace_grants/<digest of its secret>` for [`GRANT_SECS`]:
/// the portal issues it to the signed-in owner, and the owner's workspace host exchanges it
/// (once) for a workspace cookie that lives no longer than the login it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceGrant {
    pub user: String,
    /// The etcd key (the digest) of the login or API token it came from: the workspace
    /// cookie is made only while that still exists, and ends with it.
    pub parent_digest: String,
    pub expires_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_their_own_label_and_others_cannot_take_them() {
        assert_eq!(host_label("alice"), "alice");
        assert_eq!(host_label("a1-b2"), "a1-b2");
        for odd in ["_svc", "a_b", "trail-", "a--b", "1abc"] {
            let label = host_label(odd);
            assert!(label.starts_with("x--"), "{odd}: {label}");
            assert!(crate::config::dns_name_ok(&label), "{odd}: {label}");
            assert!(label.len() <= 63, "{label}");
        }
        // The longest user name still fits a DNS label.
        let long = format!("_{}", "z".repeat(31));
        assert!(host_label(&long).len() <= 63);
        assert_ne!(host_label("a_b"), host_label("a-b"));
        assert_eq!(host_name("alice", "ws.example"), "alice.ws.example");
    }

    #[test]
    fn hosts_are_told_apart_by_their_name_under_the_domain() {
        let d = "ws.example";
        assert_eq!(
            host_kind("alice.ws.example:8000", d),
            HostKind::Workspace("alice")
        );
        assert_eq!(
            host_kind("Alice.WS.example", d),
            HostKind::Workspace("Alice")
        );
        assert_eq!(
            host_kind("alice.ws.example.", d),
            HostKind::Workspace("alice")
        );
        assert_eq!(host_kind("portal.example:8000", d), HostKind::Portal);
        assert_eq!(host_kind("10.0.0.1:8000", d), HostKind::Portal);
        assert_eq!(host_kind("evilws.example", d), HostKind::Portal);
        assert_eq!(host_kind("ws.example:8000", d), HostKind::Nobody);
        assert_eq!(host_kind("a.b.ws.example", d), HostKind::Nobody);
        assert_eq!(host_kind(".ws.example", d), HostKind::Nobody);
        assert_eq!(host_kind("[::1]:8000", d), HostKind::Portal);
    }

    #[test]
    fn landing_paths_stay_in_the_users_workspaces() {
        assert_eq!(
            landing_path(Some("/go/alice/c1/0/tree?x=1"), "alice"),
            Some("/go/alice/c1/0/tree?x=1")
        );
        for bad in [
            "/go/bob/c1/0/",
            "//evil.example/go/alice/c1/0/",
            "https://evil.example/",
            "/go/alice",
            "/\\evil.example/go/alice/c/0/",
            "/api/v1/me",
        ] {
            assert_eq!(landing_path(Some(bad), "alice"), None, "{bad}");
        }
        assert_eq!(landing_path(None, "alice"), None);
        assert_eq!(
            path_parts("/go/alice/c1/0/tree"),
            Some(("alice", "c1", "0"))
        );
        assert_eq!(path_parts("/go/alice/c1"), None);
        assert_eq!(base_path("a", "c", 2), "/go/a/c/2/");
    }
}
