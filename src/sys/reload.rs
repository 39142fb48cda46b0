//! A value built from files and built again when they change (checked at most once a
//! second): certificates and keys that an administrator or a re-key replaces while a daemon
//! runs, taken without a restart. A broken replacement keeps the last good value in service.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Build<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

pub struct Reloading<T> {
    what: String,
    files: Vec<PathBuf>,
    /// Why there is nothing while a file is missing.
    missing: String,
    build: Build<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    checked: Option<Instant>,
    /// (mtime, inode) of every file when they were read.
    stamp: Option<Vec<(i64, u64)>>,
    value: Option<Arc<T>>,
    problem: String,
}

impl<T> Reloading<T> {
    /// `what` names the value in the log; `missing` says why there is none while a file is
    /// missing.
    pub fn new(
        what: impl Into<String>,
        files: Vec<PathBuf>,
        missing: impl Into<String>,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Reloading<T> {
        Reloading {
            what: what.into(),
            files,
            missing: missing.into(),
            build: Box::new(build),
            state: Mutex::new(State {
                checked: None,
                stamp: None,
                value: None,
                problem: String::new(),
            }),
        }
    }

    fn stamp(&self) -> Option<Vec<(i64, u64)>> {
        self.files
            .iter()
            .map(|p| std::fs::metadata(p).ok().map(|m| (m.mtime(), m.ino())))
            .collect()
    }

    /// The value to use now, or why there is none.
    pub fn current(&self) -> Result<Arc<T>, String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .checked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            state.checked = Some(Instant::now());
            let stamp = self.stamp();
            if stamp.is_none() {
                state.problem = self.missing.clone();
            } else if stamp != state.stamp {
                state.stamp = stamp;
                match (self.build)() {
                    Ok(value) => {
                        tracing::info!("using {}", self.what);
                        state.value = Some(Arc::new(value));
                        state.problem.clear();
                    }
                    Err(e) => {
                        tracing::warn!("cannot use {}: {e}", self.what);
                        state.problem = e;
                    }
                }
            }
        }
        match &state.value {
            Some(value) => Ok(value.clone()),
            None => Err(state.problem.clone()),
        }
    }

    /// Looks at the files at the next call, however recently they were checked.
    #[cfg(test)]
    pub fn recheck(&self) {
        self.state.lock().unwrap().checked = None;
    }

    /// What went wrong at the last look, even while an older value serves.
    #[cfg(test)]
    pub fn last_problem(&self) -> Option<String> {
        let state = self.state.lock().unwrap();
        (!state.problem.is_empty()).then(|| state.problem.clone())
    }
}
