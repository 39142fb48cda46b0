//! The Prometheus text exposition format (version 0.0.4) of workers' samplings: what both
//! daemons serve on `/metrics`.

use std::fmt::Write;

use super::{HostSample, NodeSample, WorkerSamples};

/// Workers' samplings in the Prometheus text format: each family once, every host's and
/// vnode's sample under it, labelled with host, user, cluster, node and vnode.
pub fn exposition(workers: &[WorkerSamples]) -> String {
    let mut out = Exposition::default();
    for worker in workers {
        let host = worker.host.as_str();
        if let Some(h) = &worker.host_sample {
            host_metrics(&mut out, host, h);
        }
        for node in &worker.vnodes {
            vnode_metrics(&mut out, host, node);
        }
    }
    out.finish()
}

/// A host's gauges.
fn host_metrics(out: &mut Exposition, host: &str, h: &HostSample) {
    let labels = [("host", host)];
    let gauges: [(&str, &str, Option<f64>); 8] = [
        (
            "docklet_host_cpu_percent",
            "CPU use over the last interval, 100 per busy core.",
            h.cpu_percent,
        ),
        ("docklet_host_cpus", "CPUs.", Some(h.cpus as f64)),
        (
            "docklet_host_memory_total_bytes",
            "Memory.",
            Some(h.memory_total_bytes as f64),
        ),
        (
            "docklet_host_memory_available_bytes",
            "Memory available (MemAvailable).",
            Some(h.memory_available_bytes as f64),
        ),
        (
            "docklet_host_disk_total_bytes",
            "Size of the filesystem under fs_prefix.",
            Some(h.disk_total_bytes as f64),
        ),
        (
            "docklet_host_disk_used_bytes",
            "Bytes used on the filesystem under fs_prefix.",
            Some(h.disk_used_bytes as f64),
        ),
        (
            "docklet_host_load1",
            "Load average over one minute.",
            Some(h.load[0]),
        ),
        (
            "docklet_host_vnodes",
            "Vnodes running on the host.",
            Some(h.vnodes as f64),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            out.family(name, Kind::Gauge, help)
                .sample(name, &labels, value);
        }
    }
}

/// A vnode's gauges and counters, labelled with who it belongs to.
fn vnode_metrics(out: &mut Exposition, host: &str, node: &NodeSample) {
    let s = &node.sample;
    let index = node.index.to_string();
    let labels = [
        ("user", node.user.as_str()),
        ("cluster", node.cluster.as_str()),
        ("node", index.as_str()),
        ("vnode", node.id.as_str()),
        ("host", host),
    ];
    let mut metric = |name: &str, kind: Kind, help: &str, value: f64| {
        out.family(name, kind, help).sample(name, &labels, value);
    };
    if let Some(percent) = s.cpu_percent {
        metric(
            "docklet_vnode_cpu_percent",
            Kind::Gauge,
            "CPU use over the last interval, 100 per busy core.",
            percent,
        );
    }
    let gauges = [
        (
            "docklet_vnode_memory_bytes",
            "Memory in use.",
            s.memory_bytes,
        ),
        (
            "docklet_vnode_disk_bytes",
            "Bytes its own layer takes.",
            s.disk_bytes,
        ),
        ("docklet_vnode_processes", "Tasks.", u64::from(s.processes)),
        (
            "docklet_vnode_uptime_seconds",
            "Since it booted.",
            s.uptime_secs,
        ),
    ];
    for (name, help, value) in gauges {
        metric(name, Kind::Gauge, help, value as f64);
    }
    metric(
        "docklet_vnode_cpu_seconds_total",
        Kind::Counter,
        "CPU time used since it booted.",
        s.cpu_seconds,
    );
    let n = &s.net;
    let counters = [
        ("docklet_vnode_network_receive_bytes_total", n.rx_bytes),
        ("docklet_vnode_network_transmit_bytes_total", n.tx_bytes),
        ("docklet_vnode_network_receive_packets_total", n.rx_packets),
        ("docklet_vnode_network_transmit_packets_total", n.tx_packets),
        ("docklet_vnode_network_receive_errors_total", n.rx_errors),
        ("docklet_vnode_network_transmit_errors_total", n.tx_errors),
        ("docklet_vnode_network_receive_drops_total", n.rx_dropped),
        ("docklet_vnode_network_transmit_drops_total", n.tx_dropped),
    ];
    for (name, value) in counters {
        metric(
            name,
            Kind::Counter,
            "On its eth0, since its network was made.",
            value as f64,
        );
    }
}

/// What a Prometheus metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// Builds the Prometheus text exposition format (version 0.0.4): each family's `# HELP` and
/// `# TYPE` once, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    families: Vec<String>,
}

impl Exposition {
    /// Starts family `name` (names are the code's own, never users' strings).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        if !self.families.iter().any(|f| f == name) {
            let kind = match kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            };
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            self.families.push(name.to_owned());
        }
        self
    }

    /// One sample of family `name`; label values may be anything (users' and clusters'
    /// names) and are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{label}=\"{escaped}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_declares_each_family_once_and_escapes_label_values() {
        let mut out = Exposition::default();
        out.family("docklet_vnode_memory_bytes", Kind::Gauge, "Memory in use.")
            .sample(
                "docklet_vnode_memory_bytes",
                &[("user", "alice"), ("cluster", "a\"b\\c\nd")],
                1048576.0,
            )
            .family("docklet_vnode_memory_bytes", Kind::Gauge, "Memory in use.")
            .sample("docklet_vnode_memory_bytes", &[("user", "bob")], 0.5)
            .family("docklet_up", Kind::Counter, "Line one\nline two.")
            .sample("docklet_up", &[], f64::NAN);
        assert_eq!(
            out.finish(),
            "# HELP docklet_vnode_memory_bytes Memory in use.\n\
             # TYPE docklet_vnode_memory_bytes gauge\n\
             docklet_vnode_memory_bytes{user=\"alice\",cluster=\"a\\\"b\\\\c\\nd\"} 1048576\n\
             docklet_vnode_memory_bytes{user=\"bob\"} 0.5\n\
             # HELP docklet_up Line one\\nline two.\n\
             # TYPE docklet_up counter\n\
             docklet_up NaN\n"
        );
    }
}
