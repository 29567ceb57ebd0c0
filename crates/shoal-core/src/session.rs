//! The session record (`session.json`) that the driver keeps current, and how the CLI finds
//! sessions: every session is a directory under one base dir (`$SHOAL_HOME/sessions`).

use crate::error::{CoreError, Result};
use crate::fsutil::{
    create_dir_exclusive, create_private_dir, hostname, local_time, now_secs, pid_alive,
    random_hex, read_json, write_json,
};
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
    /// How driver and workers exchange chunks: "fs" (this work dir) or "tcp".
    #[serde(default = "default_transport")]
    pub transport: String,
    /// The kind of filesystem the work dir is on (e.g. "ext4", "glusterfs", "nfs").
    #[serde(default)]
    pub filesystem: String,
    /// Workers the engine gave up on (no heartbeat, unknown, superseded) and told to exit.
    #[serde(default)]
    pub workers_fenced: u64,
}

fn default_transport() -> String {
    "fs".into()
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
            transport: default_transport(),
            filesystem: String::new(),
            workers_fenced: 0,
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

/// Where the local backend keeps session work dirs when neither `work_dir` nor `SHOAL_HOME`
/// says otherwise: node-local storage (`$XDG_RUNTIME_DIR`, `$TMPDIR`, `/dev/shm`: the first
/// that is a local filesystem and where a private dir of ours can be made), not `~/.shoal`,
/// which is NFS or another network filesystem on most clusters. Local workers never need to
/// see it from another node. `None`: none is usable (the caller keeps the default base).
pub fn node_local_base() -> Option<PathBuf> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let candidates = [
        // per user already (0700, owned by us): no name of ours needed
        env("XDG_RUNTIME_DIR").map(|d| d.join("shoal")),
        env("TMPDIR").map(|d| d.join(format!("shoal-{uid}"))),
        Some(PathBuf::from(format!("/dev/shm/shoal-{uid}"))),
    ];
    candidates.into_iter().flatten().find_map(|dir| {
        let parent = dir.parent()?;
        if !parent.is_dir() || crate::fskind::detect(parent).is_network() {
            return None;
        }
        private_dir_of(&dir, uid).then(|| dir.join("sessions"))
    })
}

/// The local backend's default base for new session dirs: node-local storage, unless
/// `SHOAL_HOME` names where shoal's state goes (then its `sessions`, as for every backend).
pub fn local_backend_base() -> Option<PathBuf> {
    let home_set = std::env::var_os("SHOAL_HOME").is_some_and(|h| !h.is_empty());
    if home_set {
        None
    } else {
        node_local_base()
    }
}

/// Make `dir` (mode 0700) if missing and check that it is ours alone: in a world-writable
/// parent (`/dev/shm`, a shared `$TMPDIR`) another user could have made it first, or made it
/// a symlink.
fn private_dir_of(dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    if create_private_dir(dir).is_err() {
        return false;
    }
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
}

/// Create a session dir under the node-local `local_base` and record it in `base` (where
/// `shoal sessions` looks) as a symlink of the same name, so that the CLI finds it like any
/// other. Returns the session dir (its real, node-local path) and the link.
pub fn create_node_local(local_base: &Path, base: &Path) -> Result<(SessionDir, PathBuf)> {
    let dir = SessionDir::create_new(local_base)?;
    let link = base.join(dir.id());
    let linked = create_private_dir(base).and_then(|()| {
        std::os::unix::fs::symlink(dir.root(), &link).map_err(|e| CoreError::io(&link, e))
    });
    if let Err(e) = linked {
        let _ = std::fs::remove_dir_all(dir.root());
        return Err(e);
    }
    Ok((dir, link))
}

/// A new, sortable session id such as `20261201-090501-4f2a9c0e1b3d5a77`: local time to the
/// second, then 64 random bits, so drivers starting in the same second never share one.
pub fn new_session_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (y, mo, d, h, mi, se) = local_time(now.as_secs() as i64);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{se:02}-{}", random_hex(8))
}

impl SessionDir {
    /// Create a new session dir under `base` with a fresh id. The leaf is created exclusively
    /// (mkdir, not mkdir -p): on the astronomically unlikely collision another id is drawn,
    /// so two drivers never share a session dir.
    pub fn create_new(base: &Path) -> Result<SessionDir> {
        create_private_dir(base)?;
        for _ in 0..16 {
            let root = base.join(new_session_id());
            if create_dir_exclusive(&root)? {
                let dir = SessionDir::open(root);
                dir.create_subdirs()?;
                return Ok(dir);
            }
        }
        Err(CoreError::io(
            base,
            std::io::Error::other("could not create a session dir with a fresh id"),
        ))
    }
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

/// What names the newest session (`shoal show last`), where an id is expected.
pub const LAST: &str = "last";

/// Find a session by id, unique id prefix, path, or [`LAST`] (the newest).
pub fn find_session(base: &Path, key: &str) -> Result<SessionDir> {
    let as_path = Path::new(key);
    if as_path.join("session.json").exists() {
        return Ok(SessionDir::open(as_path));
    }
    let all = list_sessions(base)?;
    if key == LAST {
        return all
            .last()
            .map(|(d, _)| d.clone())
            .ok_or_else(|| CoreError::NoSuchSession(key.to_string()));
    }
    if let Some((d, _)) = all.iter().find(|(_, m)| m.id == key) {
        return Ok(d.clone());
    }
    let matches: Vec<_> = all.iter().filter(|(_, m)| m.id.starts_with(key)).collect();
    match matches.as_slice() {
        [(d, _)] => Ok(d.clone()),
        [] => Err(CoreError::NoSuchSession(key.to_string())),
        many => Err(CoreError::AmbiguousSession {
            prefix: key.to_string(),
            candidates: many.iter().map(|(_, m)| m.id.clone()).collect(),
        }),
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
    fn new_dirs_are_exclusive_and_ids_random() {
        let t = tempfile::tempdir().unwrap();
        let dirs: Vec<SessionDir> = (0..200)
            .map(|_| SessionDir::create_new(t.path()).unwrap())
            .collect();
        let ids: std::collections::HashSet<String> = dirs.iter().map(|d| d.id()).collect();
        assert_eq!(ids.len(), 200, "same-second ids never collide");
        let random = dirs[0].id().rsplit_once('-').unwrap().1.to_string();
        assert_eq!(random.len(), 16);
        assert!(dirs[0].sub("inbox").is_dir());
    }

    #[test]
    fn ambiguous_prefix_names_the_candidates() {
        let t = tempfile::tempdir().unwrap();
        for id in ["20261201-000000-aa", "20261201-000000-ab"] {
            let d = SessionDir::create(t.path().join(id)).unwrap();
            d.write_meta(&SessionMeta::new(id.into(), "local")).unwrap();
        }
        let e = find_session(t.path(), "20261201-000000-a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("-aa") && e.contains("-ab"), "{e}");
        assert_eq!(
            find_session(t.path(), "20261201-000000-ab").unwrap().id(),
            "20261201-000000-ab"
        );
    }

    #[test]
    fn node_local_sessions_are_listed_through_their_link() {
        let (local, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let base = home.path().join("sessions");
        let (dir, link) = create_node_local(local.path(), &base).unwrap();
        assert!(dir.root().starts_with(local.path()));
        assert_eq!(link, base.join(dir.id()));
        dir.write_meta(&SessionMeta::new(dir.id(), "local"))
            .unwrap();
        let listed = list_sessions(&base).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1.id, dir.id());
        assert_eq!(find_session(&base, &dir.id()).unwrap().id(), dir.id());
        // once the work dir is gone (session ended, node rebooted) the link lists nothing
        std::fs::remove_dir_all(dir.root()).unwrap();
        assert!(list_sessions(&base).unwrap().is_empty());
    }

    #[test]
    fn a_node_local_dir_must_be_ours_alone() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        assert!(private_dir_of(&t.path().join("fresh"), uid));
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!private_dir_of(&open, uid), "readable by others");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path().join("fresh"), &link).unwrap();
        assert!(
            !private_dir_of(&link, uid),
            "a symlink someone else may have planted"
        );
        assert!(
            !private_dir_of(&t.path().join("fresh"), uid + 1),
            "someone else's"
        );
    }

    #[test]
    fn dead_driver_shows_orphaned() {
        let mut m = SessionMeta::new("x".into(), "local");
        m.pid = u32::MAX / 2;
        assert_eq!(m.display_state(), "orphaned");
    }
}
