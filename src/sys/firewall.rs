//! Docklet's nftables tables. The whole ruleset is replaced in one `nft -f` transaction, so
//! the kernel never runs half of it; only tables named `docklet` are ever created or deleted.

use std::io::{self, Write};
use std::process::{Command, Stdio};

use crate::model::network::TABLE;

pub trait Firewall: Send + Sync {
    /// Replaces Docklet's tables with `ruleset` atomically.
    fn apply(&self, ruleset: &str) -> io::Result<()>;
    /// Removes Docklet's tables (and nothing else).
    fn remove(&self) -> io::Result<()>;
}

/// The real one: `nft -f -`.
pub struct Nft;

fn nft(input: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running nft (package nftables): {e}")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft refused Docklet's ruleset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

impl Firewall for Nft {
    fn apply(&self, ruleset: &str) -> io::Result<()> {
        nft(ruleset)
    }

    fn remove(&self) -> io::Result<()> {
        // `table X` first makes the delete succeed whether or not the table exists.
        nft(&["bridge", "inet", "ip"]
            .iter()
            .map(|family| format!("table {family} {TABLE}\ndelete table {family} {TABLE}\n"))
            .collect::<String>())
    }
}

/// A firewall for tests: every ruleset applied, in order, and how often the tables were
/// removed.
#[derive(Default)]
pub struct RecordingFirewall {
    pub applied: std::sync::Mutex<Vec<String>>,
    pub removed: std::sync::atomic::AtomicU32,
}

impl Firewall for RecordingFirewall {
    fn apply(&self, ruleset: &str) -> io::Result<()> {
        self.applied.lock().unwrap().push(ruleset.to_owned());
        Ok(())
    }

    fn remove(&self) -> io::Result<()> {
        self.removed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}
