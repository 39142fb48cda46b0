//! The workspace inside a vnode: its token (random per node, kept on the host) and Jupyter's
//! configuration, readable by Jupyter's user alone.

use std::path::PathBuf;

use super::{Runtime, VNodeError, io_err, write_file};
use crate::config::Config;
use crate::model::vnode::{self, VNodeSpec};
use crate::worker::paths::{VNodePaths, replace_file_owned};

/// Where a node's workspace token is kept on its host: in its directory, root's alone.
fn workspace_token_file(paths: &VNodePaths) -> PathBuf {
    paths.dir.join("workspace-token")
}

/// The node's workspace token, made at its first start on this host: random (independent of
/// every other node's and of any site secret), kept so that Jupyter, which reads it from its
/// configuration, and the masters' workspace proxy, which asks the agent, agree across
/// restarts. A node moved to another host gets a new one there.
pub(super) fn ensure_workspace_token(paths: &VNodePaths) -> Result<String, VNodeError> {
    let path = workspace_token_file(paths);
    match std::fs::read_to_string(&path) {
        Ok(token) if vnode::is_workspace_token(&token) => Ok(token),
        Ok(_) | Err(_) => {
            let token = vnode::new_workspace_token();
            write_file(&path, token.as_bytes(), 0o600)?;
            Ok(token)
        }
    }
}

impl Runtime {
    /// A running (or once started) node's workspace token, for the agent.
    pub fn workspace_token(&self, id: &str) -> Result<String, VNodeError> {
        let path = workspace_token_file(&self.paths(id));
        match std::fs::read_to_string(&path) {
            Ok(token) if vnode::is_workspace_token(&token) => Ok(token),
            _ => Err(VNodeError::NotRunning {
                id: id.to_owned(),
                detail: " (it has no workspace token yet)".into(),
            }),
        }
    }
}

/// The workspace URL prefix of a vnode, as the workspace proxy forwards it.
pub fn workspace_base_url(spec: &VNodeSpec) -> String {
    crate::model::workspace::base_path(&spec.user, &spec.cluster, spec.index)
}

/// Jupyter's configuration inside the vnode (`/etc/docklet/jupyter_notebook_config.json`): it
/// listens on loopback behind the socket-activated proxy, under the workspace URL, and only
/// with the vnode's workspace token ([`vnode::workspace_token`]: the master's proxy derives
/// the same and adds it; people never see it).
pub(super) fn write_jupyter_config(
    spec: &VNodeSpec,
    paths: &VNodePaths,
    jupyter_uid: u32,
    origin: &str,
    token: &str,
) -> Result<(), VNodeError> {
    let file = paths.etc.join("jupyter_notebook_config.json");
    let config = serde_json::json!({
        "NotebookApp": {
            "ip": "127.0.0.1",
            "port": 8889,
            // Never drift to another port: the socket proxy only knows 8889.
            "port_retries": 0,
            "allow_origin": origin,
            "quit_button": false,
            "base_url": workspace_base_url(spec),
            "token": token,
            "password": "",
            "allow_root": true,
            "open_browser": false,
            "notebook_dir": "/root",
            "allow_remote_access": true,
            "trust_xheaders": true,
        }
    });
    // It holds the token that opens the workspace: readable by Jupyter's user (root inside,
    // `jupyter_uid` here) alone, never by another account of the vnode, from its first byte.
    replace_file_owned(
        &file,
        serde_json::to_string_pretty(&config).unwrap().as_bytes(),
        0o600,
        Some(jupyter_uid),
    )
    .map_err(io_err(format!("writing {}", file.display())))
}

/// The origin Jupyter names in its CORS answers: the user's workspace host (or, on a site
/// without `workspace_domain`, where workspaces are refused, the portal's).
pub(super) fn jupyter_origin(config: &Config, host: &str, user: &str) -> String {
    config
        .workspace_origin(user, host)
        .unwrap_or_else(|| portal_origin(config, host))
}

/// `scheme://host:port` of the portal.
fn portal_origin(config: &Config, host: &str) -> String {
    let url = config.portal_url_or(host);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url;
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_portal_origin_drops_the_path() {
        let config = Config {
            portal_url: Some("https://portal.docklet.test:8000/".into()),
            ..Config::default()
        };
        assert_eq!(
            portal_origin(&config, "tb1"),
            "https://portal.docklet.test:8000"
        );
        assert_eq!(portal_origin(&Config::default(), "tb2"), "https://tb2:8000");
        let with_workspaces = Config {
            workspace_domain: Some("ws.docklet.test".into()),
            ..config
        };
        assert_eq!(
            jupyter_origin(&with_workspaces, "tb1", "alice"),
            "https://alice.ws.docklet.test:8000"
        );
    }
}
