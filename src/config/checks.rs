//! The checks `Config::load` runs on a configuration: each returns the first setting that
//! cannot work, with its key and why, and `validate` says which file it came from.

use std::fmt;
use std::net::IpAddr;

use super::{Config, dns_name_ok, url_host};

/// A setting that cannot work: its key, its value as written, and why.
pub(super) struct Bad {
    pub(super) key: &'static str,
    pub(super) value: String,
    pub(super) reason: String,
}

fn bad(key: &'static str, value: &dyn fmt::Display, reason: &str) -> Result<(), Bad> {
    Err(Bad {
        key,
        value: value.to_string(),
        reason: reason.to_owned(),
    })
}

impl Config {
    /// What the installation and this host are called and where they keep things.
    pub(super) fn check_identity(&self) -> Result<(), Bad> {
        let name_ok = !self.cluster_name.is_empty()
            && self.cluster_name.len() <= 63
            && self
                .cluster_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !name_ok {
            return bad(
                "cluster_name",
                &self.cluster_name,
                "use 1 to 63 characters of a-z, 0-9 and '-'",
            );
        }
        if !self.fs_prefix.is_absolute() {
            return bad(
                "fs_prefix",
                &self.fs_prefix.display(),
                "must be an absolute path",
            );
        }
        if self.network_device.is_empty()
            || self.network_device.len() > 15
            || self
                .network_device
                .contains(|c: char| c == '/' || c.is_whitespace())
        {
            return bad(
                "network_device",
                &self.network_device,
                "must be an interface name (at most 15 characters, no '/' or spaces) or \"auto\"",
            );
        }
        if self.cluster_net.prefix_len() > 24 {
            return bad(
                "cluster_net",
                &self.cluster_net,
                "must be at least a /24 so that users can get address blocks",
            );
        }
        if self.cluster_net.network() != self.cluster_net.addr() {
            return bad(
                "cluster_net",
                &self.cluster_net,
                &format!(
                    "has host bits set; did you mean {}?",
                    self.cluster_net.trunc()
                ),
            );
        }
        Ok(())
    }

    /// The daemons' ports and the range of mapped ports.
    pub(super) fn check_ports(&self) -> Result<(), Bad> {
        if self.proxy_port == 0 {
            return bad("proxy_port", &self.proxy_port, "must be 1 to 65535");
        }
        if self.agent_port == 0 || self.agent_port == self.proxy_port {
            return bad(
                "agent_port",
                &self.agent_port,
                "must be 1 to 65535 and differ from proxy_port",
            );
        }
        let range = self.port_range;
        if range.first < 1024 {
            return bad(
                "port_range",
                &range,
                "must start at 1024 or above: lower ports are the system's (and need privileges)",
            );
        }
        for (key, port) in [
            ("proxy_port", self.proxy_port),
            ("agent_port", self.agent_port),
        ] {
            if range.contains(port) {
                return bad(
                    "port_range",
                    &range,
                    &format!("must not contain {key} ({port})"),
                );
            }
        }
        Ok(())
    }

    /// Sessions and sampling.
    pub(super) fn check_times(&self) -> Result<(), Bad> {
        if !(300..=366 * 24 * 3600).contains(&self.session_lifetime) {
            return bad(
                "session_lifetime",
                &self.session_lifetime,
                "must be 300 to 31622400 seconds (5 minutes to a year)",
            );
        }
        if !(60..=self.session_lifetime).contains(&self.session_idle) {
            return bad(
                "session_idle",
                &self.session_idle,
                "must be at least 60 seconds and at most session_lifetime",
            );
        }
        if !(1..=3600).contains(&self.metrics_interval) {
            return bad(
                "metrics_interval",
                &self.metrics_interval,
                "must be 1 to 3600 seconds",
            );
        }
        Ok(())
    }

    /// Networks' VNIs, the default image and overcommit.
    pub(super) fn check_placement(&self) -> Result<(), Bad> {
        let max_vni_base = crate::model::network::MAX_VNI - crate::model::vnode::UID_SLOTS;
        if self.vni_base == 0 || self.vni_base > max_vni_base {
            return bad(
                "vni_base",
                &self.vni_base,
                &format!("must be 1 to {max_vni_base}, so that every user's VNI fits in 24 bits"),
            );
        }
        if crate::model::vnode::validate_image_name(&self.default_image).is_err() {
            return bad(
                "default_image",
                &self.default_image,
                "must be an image name: a-z, 0-9 and inner '-'",
            );
        }
        for (key, ratio) in [
            ("overcommit.cpu", self.overcommit.cpu),
            ("overcommit.memory", self.overcommit.memory),
            ("overcommit.disk", self.overcommit.disk),
        ] {
            if !(0.1..=100.0).contains(&ratio) {
                return bad(
                    key,
                    &ratio,
                    "must be between 0.1 and 100 (1 = capacity exactly)",
                );
            }
        }
        Ok(())
    }

    /// The portal's, the ports' and the workspaces' names, and the certificate.
    pub(super) fn check_web_names(&self) -> Result<(), Bad> {
        if let Some(url) = &self.portal_url {
            let Some(host) = url.strip_prefix("https://").and_then(url_host) else {
                return bad(
                    "portal_url",
                    url,
                    "must be https://NAME[:PORT]/ (the master serves only HTTPS)",
                );
            };
            if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
                return bad(
                    "portal_url",
                    url,
                    "must name the portal by a DNS name, not an IP address (browsers apply HSTS only to names)",
                );
            }
        }
        for name in &self.tls_names {
            if !dns_name_ok(name.strip_prefix("*.").unwrap_or(name)) {
                return bad(
                    "tls_names",
                    name,
                    "each must be a DNS name (a-z, 0-9, '-' and '.'), optionally starting with *.",
                );
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad(
                "tls_cert",
                &format!("{:?}", self.tls_cert),
                "tls_cert and tls_key go together",
            );
        }
        if let Some(ports) = &self.ports_host {
            let plain = ports.parse::<IpAddr>().is_ok() || dns_name_ok(ports);
            if !plain {
                return bad("ports_host", ports, "must be a DNS name or an IP address");
            }
            if self
                .portal_url
                .as_deref()
                .and_then(|u| u.strip_prefix("https://"))
                .and_then(url_host)
                .is_some_and(|portal| portal.eq_ignore_ascii_case(ports))
            {
                return bad(
                    "ports_host",
                    ports,
                    "must differ from the portal's host name: browsers send the portal's cookies to every port of its name",
                );
            }
        }
        Ok(())
    }

    /// Workspaces' names, which must hold none of the portal's.
    pub(super) fn check_workspace_domain(&self) -> Result<(), Bad> {
        if let Some(domain) = &self.workspace_domain {
            if !dns_name_ok(domain) || domain.bytes().any(|b| b.is_ascii_uppercase()) {
                return bad(
                    "workspace_domain",
                    domain,
                    "must be a DNS name in lower case (a-z, 0-9, '-' and '.'), e.g. ws.example.org",
                );
            }
            let portal = self
                .portal_url
                .as_deref()
                .and_then(|u| u.strip_prefix("https://"))
                .and_then(url_host);
            for (key, name) in [
                ("portal_url", portal),
                ("ports_host", self.ports_host.as_deref()),
            ] {
                if let Some(name) = name
                    && (name.eq_ignore_ascii_case(domain)
                        || name.to_ascii_lowercase().ends_with(&format!(".{domain}")))
                {
                    return bad(
                        "workspace_domain",
                        domain,
                        &format!(
                            "must not contain {key}'s host {name}: names under it belong to users' workspaces"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// How to reach etcd.
    pub(super) fn check_etcd(&self) -> Result<(), Bad> {
        if self.etcd.endpoints.is_empty() {
            return bad("etcd.endpoints", &"[]", "list at least one etcd client URL");
        }
        for endpoint in &self.etcd.endpoints {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            match rest {
                Some(hostport)
                    if hostport.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.trim_end_matches('/').parse::<u16>().is_ok()
                    }) => {}
                _ => {
                    return bad(
                        "etcd.endpoints",
                        endpoint,
                        "each endpoint must look like http://HOST:PORT or https://HOST:PORT",
                    );
                }
            }
        }
        if self.etcd.cert_file.is_some() != self.etcd.key_file.is_some() {
            return bad(
                "etcd.cert_file",
                &format!("{:?}", self.etcd.cert_file),
                "cert_file and key_file go together",
            );
        }
        Ok(())
    }
}
