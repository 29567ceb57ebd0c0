//! Where a session's record is: its work dir (live, or kept after a failure) with
//! `session.json` and the journal, or only the journal's copy in `$SHOAL_HOME/history` once
//! the work dir was removed. Finding and listing them, read-only.

use shoal_core::journal::{self, Log, Summary};
use shoal_core::session::{list_sessions, SessionMeta};
use shoal_core::SessionDir;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One session as its records tell it.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    /// The work dir, while it exists.
    pub dir: Option<SessionDir>,
    /// `session.json`, while the work dir exists.
    pub meta: Option<SessionMeta>,
    /// The journal: in the work dir, else the history copy (None: a session older than
    /// journals, or one whose journal could not be written).
    pub journal: Option<PathBuf>,
}

impl Record {
    fn of_dir(dir: SessionDir, meta: SessionMeta, history: &Path) -> Record {
        let own = dir.root().join(journal::FILE);
        let copy = history.join(format!("{}.journal", meta.id));
        let journal = [own, copy].into_iter().find(|p| p.exists());
        Record {
            id: meta.id.clone(),
            dir: Some(dir),
            meta: Some(meta),
            journal,
        }
    }

    fn of_history(path: PathBuf) -> Option<Record> {
        let id = path
            .file_name()?
            .to_str()?
            .strip_suffix(".journal")?
            .to_string();
        Some(Record {
            id,
            dir: None,
            meta: None,
            journal: Some(path),
        })
    }

    /// The session's state as `shoal sessions` shows it (`orphaned` for a running session
    /// whose driver is gone), from `session.json` when there is one, else from the journal.
    pub fn state(&self, log: Option<&Log>) -> String {
        if let Some(m) = &self.meta {
            return m.display_state().to_string();
        }
        match log.and_then(|l| l.end.as_ref()) {
            Some(e) => e.state.clone(),
            // A history copy is written when the session ends, so this is rare: a copy
            // from a driver that died while writing it.
            None => "unknown".into(),
        }
    }

    pub fn read_log(&self) -> Option<Log> {
        Log::read(self.journal.as_ref()?).ok()
    }

    /// Whether the driver may still change this record.
    pub fn live(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| {
            m.state == shoal_core::session::SessionState::Running && m.driver_alive()
        })
    }
}

/// Every session under `base` and every ended one in `history`, newest first.
pub fn list(base: &Path, history: &Path) -> Vec<Record> {
    let mut by_id: BTreeMap<String, Record> = BTreeMap::new();
    for name in shoal_core::fsutil::list_names(history).unwrap_or_default() {
        if let Some(r) = Record::of_history(history.join(&name)) {
            by_id.insert(r.id.clone(), r);
        }
    }
    for (dir, meta) in list_sessions(base).unwrap_or_default() {
        let r = Record::of_dir(dir, meta, history);
        by_id.insert(r.id.clone(), r);
    }
    // Session ids start with their creation time, so reverse id order is newest first.
    by_id.into_values().rev().collect()
}

/// The session `key` names: a path to its work dir or to a history journal, its id, or a
/// unique prefix of its id, among the work dirs under `base` and the journals in `history`;
/// `last` is the newest.
pub fn find(base: &Path, history: &Path, key: &str) -> Option<Record> {
    let as_path = Path::new(key);
    if as_path.join("session.json").is_file() {
        let dir = SessionDir::open(as_path);
        let meta = dir.read_meta().ok()?;
        return Some(Record::of_dir(dir, meta, history));
    }
    if as_path.is_file() && key.ends_with(".journal") {
        return Record::of_history(as_path.to_path_buf());
    }
    if key.is_empty() {
        return None;
    }
    let all = list(base, history);
    if key == shoal_core::session::LAST {
        return all.into_iter().next(); // newest first
    }
    if let Some(r) = all.iter().find(|r| r.id == key) {
        return Some(r.clone());
    }
    let mut matches = all.into_iter().filter(|r| r.id.starts_with(key));
    match (matches.next(), matches.next()) {
        (Some(r), None) => Some(r),
        _ => None,
    }
}

/// A record's summary as of `now` (None without a readable journal).
pub fn summary(rec: &Record, now: f64) -> Option<(Log, Summary)> {
    let log = rec.read_log()?;
    let s = Summary::of(&log, now);
    Some((log, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::journal::{Journal, SessionInfo};

    fn make(base: &Path, id: &str) -> SessionDir {
        let d = SessionDir::create(base.join(id)).unwrap();
        let m = SessionMeta::new(id.into(), "local");
        d.write_meta(&m).unwrap();
        drop(Journal::open(&d, &SessionInfo::of(&m)).unwrap());
        d
    }

    #[test]
    fn finds_live_and_history_sessions_by_unique_prefix() {
        let t = tempfile::tempdir().unwrap();
        let (base, history) = (t.path().join("sessions"), t.path().join("history"));
        make(&base, "20260101-000000-aaaa000000000000");
        let gone = make(&base, "20260102-000000-bbbb000000000000");
        journal::archive(&gone, &history).unwrap();
        std::fs::remove_dir_all(gone.root()).unwrap();
        let all = list(&base, &history);
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [
                "20260102-000000-bbbb000000000000",
                "20260101-000000-aaaa000000000000"
            ]
        );
        let r = find(&base, &history, "20260102").unwrap();
        assert!(r.dir.is_none() && r.journal.is_some());
        let r = find(&base, &history, "20260101-000000-aaaa000000000000").unwrap();
        assert!(r.dir.is_some() && r.meta.is_some());
        assert!(find(&base, &history, "2026").is_none(), "ambiguous");
        assert!(find(&base, &history, "nope").is_none());
        let by_path = find(
            &base,
            &history,
            base.join("20260101-000000-aaaa000000000000")
                .to_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(by_path.id, "20260101-000000-aaaa000000000000");
    }
}
