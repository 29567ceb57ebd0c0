//! How long a session that finished keeps what `shoal logs` needs, and what `shoal clean`
//! frees. A finished session's work dir is slimmed to its record, journal, log index and
//! worker logs; those go once older than the policy's age or beyond its total size.
//!
//! The policy comes from the environment: `SHOAL_KEEP_LOGS` (how long, default `7d`; `0`
//! keeps nothing, as before) and `SHOAL_KEEP_LOGS_SIZE` (the most that the logs of finished
//! sessions under one work dir may take together, default `1G`; the oldest go first).
//! Failed sessions keep their whole work dir until `shoal clean --all`.

use crate::error::{CoreError, Result};
use crate::session::{list_sessions, SessionMeta, SessionState};
use crate::units::{MemSize, TimeLimit};
use crate::SessionDir;
use std::path::Path;
use std::time::Duration;

/// What a slimmed session keeps: what `shoal logs`, `shoal sessions` and `shoal show` read.
pub const KEPT: [&str; 5] = ["session.json", "journal", "index", "calls", "logs"];
pub const AGE_VAR: &str = "SHOAL_KEEP_LOGS";
pub const SIZE_VAR: &str = "SHOAL_KEEP_LOGS_SIZE";
pub const DEFAULT_AGE: Duration = Duration::from_secs(7 * 86400);
pub const DEFAULT_SIZE: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_age: DEFAULT_AGE,
            max_bytes: DEFAULT_SIZE,
        }
    }
}

impl Policy {
    /// The policy the environment asks for; a bad value is an error that quotes it.
    pub fn from_env() -> Result<Policy> {
        Self::parse(
            std::env::var(AGE_VAR).ok().as_deref(),
            std::env::var(SIZE_VAR).ok().as_deref(),
        )
    }

    pub fn parse(age: Option<&str>, size: Option<&str>) -> Result<Policy> {
        let mut p = Policy::default();
        if let Some(a) = age.map(str::trim).filter(|s| !s.is_empty()) {
            p.max_age = match a {
                "0" => Duration::ZERO,
                _ => TimeLimit::parse(AGE_VAR, a)?.0,
            };
        }
        if let Some(s) = size.filter(|s| !s.trim().is_empty()) {
            let s = s.trim();
            // A bare number would mean megabytes (as for `memory`): ask for the unit.
            if s != "0" && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(CoreError::InvalidOption {
                    option: SIZE_VAR.into(),
                    value: s.into(),
                    reason: "give a unit (e.g. 500M, 2G)".into(),
                });
            }
            p.max_bytes = if s == "0" {
                0
            } else {
                MemSize::parse(SIZE_VAR, s)?.0
            };
        }
        Ok(p)
    }

    /// Whether finished sessions keep anything at all.
    pub fn keeps(&self) -> bool {
        !self.max_age.is_zero() && self.max_bytes > 0
    }
}

/// Remove everything of a finished session but [`KEPT`]. Best effort: what cannot be
/// removed stays and is freed with the rest later.
pub fn slim(dir: &SessionDir) {
    let Ok(entries) = std::fs::read_dir(dir.root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if KEPT.iter().any(|k| name == *k) {
            continue;
        }
        let path = entry.path();
        let _ = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Bytes under `path` (files only; what removing it frees, near enough).
pub fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|it| it.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// A kept session that the policy lets go, and why.
#[derive(Debug)]
pub struct Expired {
    pub dir: SessionDir,
    pub meta: SessionMeta,
    pub bytes: u64,
    pub reason: String,
}

/// The finished sessions (of `sessions`, oldest first as `list_sessions` gives them) that
/// `policy` no longer keeps at `now` (seconds since the epoch): older than its age, or
/// beyond its total size counting from the newest.
pub fn expired(
    sessions: Vec<(SessionDir, SessionMeta)>,
    policy: &Policy,
    now: f64,
) -> Vec<Expired> {
    let mut total = 0u64;
    let mut out = Vec::new();
    for (dir, meta) in sessions.into_iter().rev() {
        if meta.state != SessionState::Finished {
            continue;
        }
        let bytes = size_of(dir.root());
        total += bytes;
        let age = (now - meta.updated).max(0.0);
        let reason = if age > policy.max_age.as_secs_f64() {
            format!("older than {}", TimeLimit(policy.max_age).to_slurm())
        } else if total > policy.max_bytes {
            format!("beyond {} of kept logs", human_bytes(policy.max_bytes))
        } else {
            continue;
        };
        out.push(Expired {
            dir,
            meta,
            bytes,
            reason,
        });
    }
    out.reverse();
    out
}

/// Where expired sessions are moved (one rename, so that no half-removed session is ever
/// listed) before they are removed; what a process could not finish removing is removed by
/// the next enforcement.
const EXPIRED_DIR: &str = ".expired";

/// Remove the finished sessions under `base` that `policy` no longer keeps.
pub fn enforce(base: &Path, policy: &Policy) {
    let graveyard = base.join(EXPIRED_DIR);
    if let Ok(all) = list_sessions(base) {
        for e in expired(all, policy, crate::fsutil::now_secs()) {
            let _ = std::fs::create_dir_all(&graveyard);
            let to = graveyard.join(format!(
                "{}.{:016x}",
                e.meta.id,
                crate::fsutil::random_u64()
            ));
            // Another process may have taken it first: then there is nothing to do.
            if std::fs::rename(e.dir.root(), &to).is_err() {
                continue;
            }
        }
    }
    if let Ok(left) = std::fs::read_dir(&graveyard) {
        for entry in left.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// [`enforce`] on a thread of its own, so that ending a session never waits for a scan of
/// every kept session (one at a time per process; a process that exits first leaves the
/// rest to the next one).
pub fn enforce_in_background(base: &Path, policy: &Policy) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let (base, policy) = (base.to_path_buf(), *policy);
    let spawned = std::thread::Builder::new()
        .name("shoal-retention".into())
        .spawn(move || {
            enforce(&base, &policy);
            RUNNING.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        RUNNING.store(false, Ordering::Release);
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(base: &Path, id: &str, state: SessionState, updated: f64, bytes: usize) {
        let d = SessionDir::create(base.join(id)).unwrap();
        let mut m = SessionMeta::new(id.into(), "local");
        m.state = state;
        m.created = updated;
        m.updated = updated;
        d.write_meta(&m).unwrap();
        std::fs::write(d.root().join("logs/w1.out"), vec![b'x'; bytes]).unwrap();
    }

    #[test]
    fn policy_from_values() {
        assert_eq!(Policy::parse(None, None).unwrap(), Policy::default());
        let p = Policy::parse(Some("2h"), Some("10M")).unwrap();
        assert_eq!(p.max_age, Duration::from_secs(7200));
        assert_eq!(p.max_bytes, 10 << 20);
        assert!(!Policy::parse(Some("0"), None).unwrap().keeps());
        assert!(!Policy::parse(None, Some("0")).unwrap().keeps());
        let e = Policy::parse(None, Some("500")).unwrap_err().to_string();
        assert!(
            e.contains("SHOAL_KEEP_LOGS_SIZE") && e.contains("unit"),
            "{e}"
        );
        assert!(Policy::parse(Some("soon"), None).is_err());
    }

    #[test]
    fn slim_keeps_what_logs_need() {
        let t = tempfile::tempdir().unwrap();
        session(t.path(), "s1", SessionState::Finished, 0.0, 3);
        let d = SessionDir::open(t.path().join("s1"));
        std::fs::write(d.index_file(), "x").unwrap();
        std::fs::write(d.config_file(), "{}").unwrap();
        slim(&d);
        let mut left: Vec<_> = std::fs::read_dir(d.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["index", "logs", "session.json"]);
        assert!(d.root().join("logs/w1.out").exists());
    }

    #[test]
    fn expired_by_age_then_by_size_oldest_first() {
        let t = tempfile::tempdir().unwrap();
        let now = 1_000_000.0;
        session(
            t.path(),
            "a-old",
            SessionState::Finished,
            now - 10_000.0,
            10,
        );
        session(t.path(), "b", SessionState::Finished, now - 300.0, 5000);
        session(
            t.path(),
            "c-failed",
            SessionState::Failed,
            now - 20_000.0,
            10,
        );
        session(t.path(), "d", SessionState::Finished, now - 200.0, 5000);
        session(t.path(), "e", SessionState::Finished, now - 100.0, 10);
        let policy = Policy::parse(Some("1h"), Some("8K")).unwrap();
        let gone = expired(list_sessions(t.path()).unwrap(), &policy, now);
        let ids: Vec<_> = gone.iter().map(|e| e.meta.id.as_str()).collect();
        assert_eq!(ids, ["a-old", "b"]); // failed sessions are not this policy's
        assert!(gone[0].reason.contains("older than"), "{}", gone[0].reason);
        assert!(
            gone[1].reason.contains("beyond 8.0 KB"),
            "{}",
            gone[1].reason
        );
        enforce(t.path(), &Policy { ..policy });
        // `enforce` reads the real clock: everything here is older than an hour.
        assert!(!t.path().join("d").exists() && t.path().join("c-failed").exists());
        let left = std::fs::read_dir(t.path().join(EXPIRED_DIR))
            .unwrap()
            .count();
        assert_eq!(left, 0, "expired sessions are removed, not only moved");
    }
}
