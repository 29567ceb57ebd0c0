//! The run registry: one SQLite database (`$SHOAL_HOME/runs.db`, WAL) holding every run, its
//! tasks and their earlier attempts. The CLI and the Python driver both go through this module.
//!
//! Many processes use it at once (several drivers, `shoal runs` in a loop): WAL lets readers
//! run beside a writer, writes are short IMMEDIATE transactions, and a busy timeout makes a
//! writer wait for another instead of failing.

use crate::error::{Result, RunError};
use crate::params::{render, typed, Combination};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde_json::Value as Json;
use shoal_core::fsutil::{hostname, now_secs, pid_alive};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    params TEXT NOT NULL,
    backend TEXT NOT NULL,
    template TEXT,
    options TEXT NOT NULL,
    cwd TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    config_path TEXT,
    git_commit TEXT,
    git_dirty INTEGER,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    status TEXT NOT NULL,
    driver_pid INTEGER,
    driver_host TEXT,
    session TEXT,
    session_path TEXT,
    message TEXT
);
CREATE INDEX IF NOT EXISTS runs_name ON runs(name);
CREATE TABLE IF NOT EXISTS tasks (
    run_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    params TEXT NOT NULL,
    argv TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    exit_code INTEGER,
    duration REAL,
    started REAL,
    ended REAL,
    host TEXT,
    worker TEXT,
    session TEXT,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    run_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER,
    duration REAL,
    started REAL,
    ended REAL,
    host TEXT,
    worker TEXT,
    session TEXT,
    PRIMARY KEY (run_id, idx, attempt)
) WITHOUT ROWID;
"#;

/// Task states, in display order.
pub const TASK_STATES: [&str; 5] = ["pending", "running", "done", "failed", "cancelled"];

/// What `shoal run` registers.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub name: String,
    pub command: Vec<String>,
    /// The parameter specs as given (`{"param": [...], "group": [[...]]}`), for `shoal show`.
    pub params: Json,
    pub backend: String,
    pub template: Option<String>,
    pub options: Json,
    pub cwd: PathBuf,
    pub results_dir: PathBuf,
    pub config_path: Option<PathBuf>,
    pub git: Option<(String, bool)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub command: Vec<String>,
    pub params: Json,
    pub backend: String,
    pub template: Option<String>,
    pub options: Json,
    pub cwd: String,
    pub run_dir: String,
    pub config_path: Option<String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub created: f64,
    pub started: Option<f64>,
    pub ended: Option<f64>,
    pub status: String,
    pub driver_pid: Option<i64>,
    pub driver_host: Option<String>,
    pub session: Option<String>,
    pub session_path: Option<String>,
    pub message: Option<String>,
}

impl RunRow {
    /// Whether the driver process recorded for this run still exists (unknown on another host:
    /// assumed alive).
    pub fn driver_alive(&self) -> bool {
        match (self.driver_pid, &self.driver_host) {
            (Some(pid), Some(host)) if *host == hostname() => pid > 0 && pid_alive(pid as u32),
            (Some(_), Some(_)) => true,
            _ => false,
        }
    }

    /// The status to show: a `running` run whose driver is gone is `interrupted`.
    pub fn display_status(&self) -> &str {
        if self.status == "running" && !self.driver_alive() {
            "interrupted"
        } else {
            &self.status
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub run_id: i64,
    pub idx: i64,
    pub params: Vec<(String, String)>,
    pub argv: Vec<String>,
    pub out_dir: String,
    pub state: String,
    pub attempt: i64,
    pub exit_code: Option<i64>,
    pub duration: Option<f64>,
    pub started: Option<f64>,
    pub ended: Option<f64>,
    pub host: Option<String>,
    pub worker: Option<String>,
    pub session: Option<String>,
}

/// A task's end as the driver saw it (or as a completion marker recorded it).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub idx: i64,
    pub attempt: i64,
    pub state: String,
    pub exit_code: Option<i64>,
    pub duration: Option<f64>,
    pub started: Option<f64>,
    pub ended: Option<f64>,
    pub host: Option<String>,
    pub worker: Option<String>,
    pub session: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.done + self.failed + self.cancelled
    }
    fn add(&mut self, state: &str, n: u64) {
        match state {
            "pending" => self.pending += n,
            "running" => self.running += n,
            "done" => self.done += n,
            "failed" => self.failed += n,
            "cancelled" => self.cancelled += n,
            _ => {}
        }
    }
}

pub struct Registry {
    conn: Connection,
    path: PathBuf,
}

fn json_col(s: String) -> Json {
    serde_json::from_str(&s).unwrap_or(Json::Null)
}

const RUN_COLS: &str = "id, name, command, params, backend, template, options, cwd, run_dir, \
    config_path, git_commit, git_dirty, created, started, ended, status, driver_pid, driver_host, \
    session, session_path, message";

fn run_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        name: r.get(1)?,
        command: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
        params: json_col(r.get(3)?),
        backend: r.get(4)?,
        template: r.get(5)?,
        options: json_col(r.get(6)?),
        cwd: r.get(7)?,
        run_dir: r.get(8)?,
        config_path: r.get(9)?,
        git_commit: r.get(10)?,
        git_dirty: r.get::<_, Option<i64>>(11)?.map(|d| d != 0),
        created: r.get(12)?,
        started: r.get(13)?,
        ended: r.get(14)?,
        status: r.get(15)?,
        driver_pid: r.get(16)?,
        driver_host: r.get(17)?,
        session: r.get(18)?,
        session_path: r.get(19)?,
        message: r.get(20)?,
    })
}

const TASK_COLS: &str = "run_id, idx, params, argv, out_dir, state, attempt, exit_code, duration, \
    started, ended, host, worker, session";

fn task_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        run_id: r.get(0)?,
        idx: r.get(1)?,
        params: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
        argv: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
        out_dir: r.get(4)?,
        state: r.get(5)?,
        attempt: r.get(6)?,
        exit_code: r.get(7)?,
        duration: r.get(8)?,
        started: r.get(9)?,
        ended: r.get(10)?,
        host: r.get(11)?,
        worker: r.get(12)?,
        session: r.get(13)?,
    })
}

/// `$SHOAL_HOME/runs.db` (SHOAL_HOME defaults to ~/.shoal).
pub fn default_path() -> PathBuf {
    shoal_core::session::shoal_home().join("runs.db")
}

/// A run name must start with a letter so it never reads as a run id or a session id.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(RunError::Command(format!(
            "invalid run name {name:?}\nhint: a name starts with a letter and holds letters, \
             digits, '_', '.' and '-' (it names the results dir and never reads as a run id)"
        )))
    }
}

impl Registry {
    pub fn open(path: &Path) -> Result<Registry> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| shoal_core::CoreError::io(dir, e))?;
        }
        let db = |source| RunError::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(db)?;
        // journal_mode returns a row; WAL persists in the file once set.
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .map_err(db)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(db)?;
        let reg = Registry {
            conn,
            path: path.to_path_buf(),
        };
        reg.write(|c| c.execute_batch(SCHEMA))?;
        Ok(reg)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self, source: rusqlite::Error) -> RunError {
        RunError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// One IMMEDIATE transaction: takes the write lock up front, so the busy timeout applies
    /// (a deferred transaction upgrading to a writer can fail at once under WAL).
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let v = f(&tx).map_err(|e| self.db(e))?;
        tx.commit().map_err(|e| self.db(e))?;
        Ok(v)
    }

    /// Register a run and its tasks (all pending). Task `i` writes to `RUN_DIR/i`, where
    /// RUN_DIR is `results_dir/NAME-ID`.
    pub fn create_run(&self, new: &NewRun, combos: &[Combination]) -> Result<RunRow> {
        check_name(&new.name)?;
        let id = self.write(|tx| {
            tx.execute(
                "INSERT INTO runs (name, command, params, backend, template, options, cwd, run_dir, \
                 config_path, git_commit, git_dirty, created, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '', ?8, ?9, ?10, ?11, 'pending')",
                params![
                    new.name,
                    serde_json::to_string(&new.command).unwrap_or_default(),
                    new.params.to_string(),
                    new.backend,
                    new.template,
                    new.options.to_string(),
                    new.cwd.display().to_string(),
                    new.config_path.as_ref().map(|p| p.display().to_string()),
                    new.git.as_ref().map(|g| g.0.clone()),
                    new.git.as_ref().map(|g| g.1 as i64),
                    now_secs(),
                ],
            )?;
            let id = tx.last_insert_rowid();
            let run_dir = new.results_dir.join(format!("{}-{id}", new.name));
            tx.execute(
                "UPDATE runs SET run_dir = ?1 WHERE id = ?2",
                params![run_dir.display().to_string(), id],
            )?;
            let mut stmt = tx.prepare(
                "INSERT INTO tasks (run_id, idx, params, argv, out_dir, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            )?;
            for (i, combo) in combos.iter().enumerate() {
                let out = run_dir.join(i.to_string());
                let mut vars = combo.clone();
                vars.push(("out".into(), out.display().to_string()));
                vars.push(("task".into(), i.to_string()));
                vars.push(("run".into(), id.to_string()));
                vars.push(("name".into(), new.name.clone()));
                let argv = render(&new.command, &vars);
                stmt.execute(params![
                    id,
                    i as i64,
                    serde_json::to_string(combo).unwrap_or_default(),
                    serde_json::to_string(&argv).unwrap_or_default(),
                    out.display().to_string(),
                ])?;
            }
            Ok(id)
        })?;
        self.get(id)
    }

    pub fn get(&self, id: i64) -> Result<RunRow> {
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
                [id],
                run_from,
            )
            .optional()
            .map_err(|e| self.db(e))?
            .ok_or_else(|| RunError::NoSuchRun(id.to_string()))
    }

    /// A run by id (all digits) or by name (the most recent run of that name).
    pub fn resolve(&self, key: &str) -> Result<RunRow> {
        if let Ok(id) = key.parse::<i64>() {
            return self.get(id);
        }
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE name = ?1 ORDER BY id DESC LIMIT 1"),
                [key],
                run_from,
            )
            .optional()
            .map_err(|e| self.db(e))?
            .ok_or_else(|| RunError::NoSuchRun(key.to_string()))
    }

    /// Every run with its task counts, oldest first.
    pub fn list(&self) -> Result<Vec<(RunRow, Counts)>> {
        let runs: Vec<RunRow> = (|| {
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT {RUN_COLS} FROM runs ORDER BY id"))?;
            let rows = stmt.query_map([], run_from)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(|e| self.db(e))?;
        let mut counts: std::collections::HashMap<i64, Counts> = Default::default();
        (|| {
            let mut stmt = self
                .conn
                .prepare("SELECT run_id, state, COUNT(*) FROM tasks GROUP BY run_id, state")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let state: String = r.get(1)?;
                counts
                    .entry(r.get(0)?)
                    .or_default()
                    .add(&state, r.get::<_, i64>(2)? as u64);
            }
            Ok(())
        })()
        .map_err(|e| self.db(e))?;
        Ok(runs
            .into_iter()
            .map(|r| {
                let c = counts.remove(&r.id).unwrap_or_default();
                (r, c)
            })
            .collect())
    }

    pub fn counts(&self, id: i64) -> Result<Counts> {
        let mut c = Counts::default();
        (|| {
            let mut stmt = self
                .conn
                .prepare("SELECT state, COUNT(*) FROM tasks WHERE run_id = ?1 GROUP BY state")?;
            let mut rows = stmt.query([id])?;
            while let Some(r) = rows.next()? {
                let state: String = r.get(0)?;
                c.add(&state, r.get::<_, i64>(1)? as u64);
            }
            Ok(())
        })()
        .map_err(|e| self.db(e))?;
        Ok(c)
    }

    /// Tasks of a run in index order, optionally only those in `states`.
    pub fn tasks(&self, id: i64, states: Option<&[&str]>) -> Result<Vec<TaskRow>> {
        let all = (|| {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {TASK_COLS} FROM tasks WHERE run_id = ?1 ORDER BY idx"
            ))?;
            let rows = stmt.query_map([id], task_from)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(|e| self.db(e))?;
        Ok(match states {
            Some(s) => all
                .into_iter()
                .filter(|t| s.contains(&t.state.as_str()))
                .collect(),
            None => all,
        })
    }

    pub fn task(&self, id: i64, idx: i64) -> Result<Option<TaskRow>> {
        self.conn
            .query_row(
                &format!("SELECT {TASK_COLS} FROM tasks WHERE run_id = ?1 AND idx = ?2"),
                [id, idx],
                task_from,
            )
            .optional()
            .map_err(|e| self.db(e))
    }

    /// Earlier attempts of a task (kept when `rerun` resets it), oldest first.
    pub fn attempts(&self, id: i64, idx: i64) -> Result<Vec<Outcome>> {
        (|| {
            let mut stmt = self.conn.prepare(
                "SELECT idx, attempt, state, exit_code, duration, started, ended, host, worker, \
                 session FROM attempts WHERE run_id = ?1 AND idx = ?2 ORDER BY attempt",
            )?;
            let rows = stmt.query_map([id, idx], |r| {
                Ok(Outcome {
                    idx: r.get(0)?,
                    attempt: r.get(1)?,
                    state: r.get(2)?,
                    exit_code: r.get(3)?,
                    duration: r.get(4)?,
                    started: r.get(5)?,
                    ended: r.get(6)?,
                    host: r.get(7)?,
                    worker: r.get(8)?,
                    session: r.get(9)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(|e| self.db(e))
    }

    /// The driver took the run: record its pid and host, mark the run running.
    pub fn start_driver(&self, id: i64, pid: u32, host: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET status = 'running', driver_pid = ?2, driver_host = ?3, \
                 started = COALESCE(started, ?4), ended = NULL, message = NULL WHERE id = ?1",
                params![id, pid as i64, host, now_secs()],
            )
        })?;
        Ok(())
    }

    pub fn set_session(&self, id: i64, session: &str, path: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET session = ?2, session_path = ?3 WHERE id = ?1",
                params![id, session, path],
            )
        })?;
        Ok(())
    }

    /// Tasks a worker has started (pending -> running).
    pub fn mark_running(&self, id: i64, idxs: &[i64]) -> Result<usize> {
        self.write(|tx| {
            let mut stmt = tx.prepare(
                "UPDATE tasks SET state = 'running' WHERE run_id = ?1 AND idx = ?2 \
                 AND state = 'pending'",
            )?;
            let mut n = 0;
            for i in idxs {
                n += stmt.execute([id, *i])?;
            }
            Ok(n)
        })
    }

    /// Record task ends in one transaction. An outcome of an older attempt than the task's
    /// current one is ignored, so a late or harvested result never overwrites a rerun.
    pub fn record(&self, id: i64, outcomes: &[Outcome]) -> Result<usize> {
        self.write(|tx| {
            let mut stmt = tx.prepare(
                "UPDATE tasks SET state = ?3, exit_code = ?4, duration = ?5, started = ?6, \
                 ended = ?7, host = ?8, worker = ?9, session = ?10 \
                 WHERE run_id = ?1 AND idx = ?2 AND attempt = ?11",
            )?;
            let mut n = 0;
            for o in outcomes {
                n += stmt.execute(params![
                    id,
                    o.idx,
                    o.state,
                    o.exit_code,
                    o.duration,
                    o.started,
                    o.ended,
                    o.host,
                    o.worker,
                    o.session,
                    o.attempt
                ])?;
            }
            Ok(n)
        })
    }

    /// Move tasks in `from` states to `to` (no new attempt): e.g. running -> pending after an
    /// interruption, pending/running -> cancelled on cancel.
    pub fn set_states(&self, id: i64, from: &[&str], to: &str) -> Result<usize> {
        self.write(|tx| {
            let mut n = 0;
            for f in from {
                n += tx.execute(
                    "UPDATE tasks SET state = ?3 WHERE run_id = ?1 AND state = ?2",
                    params![id, f, to],
                )?;
            }
            Ok(n)
        })
    }

    /// Start a new attempt of every task in `from` states: the old attempt moves to the
    /// history table, the task becomes pending with attempt + 1.
    pub fn new_attempt(&self, id: i64, from: &[&str]) -> Result<usize> {
        self.write(|tx| {
            let mut n = 0;
            for f in from {
                tx.execute(
                    "INSERT OR REPLACE INTO attempts (run_id, idx, attempt, state, exit_code, \
                     duration, started, ended, host, worker, session) \
                     SELECT run_id, idx, attempt, state, exit_code, duration, started, ended, \
                     host, worker, session FROM tasks WHERE run_id = ?1 AND state = ?2",
                    params![id, f],
                )?;
                n += tx.execute(
                    "UPDATE tasks SET state = 'pending', attempt = attempt + 1, exit_code = NULL, \
                     duration = NULL, started = NULL, ended = NULL, host = NULL, worker = NULL, \
                     session = NULL WHERE run_id = ?1 AND state = ?2",
                    params![id, f],
                )?;
            }
            Ok(n)
        })
    }

    /// Set the run's status; `ended` is stamped for every status but pending/running.
    pub fn set_status(&self, id: i64, status: &str, message: Option<&str>) -> Result<()> {
        let ended = (!matches!(status, "pending" | "running")).then(now_secs);
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, message = COALESCE(?3, message), ended = ?4 \
                 WHERE id = ?1",
                params![id, status, message, ended],
            )
        })?;
        Ok(())
    }

    /// Final status from task states: failed if any failed, cancelled if any cancelled, done
    /// if all done, else interrupted (tasks left pending).
    pub fn settle(&self, id: i64) -> Result<String> {
        let c = self.counts(id)?;
        let status = if c.failed > 0 {
            "failed"
        } else if c.cancelled > 0 {
            "cancelled"
        } else if c.pending + c.running > 0 {
            "interrupted"
        } else {
            "done"
        };
        self.set_status(id, status, None)?;
        Ok(status.to_string())
    }

    pub fn delete(&self, id: i64) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM attempts WHERE run_id = ?1", [id])?;
            tx.execute("DELETE FROM tasks WHERE run_id = ?1", [id])?;
            tx.execute("DELETE FROM runs WHERE id = ?1", [id])
        })?;
        Ok(())
    }
}

/// Parameters of a task as a JSON object with typed values (ints, floats, strings).
pub fn params_json(params: &[(String, String)]) -> Json {
    Json::Object(params.iter().map(|(k, v)| (k.clone(), typed(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Grid;

    fn new_run(dir: &Path, name: &str) -> NewRun {
        NewRun {
            name: name.into(),
            command: vec!["echo".into(), "{lr}".into(), "{out}".into()],
            params: serde_json::json!({"param": ["lr=1,2"]}),
            backend: "local".into(),
            template: None,
            options: serde_json::json!({}),
            cwd: dir.to_path_buf(),
            results_dir: dir.join("results"),
            config_path: None,
            git: Some(("abc".into(), true)),
        }
    }

    #[test]
    fn create_record_rerun() {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::open(&t.path().join("runs.db")).unwrap();
        let grid = Grid::parse(&["lr=1,2".into()], &[]).unwrap();
        let run = reg
            .create_run(&new_run(t.path(), "iris"), &grid.expand())
            .unwrap();
        assert_eq!(run.id, 1);
        assert!(run.run_dir.ends_with("results/iris-1"), "{}", run.run_dir);
        assert_eq!(run.git_dirty, Some(true));
        let tasks = reg.tasks(1, None).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[1].argv[1], "2");
        assert!(tasks[1].argv[2].ends_with("iris-1/1"));
        reg.start_driver(1, std::process::id(), &hostname())
            .unwrap();
        assert_eq!(reg.get(1).unwrap().display_status(), "running");
        reg.mark_running(1, &[0, 1]).unwrap();
        let fail = Outcome {
            idx: 1,
            attempt: 1,
            state: "failed".into(),
            exit_code: Some(3),
            ..Default::default()
        };
        let ok = Outcome {
            idx: 0,
            attempt: 1,
            state: "done".into(),
            exit_code: Some(0),
            ..Default::default()
        };
        assert_eq!(reg.record(1, &[fail.clone(), ok]).unwrap(), 2);
        assert_eq!(reg.settle(1).unwrap(), "failed");
        assert_eq!(
            reg.counts(1).unwrap(),
            Counts {
                done: 1,
                failed: 1,
                ..Default::default()
            }
        );
        assert_eq!(reg.new_attempt(1, &["failed"]).unwrap(), 1);
        let t1 = reg.task(1, 1).unwrap().unwrap();
        assert_eq!(
            (t1.state.as_str(), t1.attempt, t1.exit_code),
            ("pending", 2, None)
        );
        assert_eq!(reg.attempts(1, 1).unwrap()[0].exit_code, Some(3));
        // A stale outcome of attempt 1 no longer applies.
        assert_eq!(reg.record(1, &[fail]).unwrap(), 0);
        assert_eq!(reg.resolve("iris").unwrap().id, 1);
        assert!(matches!(reg.resolve("7"), Err(RunError::NoSuchRun(_))));
        let list = reg.list().unwrap();
        assert_eq!(list[0].1.total(), 2);
        reg.delete(1).unwrap();
        assert!(reg.list().unwrap().is_empty());
    }

    #[test]
    fn dead_driver_is_interrupted_and_names_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let reg = Registry::open(&t.path().join("runs.db")).unwrap();
        let run = reg.create_run(&new_run(t.path(), "a"), &[vec![]]).unwrap();
        reg.start_driver(run.id, u32::MAX / 2, &hostname()).unwrap();
        assert_eq!(reg.get(run.id).unwrap().display_status(), "interrupted");
        for bad in ["7", "1abc", "a b", ""] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn concurrent_writers_do_not_fail() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("runs.db");
        Registry::open(&path).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let path = path.clone();
                let dir = t.path().to_path_buf();
                std::thread::spawn(move || {
                    let reg = Registry::open(&path).unwrap();
                    for _ in 0..10 {
                        let combos: Vec<Combination> = (0..20).map(|_| vec![]).collect();
                        let run = reg
                            .create_run(&new_run(&dir, &format!("w{k}")), &combos)
                            .unwrap();
                        let outs: Vec<Outcome> = (0..20)
                            .map(|i| Outcome {
                                idx: i,
                                attempt: 1,
                                state: "done".into(),
                                ..Default::default()
                            })
                            .collect();
                        reg.record(run.id, &outs).unwrap();
                        reg.list().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.list().unwrap().len(), 40);
    }
}
