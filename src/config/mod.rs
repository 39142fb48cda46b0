//! `/etc/docklet/docklet.toml`: the one configuration file of master and worker.
//!
//! Every key has a default that works on a single host, so an empty file is a valid
//! configuration. Unknown keys and invalid values are refused with the key, the value and
//! the reason; daemons refuse to start on such a file and `--check-config` reports it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

mod checks;
mod keys;

pub use keys::keys;

/// Where the packaged daemons read their configuration.
pub const DEFAULT_PATH: &str = "/etc/docklet/docklet.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}` = {value}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// How vnodes keep their persistent layer on a worker (the seed's STORAGE key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Directories on the filesystem under `fs_prefix/local`.
    File,
    /// A block device or volume group given to Docklet.
    Disk,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the etcd cluster, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// Passwords of sites whose etcd has no TLS (written by `docklet-admin init` then; default
    /// `fs_prefix/global/secrets/etcd.toml`). With TLS, daemons log in with their certificate
    /// and the master deletes this file.
    pub credentials_file: Option<PathBuf>,
    /// CA bundle that signed the etcd server certificates; default the site CA.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key; default the daemon's own identity in /etc/docklet/pki.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            credentials_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name of this Docklet installation; all its etcd keys live under `/<cluster_name>/`.
    pub cluster_name: String,
    /// Working directory: `global/` is the shared filesystem, `local/` is this host's own.
    pub fs_prefix: PathBuf,
    /// Network device that carries traffic between hosts; `auto` = the default-route device.
    pub network_device: String,
    /// Address range handed out to vclusters; all of it belongs to Docklet.
    pub cluster_net: Ipv4Net,
    /// Destinations of the site every vnode may reach although the egress policy keeps
    /// vnodes off the site's ranges (see [`crate::model::egress`]), and destinations none
    /// may reach although they are on the internet.
    pub egress_allow: Vec<crate::model::egress::EgressRule>,
    pub egress_deny: Vec<crate::model::egress::EgressRule>,
    /// Public port of the portal, the API and the workspace proxy.
    pub proxy_port: u16,
    /// Port of each worker's agent endpoint (exec, terminals, workspaces), which only
    /// masters use, with the cluster's agent token.
    pub agent_port: u16,
    /// Public ports that port mappings may use on every master's address.
    pub port_range: crate::model::ports::PortRange,
    /// First VXLAN network identifier: user `n` (by uid range) gets `vni_base + n`. Change it
    /// when another VXLAN on the hosts uses the same identifiers.
    pub vni_base: u32,
    /// Address users type in the browser: always `https://` and a DNS name (HSTS, which
    /// keeps browsers off mapped ports under the portal's name, does not apply to IP
    /// addresses); default `https://<this host>:<proxy_port>/`.
    pub portal_url: Option<String>,
    /// The portal's certificate chain and key (PEM); default the site certificate that
    /// `docklet-admin init` makes in `/etc/docklet/tls/` when neither is set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// More DNS names for the site certificate `init` makes, besides `portal_url`'s host
    /// (another name of the portal, the names of further masters).
    pub tls_names: Vec<String>,
    /// The host name (or address) port mappings are announced under: never the portal's
    /// name, since browsers send the portal's cookies to every port of its host. Default:
    /// the address the request reached the master at.
    pub ports_host: Option<String>,
    /// The DNS domain under which every user's workspaces get a host name of their own
    /// (`<user>.<workspace_domain>`, all resolving to the masters): workspaces are never
    /// served from the portal's name. Without it, workspaces are refused.
    pub workspace_domain: Option<String>,
    /// Where a site has a second address: mapped ports listen only there (default: every
    /// address of the master).
    pub ports_address: Option<IpAddr>,
    /// The image of a new cluster whose request names none.
    pub default_image: String,
    /// Seconds between two samples of every vnode's and host's use (CPU, memory, disk,
    /// network), on each worker.
    pub metrics_interval: u64,
    /// Reverse proxies in front of the portal whose `X-Forwarded-For` names the client (for
    /// the login throttle); nobody else's header is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a portal login lasts at most, and how long it lasts unused.
    pub session_lifetime: u64,
    pub session_idle: u64,
    /// How far the scheduler may allocate a host beyond its capacity, per resource.
    pub overcommit: crate::model::placement::Overcommit,
    pub storage: Storage,
    pub etcd: EtcdConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_name: "docklet".into(),
            fs_prefix: PathBuf::from("/var/lib/docklet"),
            network_device: "auto".into(),
            cluster_net: Ipv4Net::new(Ipv4Addr::new(172, 16, 0, 0), 16).expect("valid prefix"),
            proxy_port: 8000,
            agent_port: 8001,
            port_range: crate::model::ports::PortRange::default(),
            vni_base: 1_000_000,
            egress_allow: Vec::new(),
            egress_deny: Vec::new(),
            portal_url: None,
            tls_cert: None,
            tls_key: None,
            tls_names: Vec::new(),
            ports_host: None,
            workspace_domain: None,
            ports_address: None,
            default_image: "base".into(),
            metrics_interval: 10,
            trusted_proxies: Vec::new(),
            session_lifetime: 7 * 24 * 3600,
            session_idle: 12 * 3600,
            overcommit: crate::model::placement::Overcommit::default(),
            storage: Storage::File,
            etcd: EtcdConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let checks = [
            Self::check_identity,
            Self::check_ports,
            Self::check_times,
            Self::check_placement,
            Self::check_web_names,
            Self::check_workspace_domain,
            Self::check_etcd,
        ];
        checks
            .iter()
            .try_for_each(|check| check(self))
            .map_err(|bad| ConfigError::Invalid {
                path: path.to_owned(),
                key: bad.key,
                value: quote_unless_number(&bad.value),
                reason: bad.reason,
            })
    }

    /// The etcd key prefix of this installation, with a trailing slash.
    pub fn etcd_prefix(&self) -> String {
        format!("/{}/", self.cluster_name)
    }

    /// Shared filesystem, mounted on every host.
    pub fn global_dir(&self) -> PathBuf {
        self.fs_prefix.join("global")
    }

    /// A user's persistent data on the shared filesystem: `/root/nfs` in all their vnodes.
    pub fn user_data_dir(&self, user: &str) -> PathBuf {
        self.global_dir().join("users").join(user).join("data")
    }

    /// This host's own state.
    pub fn local_dir(&self) -> PathBuf {
        self.fs_prefix.join("local")
    }

    /// Does this site reach etcd over TLS (an `https://` endpoint or TLS files given)? Then
    /// daemons log in with their identity's certificate (issue 17), and the CA defaults to
    /// the site CA.
    pub fn etcd_uses_tls(&self) -> bool {
        self.etcd
            .endpoints
            .iter()
            .any(|e| e.starts_with("https://"))
            || self.etcd.ca_file.is_some()
            || self.etcd.cert_file.is_some()
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.etcd
            .credentials_file
            .clone()
            .unwrap_or_else(|| self.global_dir().join("secrets/etcd.toml"))
    }

    /// File holding the portal administrator's first password, readable by root only. In the
    /// master's own state directory: `local/` is root's, and nothing the master writes may
    /// steer the root worker that reads it.
    pub fn generated_password_file(&self) -> PathBuf {
        master_state_dir().join("generated_password.txt")
    }

    /// The portal URL users are given, filling in this host's name when not configured.
    pub fn portal_url_or(&self, host: &str) -> String {
        match &self.portal_url {
            Some(url) => url.clone(),
            None => format!("https://{host}:{}/", self.proxy_port),
        }
    }

    /// The portal's host name (of `portal_url`, or this host's).
    pub fn portal_host_or(&self, host: &str) -> String {
        let url = self.portal_url_or(host);
        url.strip_prefix("https://")
            .and_then(url_host)
            .unwrap_or(host)
            .to_ascii_lowercase()
    }

    /// `https://<user's host>[:port]`: the origin of `user`'s workspaces, on the portal's
    /// port; `None` without a `workspace_domain`.
    pub fn workspace_origin(&self, user: &str, host: &str) -> Option<String> {
        let domain = self.workspace_domain.as_deref()?;
        let url = self.portal_url_or(host);
        let authority = url
            .strip_prefix("https://")
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .unwrap_or_default();
        // portal_url names a DNS name (validated), so a ':' is the port's.
        let port = authority
            .rsplit_once(':')
            .map(|(_, port)| format!(":{port}"))
            .unwrap_or_default();
        Some(format!(
            "https://{}{port}",
            crate::model::workspace::host_name(user, domain)
        ))
    }

    /// The portal's certificate chain: `tls_cert`, else the site certificate of `init`.
    pub fn tls_cert_file(&self) -> PathBuf {
        self.tls_cert
            .clone()
            .unwrap_or_else(|| PathBuf::from(TLS_DIR).join("portal.pem"))
    }

    pub fn tls_key_file(&self) -> PathBuf {
        self.tls_key
            .clone()
            .unwrap_or_else(|| PathBuf::from(TLS_DIR).join("portal.key"))
    }

    /// Whether the site certificate is `init`'s own (no `tls_cert` configured).
    pub fn generated_certificate(&self) -> bool {
        self.tls_cert.is_none()
    }
}

/// Where `docklet-admin init` keeps the site CA and the portal's certificate it makes.
pub const TLS_DIR: &str = "/etc/docklet/tls";

/// The host of `host[:port][/path]`, `None` when it is empty.
pub(crate) fn url_host(rest: &str) -> Option<&str> {
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// A DNS name: labels of a-z, 0-9 and '-', joined by dots.
pub fn dns_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Shows a value as it would appear in the file: numbers bare, everything else quoted.
fn quote_unless_number(value: &str) -> String {
    if value.parse::<f64>().is_ok() || value.starts_with('[') {
        value.to_owned()
    } else {
        format!("{value:?}")
    }
}

/// The master's own state: its unit's `StateDirectory=` (given in `STATE_DIRECTORY`), else
/// `/var/lib/docklet-master`.
pub fn master_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/docklet-master"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/docklet/docklet.toml"), text)
    }

    #[test]
    fn empty_file_gives_single_host_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.etcd_prefix(), "/docklet/");
        assert_eq!(config.proxy_port, 8000);
        assert_eq!(
            config.credentials_file(),
            PathBuf::from("/var/lib/docklet/global/secrets/etcd.toml")
        );
        assert_eq!(config.portal_url_or("tb1"), "https://tb1:8000/");
        assert_eq!(config.portal_host_or("tb1"), "tb1");
        assert_eq!(
            config.tls_cert_file(),
            PathBuf::from("/etc/docklet/tls/portal.pem")
        );
        assert_eq!(config.port_range.to_string(), "30000-30999");
    }

    #[test]
    fn workspaces_get_names_of_their_own_on_the_portals_port() {
        let config = parse(
            "portal_url = \"https://portal.example:8443/\"\nworkspace_domain = \"ws.example\"",
        )
        .unwrap();
        assert_eq!(
            config.workspace_origin("alice", "tb1").as_deref(),
            Some("https://alice.ws.example:8443")
        );
        let config =
            parse("portal_url = \"https://portal.example/\"\nworkspace_domain = \"ws.example\"")
                .unwrap();
        assert_eq!(
            config.workspace_origin("a_b", "tb1").as_deref(),
            Some(
                format!(
                    "https://{}.ws.example",
                    crate::model::workspace::host_label("a_b")
                )
                .as_str()
            )
        );
        assert_eq!(Config::default().workspace_origin("alice", "tb1"), None);
        for (text, why) in [
            ("workspace_domain = \"WS.example\"", "lower case"),
            ("workspace_domain = \"ws..example\"", "DNS name"),
            (
                "portal_url = \"https://portal.ws.example/\"\nworkspace_domain = \"ws.example\"",
                "portal_url's host",
            ),
            (
                "portal_url = \"https://ws.example/\"\nworkspace_domain = \"ws.example\"",
                "portal_url's host",
            ),
            (
                "ports_host = \"p.ws.example\"\nworkspace_domain = \"ws.example\"",
                "ports_host's host",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains("workspace_domain") && err.contains(why),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn packaged_config_files_parse() {
        for file in ["conf/docklet.toml", "conf/docklet.toml.template"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            Config::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }

    #[test]
    fn all_seed_keys_are_settable() {
        let config = parse(
            r#"
            cluster_name = "lab"
            fs_prefix = "/srv/docklet"
            network_device = "eth1"
            cluster_net = "10.10.0.0/16"
            proxy_port = 8080
            portal_url = "https://docklet.example"
            tls_cert = "/etc/ssl/docklet.pem"
            tls_key = "/etc/ssl/private/docklet.key"
            tls_names = ["*.docklet.example", "portal2.example"]
            ports_host = "ports.docklet.example"
            ports_address = "192.0.2.7"
            trusted_proxies = ["192.0.2.0/28", "2001:db8::1/128"]
            storage = "disk"
            port_range = "40000-40099"
            [etcd]
            endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
            ca_file = "/etc/docklet/etcd-ca.pem"
            cert_file = "/etc/docklet/etcd.pem"
            key_file = "/etc/docklet/etcd-key.pem"
            "#,
        )
        .unwrap();
        assert_eq!(config.storage, Storage::Disk);
        assert_eq!(config.global_dir(), PathBuf::from("/srv/docklet/global"));
        assert_eq!(config.etcd.endpoints.len(), 2);
        assert_eq!(config.portal_url_or("x"), "https://docklet.example");
        assert_eq!(config.portal_host_or("x"), "docklet.example");
        assert_eq!(
            config.tls_key_file(),
            PathBuf::from("/etc/ssl/private/docklet.key")
        );
        assert!(!config.generated_certificate());
        assert_eq!(config.port_range.len(), 100);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("proxy_prot = 80\n").unwrap_err().to_string();
        assert!(err.contains("proxy_prot"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_value() {
        let err = parse("proxy_port = \"eighty\"\n").unwrap_err().to_string();
        assert!(
            err.contains("proxy_port") && err.contains("eighty"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_key_value_and_reason() {
        let cases = [
            ("proxy_port = 0", "proxy_port", "1 to 65535"),
            ("fs_prefix = \"relative/dir\"", "fs_prefix", "absolute"),
            (
                "cluster_net = \"172.16.0.1/16\"",
                "cluster_net",
                "172.16.0.0/16",
            ),
            ("cluster_net = \"10.0.0.0/28\"", "cluster_net", "/24"),
            ("cluster_name = \"Bad Name\"", "cluster_name", "a-z"),
            ("portal_url = \"ftp://x\"", "portal_url", "https://"),
            (
                "portal_url = \"http://x.example/\"",
                "portal_url",
                "https://",
            ),
            (
                "portal_url = \"https://10.0.0.1:8000/\"",
                "portal_url",
                "DNS name",
            ),
            ("tls_names = [\"a b\"]", "tls_names", "DNS name"),
            ("tls_cert = \"/x.pem\"", "tls_cert", "go together"),
            (
                "portal_url = \"https://Docklet.example/\"\nports_host = \"docklet.example\"",
                "ports_host",
                "differ from the portal",
            ),
            (
                "network_device = \"a/b\"",
                "network_device",
                "interface name",
            ),
            ("[etcd]\nendpoints = []", "etcd.endpoints", "at least one"),
            (
                "[etcd]\nendpoints = [\"localhost\"]",
                "etcd.endpoints",
                "HOST:PORT",
            ),
            ("storage = \"tape\"", "storage", "tape"),
            ("port_range = \"100-2000\"", "port_range", "1024"),
            ("metrics_interval = 0", "metrics_interval", "1 to 3600"),
            ("session_lifetime = 10", "session_lifetime", "5 minutes"),
            (
                "session_lifetime = 3600\nsession_idle = 7200",
                "session_idle",
                "at most session_lifetime",
            ),
            (
                "port_range = \"7000-9000\"",
                "port_range",
                "proxy_port (8000)",
            ),
            (
                "agent_port = 30001\nport_range = \"30000-30010\"",
                "port_range",
                "agent_port (30001)",
            ),
            ("port_range = \"30999-30000\"", "port_range", "empty"),
            ("port_range = \"30000\"", "port_range", "FIRST-LAST"),
        ];
        for (text, key, reason) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
