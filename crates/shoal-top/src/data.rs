//! What `shoal top` shows, loaded from the records: one row per session or run for the list,
//! and a session's summary (plus a run's failed tasks) for the session view. Journals are
//! read incrementally and ended ones are never read again; nothing is ever written.

use crate::record::{self, Record};
use shoal_core::journal::{Log, Summary};
use shoal_runs::registry::{Counts, RunRow, TaskRow};
use shoal_runs::Registry;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a list row stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Session(String),
    Run(i64),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub key: Key,
    pub name: String,
    pub backend: String,
    pub done: u64,
    pub total: u64,
    pub failed: u64,
    pub rate: f64,
    pub eta: Option<f64>,
    /// Wall-clock creation time.
    pub created: f64,
    pub state: String,
    pub live: bool,
    /// The session (a run's latest session), when its record exists.
    pub session: Option<Record>,
    pub run: Option<RunRow>,
    /// The run a session belongs to (its metadata says so).
    pub of_run: Option<i64>,
}

impl Row {
    /// Text the `/` filter matches against.
    pub fn haystack(&self) -> String {
        let id = match &self.key {
            Key::Session(id) => id.clone(),
            Key::Run(id) => format!("run {id}"),
        };
        format!("{id} {} {} {}", self.name, self.backend, self.state).to_lowercase()
    }
}

/// A session opened in the session view.
pub struct Detail {
    pub row: Row,
    pub summary: Option<Summary>,
    /// For a run: its failed tasks from the registry.
    pub run_failed: Vec<TaskRow>,
}

pub struct Loader {
    base: PathBuf,
    history: PathBuf,
    logs: HashMap<PathBuf, Log>,
    /// Rows of ended sessions, with what their records looked like (`session.json`'s update
    /// time, the journal's length): unchanged records are not read again.
    settled: HashMap<String, ((u64, u64), Row)>,
    registry_path: PathBuf,
    registry: Option<Registry>,
}

impl Loader {
    pub fn new(base: &Path, history: &Path, registry: &Path) -> Loader {
        Loader {
            base: base.to_path_buf(),
            history: history.to_path_buf(),
            logs: HashMap::new(),
            settled: HashMap::new(),
            registry_path: registry.to_path_buf(),
            registry: None,
        }
    }

    /// The run registry, if there is one (it is never created here).
    fn registry(&mut self) -> Option<&Registry> {
        if self.registry.is_none() && shoal_runs::registry::exists(&self.registry_path) {
            self.registry = Registry::open(&self.registry_path).ok();
        }
        self.registry.as_ref()
    }

    /// The journal of `rec`, read so far and refreshed.
    fn log(&mut self, rec: &Record) -> Option<&Log> {
        let path = rec.journal.clone()?;
        let log = match self.logs.entry(path.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let l = e.into_mut();
                if !l.ended() {
                    let _ = l.refresh();
                }
                l
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Log::read(&path).ok()?),
        };
        Some(log)
    }

    fn session_row(&mut self, rec: Record, now: f64) -> Row {
        let print = (
            rec.meta.as_ref().map_or(0, |m| m.updated.to_bits()),
            rec.journal
                .as_ref()
                .and_then(|p| std::fs::metadata(p).ok())
                .map_or(0, |m| m.len()),
        );
        if let Some((p, row)) = self.settled.get(&rec.id) {
            if *p == print && !rec.live() {
                return row.clone();
            }
        }
        let summary = self.log(&rec).map(|l| Summary::of(l, now));
        let state = rec.state(
            self.logs
                .get(rec.journal.as_deref().unwrap_or(Path::new(""))),
        );
        let (metadata, backend, created) = match (&rec.meta, &summary) {
            (Some(m), _) => (m.metadata.clone(), m.backend.clone(), m.created),
            (None, Some(s)) => (
                s.session.metadata.clone(),
                s.session.backend.clone(),
                s.session.started,
            ),
            (None, None) => (serde_json::Value::Null, "?".into(), 0.0),
        };
        let name = crate::report::name(&metadata);
        let (mut done, mut total, mut failed) = summary.as_ref().map_or((0, 0, 0), |s| {
            (s.tasks.finished, s.tasks.total, s.tasks.failed)
        });
        if let Some(m) = &rec.meta {
            // session.json is rewritten every half second: the freshest counts.
            (done, total, failed) = (m.tasks_done, m.tasks_total, m.tasks_failed);
        }
        let live = rec.live();
        let row = Row {
            key: Key::Session(rec.id.clone()),
            name: name.unwrap_or_else(|| crate::fmt::short_id(&rec.id)),
            backend,
            done,
            total,
            failed,
            rate: summary
                .as_ref()
                .map_or(0.0, |s| if live { s.recent_rate } else { s.rate }),
            eta: summary.as_ref().and_then(|s| s.eta).filter(|_| live),
            created,
            state,
            live,
            session: Some(rec.clone()),
            run: None,
            of_run: metadata.get("run").and_then(|v| v.as_i64()),
        };
        if !live {
            self.settled.insert(rec.id, (print, row.clone()));
        }
        row
    }

    /// Every run and every session not belonging to a listed run, live ones first, then
    /// newest first.
    pub fn rows(&mut self, now: f64) -> Vec<Row> {
        let records = record::list(&self.base, &self.history);
        let runs: Vec<(RunRow, Counts)> = self
            .registry()
            .and_then(|r| r.list().ok())
            .unwrap_or_default();
        let run_ids: HashSet<i64> = runs.iter().map(|(r, _)| r.id).collect();
        let mut by_id: HashMap<String, Row> = HashMap::new();
        let mut rows = Vec::new();
        for rec in records {
            let row = self.session_row(rec, now);
            if let Key::Session(id) = &row.key {
                by_id.insert(id.clone(), row.clone());
            }
            if !row.of_run.is_some_and(|id| run_ids.contains(&id)) {
                rows.push(row);
            }
        }
        for (run, counts) in runs {
            let session = run.session.as_ref().and_then(|s| by_id.get(s));
            let live = run.display_status() == "running";
            rows.push(Row {
                key: Key::Run(run.id),
                name: format!("{} {}", run.id, run.name),
                backend: run.backend.clone(),
                done: counts.done + counts.failed,
                total: counts.total(),
                failed: counts.failed,
                rate: session.map_or(0.0, |s| s.rate),
                eta: session.and_then(|s| s.eta).filter(|_| live),
                created: run.created,
                state: run.display_status().to_string(),
                live,
                session: session.and_then(|s| s.session.clone()),
                run: Some(run),
                of_run: None,
            });
        }
        rows.sort_by(|a, b| b.live.cmp(&a.live).then(b.created.total_cmp(&a.created)));
        rows
    }

    /// The session view of `row`, freshly read.
    pub fn detail(&mut self, row: &Row, now: f64) -> Detail {
        let rec = row.session.as_ref().and_then(|r| {
            // Re-read session.json: the row may be a second old.
            record::find(&self.base, &self.history, &r.id).or_else(|| Some(r.clone()))
        });
        let summary = rec
            .as_ref()
            .and_then(|r| self.log(r).map(|l| Summary::of(l, now)));
        let run_failed = match &row.key {
            Key::Run(id) => self
                .registry()
                .and_then(|r| r.tasks(*id, Some(&["failed"])).ok())
                .unwrap_or_default(),
            Key::Session(_) => Vec::new(),
        };
        Detail {
            row: Row {
                session: rec,
                ..row.clone()
            },
            summary,
            run_failed,
        }
    }
}
