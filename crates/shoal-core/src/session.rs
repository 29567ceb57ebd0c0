//! The session record (`session.json`) that the driver keeps current, and how the CLI finds
//! sessions: every session is a directory under one base dir (`$SHOAL_HOME/sessions`).

use crate::error::{CoreError, Result};
use crate::fsutil::{hostname, local_time, now_secs, pid_alive, read_json, write_json};
use crate::layout::SessionDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Running,
    Finished,
    Failed,
    Cancelled,
    /// Ended early by the user (Ctrl-C, an exception in the driver, work abandoned) with no
    /// task failed.
    Interrupted,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Running => "running",
            SessionState::Finished => "finished",
            SessionState::Failed => "failed",
            SessionState::Cancelled => "cancelled",
            SessionState::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionMeta {
    pub id: String,
    pub backend: String,
    pub host: String,
    pub pid: u32,
    pub created: f64,
    pub updated: f64,
    pub state: SessionState,
    pub tasks_total: u64,
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub workers_running: u64,
    pub workers_started: u64,
    pub workers_lost: u64,
    /// Scheduler job ids of the session's workers, so `shoal cancel` can reach them even
    /// when the driver is gone.
    #[serde(default)]
    pub jobs: Vec<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// Free-form user metadata (joblib's `export_metadata`, a run name).
    #[serde(default)]
    pub metadata: serde_json::Value,
}

impl SessionMeta {
    pub fn new(id: String, backend: &str) -> Self {
        let now = now_secs();
        SessionMeta {
            id,
            backend: backend.to_string(),
            host: hostname(),
            pid: std::process::id(),
            created: now,
            updated: now,
            state: SessionState::Running,
            tasks_total: 0,
            tasks_done: 0,
            tasks_failed: 0,
            workers_running: 0,
            workers_started: 0,
            workers_lost: 0,
            jobs: Vec::new(),
            message: None,
            metadata: serde_json::Value::Null,
        }
    }

    /// A running session whose driver process is gone is reported as such, not as running.
    pub fn driver_alive(&self) -> bool {
        self.host != hostname() || pid_alive(self.pid)
    }

    pub fn display_state(&self) -> &'static str {
        match self.state {
            SessionState::Running if !self.driver_alive() => "orphaned",
            s => s.as_str(),
        }
    }
}

impl SessionDir {
    pub fn write_meta(&self, meta: &SessionMeta) -> Result<()> {
        write_json(&self.session_file(), meta)
    }

    pub fn read_meta(&self) -> Result<SessionMeta> {
        read_json(&self.session_file())
    }
}

/// `$SHOAL_HOME/sessions`, default `~/.shoal/sessions`.
pub fn default_base() -> PathBuf {
    shoal_home().join("sessions")
}

pub fn shoal_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SHOAL_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".shoal")
}

/// A new, sortable, collision-resistant session id such as `20261126-052301-4f2a`.
pub fn new_session_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, se) = local_time(now.as_secs() as i64);
    let salt = (now.subsec_nanos() ^ (std::process::id() << 16)) & 0xffff;
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{se:02}-{salt:04x}")
}

/// Every session under `base` with a readable record, oldest first.
pub fn list_sessions(base: &Path) -> Result<Vec<(SessionDir, SessionMeta)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(CoreError::io(base, e)),
    };
    for entry in entries.flatten() {
        let dir = SessionDir::open(entry.path());
        if let Ok(meta) = dir.read_meta() {
            out.push((dir, meta));
        }
    }
    out.sort_by(|a, b| a.1.created.total_cmp(&b.1.created));
    Ok(out)
}

/// Find a session by id, unique id prefix, or path.
pub fn find_session(base: &Path, key: &str) -> Result<SessionDir> {
    let as_path = Path::new(key);
    if as_path.join("session.json").exists() {
        return Ok(SessionDir::open(as_path));
    }
    let all = list_sessions(base)?;
    if let Some((d, _)) = all.iter().find(|(_, m)| m.id == key) {
        return Ok(d.clone());
    }
    let matches: Vec<_> = all.iter().filter(|(_, m)| m.id.starts_with(key)).collect();
    match matches.as_slice() {
        [(d, _)] => Ok(d.clone()),
        _ => Err(CoreError::NoSuchSession(key.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_roundtrip_and_lookup() {
        let t = tempfile::tempdir().unwrap();
        let id = new_session_id();
        let d = SessionDir::create(t.path().join(&id)).unwrap();
        let mut m = SessionMeta::new(id.clone(), "local");
        m.tasks_total = 5;
        d.write_meta(&m).unwrap();
        assert_eq!(d.read_meta().unwrap().tasks_total, 5);
        assert_eq!(find_session(t.path(), &id).unwrap().id(), id);
        assert_eq!(find_session(t.path(), &id[..10]).unwrap().id(), id);
        assert!(find_session(t.path(), "nope").is_err());
        assert_eq!(m.display_state(), "running");
    }

    #[test]
    fn dead_driver_shows_orphaned() {
        let mut m = SessionMeta::new("x".into(), "local");
        m.pid = u32::MAX / 2;
        assert_eq!(m.display_state(), "orphaned");
    }
}
