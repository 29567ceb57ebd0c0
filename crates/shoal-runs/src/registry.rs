//! The run registry: one SQLite database (`$SHOAL_HOME/runs.db`) holding every run, its tasks,
//! their earlier attempts, and each launch (run, resume, rerun) with its git commit. The CLI
//! and the Python driver both go through this module.
//!
//! Many processes use it at once (several drivers, `shoal runs` in a loop, possibly on other
//! nodes): writes are short IMMEDIATE transactions and a busy timeout makes a writer wait for
//! another instead of failing. On a local filesystem that database is the registry (WAL:
//! readers run beside a writer); on a network filesystem it is this node's cache of a record
//! store (see `records`, and `netfs` for the choice), and every write is also published as a
//! record. The schema is versioned (see `schema`).

use crate::error::{Result, RunError};
use crate::netfs::{self, FsKind, JournalMode};
use crate::params::{render, typed, Combination};
use crate::records::{self, Log, Store};
use rusqlite::{params, Connection, OptionalExtension, ToSql, TransactionBehavior};
use serde::Serialize;
use serde_json::Value as Json;
use shoal_core::fsutil::{hostname, now_secs, pid_alive};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// The experiment it runs (a `[experiments.NAME]` of the config), if any.
    pub experiment: Option<String>,
    /// Options given on the command line (`--opt`, `--workers`), applied over the template.
    pub overrides: Json,
    /// The datasets every task is given: `[{"name", "path", "env"}]` (`env` is the variable
    /// holding the path; `{dataset:NAME}` in the command is replaced by it).
    pub datasets: Json,
    pub note: Option<String>,
    pub tags: Vec<String>,
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
    pub experiment: Option<String>,
    pub overrides: Json,
    pub datasets: Json,
    pub note: Option<String>,
    pub tags: Vec<String>,
    /// How many times a driver took the run (the number of its latest launch; 0: never).
    pub launch: i64,
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
    /// The launch that ran its current attempt (None: not started, or before launches were
    /// recorded).
    pub launch: Option<i64>,
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
    /// The launch that ran it (None: the run's current launch).
    pub launch: Option<i64>,
}

/// What a driver is started with: `shoal run`, `resume` or `rerun`.
#[derive(Debug, Clone)]
pub struct NewLaunch {
    pub kind: String,
    pub git: Option<(String, bool)>,
    pub template: Option<String>,
    pub options: Json,
    /// Where the options came from, for `shoal show` (e.g. "template two_cpus of
    /// /p/shoal.toml, as it is now").
    pub options_from: String,
    /// The run's command-line options from now on (`--opt`, `--workers` of every launch).
    pub overrides: Json,
    pub tasks: usize,
    pub detached: bool,
}

/// One time a driver took the run.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchRow {
    pub run_id: i64,
    pub n: i64,
    pub kind: String,
    pub started: f64,
    pub ended: Option<f64>,
    pub status: Option<String>,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub template: Option<String>,
    pub options: Json,
    pub options_from: Option<String>,
    pub tasks: i64,
    pub detached: bool,
    pub session: Option<String>,
    pub session_path: Option<String>,
    pub driver_pid: Option<i64>,
    pub driver_host: Option<String>,
}

/// Which runs `shoal runs` lists; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// A glob over the run name (`iris*`).
    pub name: Option<String>,
    /// Display statuses (`interrupted` included); any of them.
    pub status: Vec<String>,
    /// Tags; all of them.
    pub tags: Vec<String>,
    pub experiment: Option<String>,
    /// Created at or after / before these times (seconds since the epoch).
    pub since: Option<f64>,
    pub until: Option<f64>,
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
    /// The database queried: the registry itself, or on a record store its node-local cache.
    conn: Connection,
    path: PathBuf,
    journal: JournalMode,
    fs: FsKind,
    /// The shared record store (`runs.d`), when the registry lives on a network filesystem.
    store: Option<Store>,
    /// Runs this registry drives (`start_driver`): their records are folded into bases here.
    drives: RefCell<std::collections::HashSet<i64>>,
}

/// A write's transaction: executes statements on the database and, on a record store, keeps
/// them (with their values) for the record that publishes the write.
struct Tx<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    log: Option<RefCell<Log>>,
}

impl Tx<'_> {
    fn execute(&self, sql: &str, params: &[&dyn ToSql]) -> rusqlite::Result<usize> {
        let values = params
            .iter()
            .map(|p| records::value_of(*p))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let n = self
            .tx
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(values.iter()))?;
        if let Some(log) = &self.log {
            log.borrow_mut()
                .push(sql, values.iter().map(records::to_json).collect());
        }
        Ok(n)
    }

    /// A read inside the write (not recorded: a record holds only what changes).
    fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.tx.query_row(sql, params, f)
    }

    fn last_insert_rowid(&self) -> i64 {
        self.tx.last_insert_rowid()
    }
}

fn json_col(s: String) -> Json {
    serde_json::from_str(&s).unwrap_or(Json::Null)
}

const RUN_COLS: &str = "id, name, command, params, backend, template, options, cwd, run_dir, \
    config_path, git_commit, git_dirty, created, started, ended, status, driver_pid, driver_host, \
    session, session_path, message, experiment, overrides, datasets, note, \
    (SELECT COALESCE(MAX(n), 0) FROM launches WHERE launches.run_id = runs.id)";

/// The number of the run's latest launch, inside SQL.
const CURRENT_LAUNCH: &str = "(SELECT MAX(n) FROM launches WHERE launches.run_id = ?1)";

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
        experiment: r.get(21)?,
        overrides: json_col(r.get(22)?),
        datasets: json_col(r.get(23)?),
        note: r.get(24)?,
        tags: Vec::new(),
        launch: r.get(25)?,
    })
}

const TASK_COLS: &str = "run_id, idx, params, argv, out_dir, state, attempt, exit_code, duration, \
    started, ended, host, worker, session, launch";

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
        launch: r.get(14)?,
    })
}

const LAUNCH_COLS: &str = "run_id, n, kind, started, ended, status, git_commit, git_dirty, \
    template, options, options_from, tasks, detached, session, session_path, driver_pid, \
    driver_host";

fn launch_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<LaunchRow> {
    Ok(LaunchRow {
        run_id: r.get(0)?,
        n: r.get(1)?,
        kind: r.get(2)?,
        started: r.get(3)?,
        ended: r.get(4)?,
        status: r.get(5)?,
        git_commit: r.get(6)?,
        git_dirty: r.get::<_, Option<i64>>(7)?.map(|d| d != 0),
        template: r.get(8)?,
        options: json_col(r.get(9)?),
        options_from: r.get(10)?,
        tasks: r.get(11)?,
        detached: r.get::<_, i64>(12)? != 0,
        session: r.get(13)?,
        session_path: r.get(14)?,
        driver_pid: r.get(15)?,
        driver_host: r.get(16)?,
    })
}

/// `$SHOAL_HOME/runs.db` (SHOAL_HOME defaults to ~/.shoal).
pub fn default_path() -> PathBuf {
    shoal_core::session::shoal_home().join("runs.db")
}

/// A tag is one word (letters, digits, `_ . - : /`), so `--tag a,b` can list several.
pub fn check_tag(tag: &str) -> Result<()> {
    if !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_alphanumeric() || "_.-:/".contains(c))
    {
        Ok(())
    } else {
        Err(RunError::Command(format!(
            "invalid tag {tag:?}\nhint: a tag is one word of letters, digits, '_', '.', '-', ':' \
             and '/'"
        )))
    }
}

/// `raw` made into a valid name: other characters become `_`, and `prefix` goes in front
/// when it does not start with a letter.
pub fn to_name(raw: &str, prefix: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
    {
        clean
    } else {
        format!("{prefix}{clean}")
    }
}

/// Names of runs, experiments and datasets start with a letter (so they never read as a run
/// id or a session id) and hold letters, digits, `_ . -`.
pub fn is_valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A run name must start with a letter so it never reads as a run id or a session id.
pub fn check_name(name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(RunError::Command(format!(
            "invalid run name {name:?}\nhint: a name starts with a letter and holds letters, \
             digits, '_', '.' and '-' (it names the results dir and never reads as a run id)"
        )))
    }
}

/// The record store of the registry at `path` (`runs.d` beside `runs.db`).
pub fn records_dir(path: &Path) -> PathBuf {
    path.with_extension("d")
}

/// Whether a registry exists at `path` (a SQLite file or a record store).
pub fn exists(path: &Path) -> bool {
    path.exists() || records_dir(path).is_dir()
}

/// The SQLite registry at `path` in `journal` mode, its schema brought up to date.
fn open_sqlite(path: &Path, journal: JournalMode) -> Result<Connection> {
    let db = |source| RunError::Db {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(db)?;
    // Writers from other processes hold the lock only for short transactions; a minute
    // covers a loaded machine too.
    conn.busy_timeout(Duration::from_secs(60)).map_err(db)?;
    // journal_mode answers with the mode in force: a rollback-journal database stays so
    // until a WAL request, and leaving WAL needs every other connection closed.
    let mode: String = conn
        .query_row(
            &format!("PRAGMA journal_mode={}", journal.pragma()),
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if !mode.eq_ignore_ascii_case(journal.pragma()) {
        return Err(RunError::Command(format!(
            "run registry {}: journal mode is {mode}, could not switch to {}\nhint: another \
             process holds it open in {mode} mode; retry when no shoal command is using it",
            path.display(),
            journal.pragma()
        )));
    }
    // WAL is durable enough with NORMAL; a rollback journal needs FULL to survive a crash.
    let sync = if journal == JournalMode::Wal {
        "NORMAL"
    } else {
        "FULL"
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"
    ))
    .map_err(db)?;
    crate::schema::upgrade(&mut conn)
        .map_err(|e| RunError::Command(format!("run registry {}: {e}", path.display())))?;
    Ok(conn)
}

/// This node's cache of the record store at `root`: a WAL database in `dir` when that is a
/// local disk, else (or when the file cannot be used) one in memory, rebuilt from the records
/// by every process. It holds nothing the records do not.
fn open_cache(dir: &Path, root: &Path) -> Result<Connection> {
    use std::os::unix::fs::DirBuilderExt;
    let local = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .and_then(|()| netfs::kind_of(dir))
        .is_ok_and(|k| k == FsKind::Local);
    let file = records::cache_file(dir, root);
    let on_disk = local
        .then(|| open_sqlite(&file, JournalMode::Wal))
        .and_then(Result::ok)
        .filter(|c| records::create_cache_tables(c).is_ok());
    if let Some(conn) = on_disk {
        return Ok(conn);
    }
    let db = |source| RunError::Db {
        path: root.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_in_memory().map_err(db)?;
    crate::schema::upgrade(&mut conn).map_err(RunError::Command)?;
    records::create_cache_tables(&conn).map_err(db)?;
    Ok(conn)
}

impl Registry {
    /// Open (creating, or upgrading the schema of) the registry at `path`, with the journal
    /// mode its filesystem supports (SHOAL_REGISTRY_JOURNAL overrides it).
    pub fn open(path: &Path) -> Result<Registry> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| shoal_core::CoreError::io(&dir, e))?;
        let fs = netfs::kind_of(&dir).map_err(|e| shoal_core::CoreError::io(&dir, e))?;
        let requested = std::env::var(netfs::JOURNAL_ENV).ok();
        Registry::open_on(path, fs, requested.as_deref())
    }

    /// `open` for a filesystem kind given by the caller (tests inject a network filesystem).
    pub fn open_on(path: &Path, fs: FsKind, requested: Option<&str>) -> Result<Registry> {
        Registry::open_with_cache(path, fs, requested, &records::default_cache_dir())
    }

    /// `open_on` with the node-local directory that holds a record store's cache (tests give
    /// each simulated node its own).
    pub fn open_with_cache(
        path: &Path,
        fs: FsKind,
        requested: Option<&str>,
        cache_dir: &Path,
    ) -> Result<Registry> {
        let store_dir = records_dir(path);
        let mut journal = netfs::choose(fs, requested)?;
        // Once made, a record store decides for every node, also for the one that serves the
        // filesystem and sees it as a local disk.
        if store_dir.is_dir() && requested.is_none_or(|r| r.trim().is_empty()) {
            journal = JournalMode::Records;
        }
        if journal == JournalMode::Records {
            if !store_dir.is_dir() && path.is_file() {
                records::import(path, &store_dir)?;
            }
            std::fs::create_dir_all(&store_dir)
                .map_err(|e| shoal_core::CoreError::io(&store_dir, e))?;
            return Ok(Registry {
                conn: open_cache(cache_dir, &store_dir)?,
                path: path.to_path_buf(),
                journal,
                fs,
                store: Some(Store::new(store_dir)),
                drives: RefCell::default(),
            });
        }
        Ok(Registry {
            conn: open_sqlite(path, journal)?,
            path: path.to_path_buf(),
            journal,
            fs,
            store: None,
            drives: RefCell::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal mode in use, and the filesystem that decided it.
    pub fn journal(&self) -> (JournalMode, FsKind) {
        (self.journal, self.fs)
    }

    fn db(&self, source: rusqlite::Error) -> RunError {
        RunError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// One IMMEDIATE transaction: takes the write lock up front, so the busy timeout applies
    /// (a deferred transaction upgrading to a writer can fail at once under WAL). On a record
    /// store the statements are also published as a record of run `run` before the cache
    /// commits them, so a failed publish leaves the cache as it was.
    fn write<T>(
        &self,
        run: Option<i64>,
        f: impl FnOnce(&Tx<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let w = Tx {
            tx: &tx,
            log: self.store.as_ref().map(|_| RefCell::default()),
        };
        let v = f(&w).map_err(|e| self.db(e))?;
        let mut on_top = 0;
        if let (Some(store), Some(id), Some(log)) = (&self.store, run, w.log) {
            let log = log.into_inner();
            if !log.is_empty() {
                on_top = store.commit(&tx, id, &log)?;
            }
        }
        tx.commit().map_err(|e| self.db(e))?;
        if let Some(id) = run.filter(|_| on_top >= records::COMPACT_AFTER) {
            self.compact(id)?;
        }
        Ok(v)
    }

    /// On a record store, fold the records of a run this registry drives into one base.
    fn compact(&self, id: i64) -> Result<()> {
        let Some(store) = self
            .store
            .as_ref()
            .filter(|_| self.drives.borrow().contains(&id))
        else {
            return Ok(());
        };
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        store.compact(&tx, id)?;
        tx.commit().map_err(|e| self.db(e))
    }

    /// On a record store, bring the cache up to date with run `id` (every run when None)
    /// before a read.
    fn refresh(&self, id: Option<i64>) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        store.refresh(&tx, id)?;
        tx.commit().map_err(|e| self.db(e))
    }

    /// Register a run and its tasks (all pending). Task `i` writes to `RUN_DIR/i`, where
    /// RUN_DIR is `results_dir/NAME-ID`.
    pub fn create_run(&self, new: &NewRun, combos: &[Combination]) -> Result<RunRow> {
        check_name(&new.name)?;
        for t in &new.tags {
            check_tag(t)?;
        }
        // A record store hands out ids itself (SQLite's AUTOINCREMENT is per node there).
        let given = self.store.as_ref().map(Store::allocate).transpose()?;
        let id = self.write(given, |tx| {
            tx.execute(
                "INSERT INTO runs (name, command, params, backend, template, options, cwd, run_dir, \
                 config_path, git_commit, git_dirty, created, status, experiment, overrides, \
                 datasets, note, id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, '', ?8, ?9, ?10, ?11, 'pending', ?12, ?13, \
                 ?14, ?15, ?16)",
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
                    new.experiment,
                    new.overrides.to_string(),
                    new.datasets.to_string(),
                    new.note,
                    given,
                ],
            )?;
            let id = tx.last_insert_rowid();
            for tag in &new.tags {
                tx.execute(
                    "INSERT OR IGNORE INTO run_tags (run_id, tag) VALUES (?1, ?2)",
                    params![id, tag],
                )?;
            }
            let run_dir = new.results_dir.join(format!("{}-{id}", new.name));
            tx.execute(
                "UPDATE runs SET run_dir = ?1 WHERE id = ?2",
                params![run_dir.display().to_string(), id],
            )?;
            let insert = "INSERT INTO tasks (run_id, idx, params, argv, out_dir, state) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending')";
            for (i, combo) in combos.iter().enumerate() {
                let out = run_dir.join(i.to_string());
                let mut vars = combo.clone();
                vars.push(("out".into(), out.display().to_string()));
                vars.push(("task".into(), i.to_string()));
                vars.push(("run".into(), id.to_string()));
                vars.push(("name".into(), new.name.clone()));
                vars.extend(dataset_vars(&new.datasets));
                let argv = render(&new.command, &vars);
                tx.execute(
                    insert,
                    params![
                    id,
                    i as i64,
                    serde_json::to_string(combo).unwrap_or_default(),
                    serde_json::to_string(&argv).unwrap_or_default(),
                    out.display().to_string(),
                ],
                )?;
            }
            Ok(id)
        })?;
        self.get(id)
    }

    pub fn get(&self, id: i64) -> Result<RunRow> {
        self.refresh(Some(id))?;
        let mut run = self
            .conn
            .query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
                [id],
                run_from,
            )
            .optional()
            .map_err(|e| self.db(e))?
            .ok_or_else(|| RunError::NoSuchRun(id.to_string()))?;
        run.tags = self.tags(id)?;
        Ok(run)
    }

    /// A run's tags, sorted.
    pub fn tags(&self, id: i64) -> Result<Vec<String>> {
        self.refresh(Some(id))?;
        (|| {
            let mut stmt = self
                .conn
                .prepare("SELECT tag FROM run_tags WHERE run_id = ?1 ORDER BY tag")?;
            let rows = stmt.query_map([id], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
        })()
        .map_err(|e| self.db(e))
    }

    /// Add tags to a run (existing ones are kept); returns how many were new.
    pub fn add_tags(&self, id: i64, tags: &[String]) -> Result<usize> {
        for t in tags {
            check_tag(t)?;
        }
        self.get(id)?;
        self.write(Some(id), |tx| {
            let mut n = 0;
            for t in tags {
                n += tx.execute(
                    "INSERT OR IGNORE INTO run_tags (run_id, tag) VALUES (?1, ?2)",
                    params![id, t],
                )?;
            }
            Ok(n)
        })
    }

    /// Remove tags from a run; returns how many it had.
    pub fn remove_tags(&self, id: i64, tags: &[String]) -> Result<usize> {
        self.write(Some(id), |tx| {
            let mut n = 0;
            for t in tags {
                n += tx.execute(
                    "DELETE FROM run_tags WHERE run_id = ?1 AND tag = ?2",
                    params![id, t],
                )?;
            }
            Ok(n)
        })
    }

    /// Set (or with None clear) a run's note.
    pub fn set_note(&self, id: i64, note: Option<&str>) -> Result<()> {
        self.get(id)?;
        self.write(Some(id), |tx| {
            tx.execute("UPDATE runs SET note = ?2 WHERE id = ?1", params![id, note])
        })?;
        Ok(())
    }

    /// A run by id (all digits) or by name (the most recent run of that name).
    pub fn resolve(&self, key: &str) -> Result<RunRow> {
        if let Ok(id) = key.parse::<i64>() {
            return self.get(id);
        }
        self.refresh(None)?;
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE name = ?1 ORDER BY id DESC LIMIT 1"),
                [key],
                run_from,
            )
            .optional()
            .map_err(|e| self.db(e))?
            .map(|mut r| {
                r.tags = self.tags(r.id).unwrap_or_default();
                r
            })
            .ok_or_else(|| RunError::NoSuchRun(key.to_string()))
    }

    /// Every run with its task counts, oldest first.
    pub fn list(&self) -> Result<Vec<(RunRow, Counts)>> {
        self.list_filtered(&RunFilter::default())
    }

    /// The runs `filter` selects, with their task counts, oldest first.
    pub fn list_filtered(&self, filter: &RunFilter) -> Result<Vec<(RunRow, Counts)>> {
        self.refresh(None)?;
        let mut sql = format!("SELECT {RUN_COLS} FROM runs WHERE 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(n) = &filter.name {
            arg(&mut sql, " AND name GLOB ?", n.clone().into());
        }
        if let Some(e) = &filter.experiment {
            arg(&mut sql, " AND experiment = ?", e.clone().into());
        }
        if let Some(t) = filter.since {
            arg(&mut sql, " AND created >= ?", t.into());
        }
        if let Some(t) = filter.until {
            arg(&mut sql, " AND created < ?", t.into());
        }
        for t in &filter.tags {
            arg(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM run_tags WHERE run_tags.run_id = runs.id AND tag = ?)",
                t.clone().into(),
            );
        }
        sql.push_str(" ORDER BY id");
        let mut runs: Vec<RunRow> = (|| {
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), run_from)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(|e| self.db(e))?;
        if !filter.status.is_empty() {
            runs.retain(|r| filter.status.iter().any(|s| s == r.display_status()));
        }
        let mut tags: HashMap<i64, Vec<String>> = HashMap::new();
        (|| {
            let mut stmt = self
                .conn
                .prepare("SELECT run_id, tag FROM run_tags ORDER BY tag")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                tags.entry(r.get(0)?).or_default().push(r.get(1)?);
            }
            Ok(())
        })()
        .map_err(|e| self.db(e))?;
        for r in &mut runs {
            r.tags = tags.remove(&r.id).unwrap_or_default();
        }
        let mut counts: HashMap<i64, Counts> = Default::default();
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
        self.refresh(Some(id))?;
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
        self.refresh(Some(id))?;
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
        self.refresh(Some(id))?;
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
        self.refresh(Some(id))?;
        (|| {
            let mut stmt = self.conn.prepare(
                "SELECT idx, attempt, state, exit_code, duration, started, ended, host, worker, \
                 session, launch FROM attempts WHERE run_id = ?1 AND idx = ?2 ORDER BY attempt",
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
                    launch: r.get(10)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(|e| self.db(e))
    }

    /// Record a new launch of the run (numbered from 1) and make its options the run's
    /// current ones. The driver started next belongs to it.
    pub fn begin_launch(&self, id: i64, l: &NewLaunch) -> Result<i64> {
        self.write(Some(id), |tx| {
            // The number is taken in SQL, not passed in, so a replayed record numbers it
            // after the launches before it in every reader's order.
            tx.execute(
                "INSERT INTO launches (run_id, n, kind, started, git_commit, git_dirty, template, \
                 options, options_from, tasks, detached) \
                 SELECT ?1, COALESCE(MAX(n), 0) + 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 \
                 FROM launches WHERE run_id = ?1",
                params![
                    id,
                    Option::<i64>::None,
                    l.kind,
                    now_secs(),
                    l.git.as_ref().map(|g| g.0.clone()),
                    l.git.as_ref().map(|g| g.1 as i64),
                    l.template,
                    l.options.to_string(),
                    l.options_from,
                    l.tasks as i64,
                    l.detached as i64,
                ],
            )?;
            tx.execute(
                "UPDATE runs SET template = ?2, options = ?3, overrides = ?4 WHERE id = ?1",
                params![
                    id,
                    l.template,
                    l.options.to_string(),
                    l.overrides.to_string()
                ],
            )?;
            tx.query_row(
                "SELECT MAX(n) FROM launches WHERE run_id = ?1",
                params![id],
                |r| r.get(0),
            )
        })
    }

    /// Every launch of a run, oldest first.
    pub fn launches(&self, id: i64) -> Result<Vec<LaunchRow>> {
        self.refresh(Some(id))?;
        (|| {
            let mut stmt = self.conn.prepare(&format!(
                "SELECT {LAUNCH_COLS} FROM launches WHERE run_id = ?1 ORDER BY n"
            ))?;
            let rows = stmt.query_map([id], launch_from)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })()
        .map_err(|e| self.db(e))
    }

    /// The work dir of one of the run's sessions, as its launch recorded it.
    pub fn session_path(&self, id: i64, session: &str) -> Result<Option<String>> {
        self.refresh(Some(id))?;
        self.conn
            .query_row(
                "SELECT session_path FROM launches WHERE run_id = ?1 AND session = ?2 \
                 ORDER BY n DESC LIMIT 1",
                params![id, session],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.db(e))
    }

    /// The driver took the run: record its pid and host, mark the run running.
    pub fn start_driver(&self, id: i64, pid: u32, host: &str) -> Result<()> {
        self.drives.borrow_mut().insert(id);
        self.write(Some(id), |tx| {
            tx.execute(
                "UPDATE runs SET status = 'running', driver_pid = ?2, driver_host = ?3, \
                 started = COALESCE(started, ?4), ended = NULL, message = NULL WHERE id = ?1",
                params![id, pid as i64, host, now_secs()],
            )?;
            tx.execute(
                &format!(
                    "UPDATE launches SET driver_pid = ?2, driver_host = ?3 \
                     WHERE run_id = ?1 AND n = {CURRENT_LAUNCH}"
                ),
                params![id, pid as i64, host],
            )
        })?;
        Ok(())
    }

    pub fn set_session(&self, id: i64, session: &str, path: &str) -> Result<()> {
        self.write(Some(id), |tx| {
            tx.execute(
                "UPDATE runs SET session = ?2, session_path = ?3 WHERE id = ?1",
                params![id, session, path],
            )?;
            tx.execute(
                &format!(
                    "UPDATE launches SET session = ?2, session_path = ?3 \
                     WHERE run_id = ?1 AND n = {CURRENT_LAUNCH}"
                ),
                params![id, session, path],
            )
        })?;
        Ok(())
    }

    /// Tasks a worker has started (pending -> running), in the run's current launch.
    pub fn mark_running(&self, id: i64, idxs: &[i64]) -> Result<usize> {
        self.write(Some(id), |tx| {
            let sql = format!(
                "UPDATE tasks SET state = 'running', launch = {CURRENT_LAUNCH} \
                 WHERE run_id = ?1 AND idx = ?2 AND state = 'pending'"
            );
            let mut n = 0;
            for i in idxs {
                n += tx.execute(&sql, params![id, *i])?;
            }
            Ok(n)
        })
    }

    /// Record task ends in one transaction. An outcome of an older attempt than the task's
    /// current one is ignored, so a late or harvested result never overwrites a rerun.
    pub fn record(&self, id: i64, outcomes: &[Outcome]) -> Result<usize> {
        self.write(Some(id), |tx| {
            let sql = format!(
                "UPDATE tasks SET state = ?3, exit_code = ?4, duration = ?5, started = ?6, \
                 ended = ?7, host = ?8, worker = ?9, session = ?10, \
                 launch = COALESCE(?12, {CURRENT_LAUNCH}) \
                 WHERE run_id = ?1 AND idx = ?2 AND attempt = ?11"
            );
            let mut n = 0;
            for o in outcomes {
                n += tx.execute(
                    &sql,
                    params![
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
                        o.attempt,
                        o.launch,
                    ],
                )?;
            }
            Ok(n)
        })
    }

    /// Move tasks in `from` states to `to` (no new attempt): e.g. running -> pending after an
    /// interruption, pending/running -> cancelled on cancel.
    pub fn set_states(&self, id: i64, from: &[&str], to: &str) -> Result<usize> {
        self.write(Some(id), |tx| {
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
        self.write(Some(id), |tx| {
            let mut n = 0;
            for f in from {
                tx.execute(
                    "INSERT OR REPLACE INTO attempts (run_id, idx, attempt, state, exit_code, \
                     duration, started, ended, host, worker, session, launch) \
                     SELECT run_id, idx, attempt, state, exit_code, duration, started, ended, \
                     host, worker, session, launch FROM tasks WHERE run_id = ?1 AND state = ?2",
                    params![id, f],
                )?;
                n += tx.execute(
                    "UPDATE tasks SET state = 'pending', attempt = attempt + 1, exit_code = NULL, \
                     duration = NULL, started = NULL, ended = NULL, host = NULL, worker = NULL, \
                     session = NULL, launch = NULL WHERE run_id = ?1 AND state = ?2",
                    params![id, f],
                )?;
            }
            Ok(n)
        })
    }

    /// Set the run's status (and its current launch's); `ended` is stamped for every status
    /// but pending/running.
    pub fn set_status(&self, id: i64, status: &str, message: Option<&str>) -> Result<()> {
        let ended = (!matches!(status, "pending" | "running")).then(now_secs);
        self.write(Some(id), |tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, message = COALESCE(?3, message), ended = ?4 \
                 WHERE id = ?1",
                params![id, status, message, ended],
            )?;
            tx.execute(
                &format!(
                    "UPDATE launches SET status = ?2, ended = ?3 \
                     WHERE run_id = ?1 AND n = {CURRENT_LAUNCH}"
                ),
                params![id, status, ended],
            )
        })?;
        if ended.is_some() {
            // The driver is done with the run: leave one file for readers to start from.
            self.compact(id)?;
        }
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
        self.write(Some(id), |tx| {
            tx.execute("DELETE FROM attempts WHERE run_id = ?1", params![id])?;
            tx.execute("DELETE FROM tasks WHERE run_id = ?1", params![id])?;
            tx.execute("DELETE FROM launches WHERE run_id = ?1", params![id])?;
            tx.execute("DELETE FROM run_tags WHERE run_id = ?1", params![id])?;
            tx.execute("DELETE FROM runs WHERE id = ?1", params![id])
        })?;
        Ok(())
    }
}

/// Placeholder values of recorded datasets: (`dataset:NAME`, path).
pub fn dataset_vars(datasets: &Json) -> Vec<(String, String)> {
    datasets
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some((
                format!("{}{}", crate::params::DATASET_PREFIX, d["name"].as_str()?),
                d["path"].as_str()?.to_string(),
            ))
        })
        .collect()
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
            experiment: None,
            overrides: serde_json::json!({}),
            datasets: serde_json::json!([]),
            note: None,
            tags: vec![],
        }
    }

    /// A registry in `t` as a local SQLite database, or as a record store seen from node
    /// `node` (each node has its own cache).
    fn open_as(t: &Path, records: Option<&str>) -> Registry {
        let path = t.join("runs.db");
        match records {
            None => Registry::open_on(&path, FsKind::Local, None).unwrap(),
            Some(node) => {
                let nfs = FsKind::Network("NFS");
                Registry::open_with_cache(&path, nfs, None, &t.join("cache").join(node)).unwrap()
            }
        }
    }

    #[test]
    fn create_record_rerun() {
        for records in [None, Some("n1")] {
            let t = tempfile::tempdir().unwrap();
            create_record_rerun_on(t.path(), open_as(t.path(), records));
        }
    }

    fn create_record_rerun_on(t: &Path, reg: Registry) {
        let grid = Grid::parse(&["lr=1,2".into()], &[], &[]).unwrap();
        let run = reg.create_run(&new_run(t, "iris"), &grid.expand()).unwrap();
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

    #[test]
    fn a_registry_of_shoal_0_1_upgrades_in_place() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("runs.db");
        {
            // What shoal 0.1 wrote: the unversioned schema in WAL mode, a finished run.
            let c = Connection::open(&path).unwrap();
            c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                .unwrap();
            c.execute_batch(crate::schema::V1).unwrap();
            c.execute_batch(
                "INSERT INTO runs (id, name, command, params, backend, template, options, cwd, \
                 run_dir, git_commit, git_dirty, created, started, ended, status, session, \
                 session_path) VALUES (1, 'old', '[\"true\"]', '{}', 'local', NULL, \
                 '{\"workers\":2}', '/p', '/p/results/old-1', 'c0ffee', 0, 10.0, 11.0, 12.0, \
                 'failed', 'S1', '/s/S1');
                 INSERT INTO tasks (run_id, idx, params, argv, out_dir, state, exit_code, \
                 session) VALUES (1, 0, '[]', '[\"true\"]', '/p/results/old-1/0', 'failed', 3, \
                 'S1');",
            )
            .unwrap();
            let v: i64 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(v, 0);
        }
        let reg = Registry::open(&path).unwrap();
        let run = reg.get(1).unwrap();
        assert_eq!((run.name.as_str(), run.status.as_str()), ("old", "failed"));
        assert_eq!(run.overrides, serde_json::json!({}));
        assert_eq!(run.launch, 1);
        let l = &reg.launches(1).unwrap()[0];
        assert_eq!(l.git_commit.as_deref(), Some("c0ffee"));
        assert_eq!(l.options["workers"], 2);
        assert_eq!(l.tasks, 1);
        assert_eq!(reg.session_path(1, "S1").unwrap().as_deref(), Some("/s/S1"));
        assert_eq!(reg.task(1, 0).unwrap().unwrap().exit_code, Some(3));
        // The upgraded registry takes the new features, and opening it again is a no-op.
        reg.add_tags(1, &["baseline".into()]).unwrap();
        reg.new_attempt(1, &["failed"]).unwrap();
        drop(reg);
        let reg = Registry::open(&path).unwrap();
        assert_eq!(reg.get(1).unwrap().tags, ["baseline"]);
        let v: usize = reg
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, crate::schema::LATEST);
    }

    fn done(n: i64) -> Vec<Outcome> {
        (0..n)
            .map(|i| Outcome {
                idx: i,
                attempt: 1,
                state: "done".into(),
                ..Default::default()
            })
            .collect()
    }

    /// The runs as (name, status, done tasks), for comparing what two nodes see.
    fn view(reg: &Registry) -> Vec<(i64, String, String, u64, Vec<String>)> {
        reg.list()
            .unwrap()
            .into_iter()
            .map(|(r, c)| (r.id, r.name, r.status, c.done, r.tags))
            .collect()
    }

    #[test]
    fn a_network_filesystem_gets_a_record_store() {
        let t = tempfile::tempdir().unwrap();
        let reg = open_as(t.path(), Some("n1"));
        assert_eq!(
            reg.journal(),
            (JournalMode::Records, FsKind::Network("NFS"))
        );
        let run = reg.create_run(&new_run(t.path(), "a"), &[vec![]]).unwrap();
        // Nothing of SQLite on the shared filesystem: a directory per run, a record per write.
        assert!(!t.path().join("runs.db").exists());
        let recs = std::fs::read_dir(t.path().join("runs.d").join(run.id.to_string()))
            .unwrap()
            .count();
        assert_eq!(recs, 1);
        // Once there, the store is used also from a host that sees the disk as local.
        let here = Registry::open_with_cache(
            &t.path().join("runs.db"),
            FsKind::Local,
            None,
            &t.path().join("cache/server"),
        )
        .unwrap();
        assert_eq!(here.journal().0, JournalMode::Records);
        assert_eq!(here.get(run.id).unwrap().name, "a");
        // SQLite is refused there; `records` may be asked for anywhere.
        let nfs = FsKind::Network("NFS");
        assert!(Registry::open_on(&t.path().join("x.db"), nfs, Some("delete")).is_err());
        let u = tempfile::tempdir().unwrap();
        let forced = Registry::open_with_cache(
            &u.path().join("runs.db"),
            FsKind::Local,
            Some("records"),
            &u.path().join("c"),
        )
        .unwrap();
        assert_eq!(forced.journal().0, JournalMode::Records);
    }

    #[test]
    fn a_registry_left_on_a_network_filesystem_is_imported() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("runs.db");
        {
            // What an older shoal wrote on NFS: a DELETE-mode SQLite registry with two runs.
            let old = Registry::open_on(&path, FsKind::Local, Some("delete")).unwrap();
            let a = old
                .create_run(&new_run(t.path(), "a"), &[vec![], vec![]])
                .unwrap();
            old.create_run(&new_run(t.path(), "b"), &[vec![]]).unwrap();
            old.record(a.id, &done(2)).unwrap();
            old.add_tags(a.id, &["kept".into()]).unwrap();
            old.delete(2).unwrap();
            old.create_run(&new_run(t.path(), "c"), &[vec![]]).unwrap();
        }
        let reg = open_as(t.path(), Some("n1"));
        assert_eq!(reg.journal().0, JournalMode::Records);
        let runs = view(&reg);
        assert_eq!(
            runs,
            [
                (1, "a".into(), "pending".into(), 2, vec!["kept".into()]),
                (3, "c".into(), "pending".into(), 0, vec![]),
            ]
        );
        assert!(!path.exists() && t.path().join("runs.db.imported").is_file());
        // Ids go on from the imported ones.
        let d = reg.create_run(&new_run(t.path(), "d"), &[vec![]]).unwrap();
        assert_eq!(d.id, 4);
        assert_eq!(view(&open_as(t.path(), Some("n2"))).len(), 3);
    }

    #[test]
    fn a_record_of_a_newer_shoal_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let reg = open_as(t.path(), Some("n1"));
        let run = reg.create_run(&new_run(t.path(), "a"), &[vec![]]).unwrap();
        let newer = serde_json::json!({
            "format": 1, "schema": crate::schema::LATEST + 1, "run": run.id,
            "stamp": 9_000_000_000_000_000_i64, "writer": "future-1-0", "stmts": []
        });
        let dir = t.path().join("runs.d").join(run.id.to_string());
        std::fs::write(
            dir.join("09000000000000000000-future-1-0.json"),
            newer.to_string(),
        )
        .unwrap();
        let e = open_as(t.path(), Some("n2"))
            .list()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("newer than this shoal's") && e.contains("hint:"),
            "{e}"
        );
    }

    #[test]
    fn nodes_writing_at_once_agree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        // Three "nodes" (each its own cache), each running drivers that write and list.
        let handles: Vec<_> = (0..3)
            .map(|k| {
                let root = root.clone();
                std::thread::spawn(move || {
                    let reg = open_as(&root, Some(&format!("node{k}")));
                    for j in 0..6 {
                        let combos: Vec<Combination> = (0..10).map(|_| vec![]).collect();
                        let run = reg
                            .create_run(&new_run(&root, &format!("n{k}")), &combos)
                            .unwrap();
                        reg.begin_launch(
                            run.id,
                            &NewLaunch {
                                kind: "run".into(),
                                git: None,
                                template: None,
                                options: serde_json::json!({}),
                                options_from: "none".into(),
                                overrides: serde_json::json!({}),
                                tasks: 10,
                                detached: false,
                            },
                        )
                        .unwrap();
                        reg.start_driver(run.id, 1, "elsewhere").unwrap();
                        reg.mark_running(run.id, &(0..10).collect::<Vec<_>>())
                            .unwrap();
                        reg.record(run.id, &done(10)).unwrap();
                        if j % 2 == 0 {
                            reg.add_tags(run.id, &[format!("by{k}")]).unwrap();
                        }
                        assert_eq!(reg.settle(run.id).unwrap(), "done");
                        reg.list().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let a = view(&open_as(&root, Some("fresh")));
        assert_eq!(a.len(), 18);
        let ids: std::collections::BTreeSet<i64> = a.iter().map(|r| r.0).collect();
        assert_eq!(ids, (1..=18).collect());
        assert!(a.iter().all(|r| r.2 == "done" && r.3 == 10), "{a:?}");
        assert_eq!(a.iter().filter(|r| !r.4.is_empty()).count(), 9);
        // Every node's cache, refreshed, holds the same registry.
        for k in 0..3 {
            assert_eq!(view(&open_as(&root, Some(&format!("node{k}")))), a);
        }
    }

    #[test]
    fn a_late_record_is_put_in_its_place() {
        let t = tempfile::tempdir().unwrap();
        let a = open_as(t.path(), Some("a"));
        let run = a.create_run(&new_run(t.path(), "x"), &[vec![]]).unwrap();
        let b = open_as(t.path(), Some("b"));
        b.get(run.id).unwrap();
        // b writes a note; a, later, another. b's record reaches the others only after a's
        // (a slow listing): every node still ends with a's note, the later one.
        b.set_note(run.id, Some("from b")).unwrap();
        let dir = t.path().join("runs.d").join(run.id.to_string());
        let writer = b.store.as_ref().unwrap().writer.clone();
        let hidden = t.path().join("hidden");
        std::fs::create_dir(&hidden).unwrap();
        let mut moved = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.to_string_lossy().contains(&writer) {
                let to = hidden.join(p.file_name().unwrap());
                std::fs::rename(&p, &to).unwrap();
                moved.push((to, p));
            }
        }
        assert_eq!(moved.len(), 1);
        a.set_note(run.id, Some("from a")).unwrap();
        assert_eq!(a.get(run.id).unwrap().note.as_deref(), Some("from a"));
        for (from, to) in moved {
            std::fs::rename(from, to).unwrap();
        }
        let fresh = open_as(t.path(), Some("c"));
        for reg in [&a, &b, &fresh] {
            assert_eq!(reg.get(run.id).unwrap().note.as_deref(), Some("from a"));
        }
    }

    #[test]
    fn a_driver_folds_its_records_into_a_base() {
        let t = tempfile::tempdir().unwrap();
        let files = |id: i64| -> Vec<String> {
            let dir = t.path().join("runs.d").join(id.to_string());
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        let driver = open_as(t.path(), Some("login"));
        let run = driver
            .create_run(&new_run(t.path(), "big"), &[vec![], vec![], vec![]])
            .unwrap();
        driver.start_driver(run.id, 1, "login").unwrap();
        let other = open_as(t.path(), Some("n1"));
        other.add_tags(run.id, &["seen".into()]).unwrap();
        for k in 0..records::COMPACT_AFTER {
            driver.set_session(run.id, &format!("S{k}"), "/s").unwrap();
        }
        // One base (which took in the other node's tag), and what came after it.
        let now = files(run.id);
        assert_eq!(
            now.iter().filter(|f| f.ends_with(".base.json")).count(),
            1,
            "{now:?}"
        );
        assert!(now.len() < 4, "{now:?}");
        other.set_note(run.id, Some("on top")).unwrap();
        let cold = open_as(t.path(), Some("n2"));
        let r = cold.get(run.id).unwrap();
        assert_eq!(
            (r.tags.clone(), r.note.as_deref()),
            (vec!["seen".to_string()], Some("on top"))
        );
        assert_eq!(
            r.session.as_deref(),
            Some(format!("S{}", records::COMPACT_AFTER - 1).as_str())
        );
        assert_eq!(cold.tasks(run.id, None).unwrap().len(), 3);
        // The driver's end leaves a single file, and every node agrees on it.
        driver.record(run.id, &done(3)).unwrap();
        assert_eq!(driver.settle(run.id).unwrap(), "done");
        let end = files(run.id);
        assert_eq!(end.len(), 1, "{end:?}");
        assert!(end[0].ends_with(".base.json"));
        let want = view(&open_as(t.path(), Some("n3")));
        assert_eq!(want[0].2, "done");
        assert_eq!(want[0].3, 3);
        for reg in [&driver, &other, &cold] {
            assert_eq!(view(reg), want);
            assert_eq!(reg.get(run.id).unwrap().note.as_deref(), Some("on top"));
        }
    }

    #[test]
    fn a_reader_that_missed_a_base_ends_with_the_run_as_the_driver_left_it() {
        // The killed-driver-then-resume case of tests/test_runs_clusters.py: a node cached the
        // run's first records; the driver folded them into a base, then folded that base and
        // its later records (the run's end) into another. The node sees only the second base:
        // the first records must not be replayed on top of it (they said "running").
        let t = tempfile::tempdir().unwrap();
        let driver = open_as(t.path(), Some("login"));
        let run = driver
            .create_run(&new_run(t.path(), "resumed"), &[vec![], vec![]])
            .unwrap();
        driver.start_driver(run.id, 1, "login").unwrap();
        let node = open_as(t.path(), Some("n1"));
        assert_eq!(node.get(run.id).unwrap().status, "running");
        for k in 0..records::COMPACT_AFTER {
            driver.set_session(run.id, &format!("S{k}"), "/s").unwrap();
        }
        driver.record(run.id, &done(2)).unwrap();
        assert_eq!(driver.settle(run.id).unwrap(), "done");
        let fresh = view(&open_as(t.path(), Some("n2")));
        assert_eq!((fresh[0].2.as_str(), fresh[0].3), ("done", 2));
        assert_eq!(view(&node), fresh);
        assert_eq!(view(&driver), fresh);
    }

    #[test]
    fn a_base_left_by_a_driver_killed_while_compacting_still_covers_its_records() {
        // Killed between publishing a base and removing the records it folded in: the next
        // base (the resumed run's) must cover those leftovers too, or a reader that meets them
        // beside it replays them on top.
        let t = tempfile::tempdir().unwrap();
        let driver = open_as(t.path(), Some("login"));
        let run = driver
            .create_run(&new_run(t.path(), "killed"), &[vec![]])
            .unwrap();
        driver.start_driver(run.id, 1, "login").unwrap();
        let dir = t.path().join("runs.d").join(run.id.to_string());
        let before: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let kept = t.path().join("kept");
        std::fs::create_dir(&kept).unwrap();
        for p in &before {
            std::fs::copy(p, kept.join(p.file_name().unwrap())).unwrap();
        }
        for k in 0..records::COMPACT_AFTER {
            driver.set_session(run.id, &format!("S{k}"), "/s").unwrap();
        }
        // Put back what the compaction removed, as if it had been killed before removing.
        for p in &before {
            std::fs::copy(kept.join(p.file_name().unwrap()), p).unwrap();
        }
        let resumed = open_as(t.path(), Some("login2"));
        resumed.start_driver(run.id, 2, "login").unwrap();
        resumed.record(run.id, &done(1)).unwrap();
        assert_eq!(resumed.settle(run.id).unwrap(), "done");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the last base is left");
        let fresh = view(&open_as(t.path(), Some("n2")));
        assert_eq!((fresh[0].2.as_str(), fresh[0].3), ("done", 1));
    }

    #[test]
    fn a_killed_writer_leaves_nothing_half_written() {
        let t = tempfile::tempdir().unwrap();
        let reg = open_as(t.path(), Some("n1"));
        let run = reg.create_run(&new_run(t.path(), "a"), &[vec![]]).unwrap();
        let dir = t.path().join("runs.d");
        // What a writer killed mid-write leaves: a temp file not yet renamed, and a run id
        // claimed (mkdir) whose first record was never published. A stray file is no record.
        std::fs::write(dir.join("1").join(".rec-XYZ"), "{\"format\": 1, \"sta").unwrap();
        std::fs::write(dir.join("1").join("junk.json"), "not json").unwrap();
        std::fs::create_dir(dir.join("2")).unwrap();
        let other = open_as(t.path(), Some("n2"));
        let listed = view(&other);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].1, "a");
        // The next run gets a fresh id; the claimed one is never reused.
        let next = other
            .create_run(&new_run(t.path(), "b"), &[vec![]])
            .unwrap();
        assert_eq!(next.id, 3);
        reg.delete(run.id).unwrap();
        assert_eq!(view(&other).iter().map(|r| r.0).collect::<Vec<_>>(), [3]);
        assert!(matches!(other.get(run.id), Err(RunError::NoSuchRun(_))));
        // A run directory removed by hand leaves the caches too.
        std::fs::remove_dir_all(dir.join("3")).unwrap();
        assert!(view(&other).is_empty());
    }

    #[test]
    fn launches_tags_notes_and_filters() {
        for records in [None, Some("n1")] {
            let t = tempfile::tempdir().unwrap();
            launches_tags_notes_and_filters_on(t.path(), open_as(t.path(), records));
        }
    }

    fn launches_tags_notes_and_filters_on(t: &Path, reg: Registry) {
        let mut new = new_run(t, "iris");
        new.tags = vec!["baseline".into()];
        new.experiment = Some("iris".into());
        let a = reg.create_run(&new, &[vec![], vec![]]).unwrap();
        let b = reg.create_run(&new_run(t, "mnist"), &[vec![]]).unwrap();
        assert_eq!(a.launch, 0);
        let launch = |kind: &str, commit: &str| NewLaunch {
            kind: kind.into(),
            git: Some((commit.into(), false)),
            template: Some("big".into()),
            options: serde_json::json!({"cpus": 2}),
            options_from: "template big".into(),
            overrides: serde_json::json!({}),
            tasks: 2,
            detached: false,
        };
        assert_eq!(reg.begin_launch(a.id, &launch("run", "c1")).unwrap(), 1);
        reg.start_driver(a.id, 7, "h").unwrap();
        reg.set_session(a.id, "S1", "/s/S1").unwrap();
        reg.mark_running(a.id, &[0, 1]).unwrap();
        let fail = |idx| Outcome {
            idx,
            attempt: 1,
            state: "failed".into(),
            ..Default::default()
        };
        reg.record(a.id, &[fail(0), fail(1)]).unwrap();
        reg.settle(a.id).unwrap();
        reg.new_attempt(a.id, &["failed"]).unwrap();
        assert_eq!(reg.begin_launch(a.id, &launch("rerun", "c2")).unwrap(), 2);
        reg.set_session(a.id, "S2", "/s/S2").unwrap();
        reg.mark_running(a.id, &[1]).unwrap();
        let ls = reg.launches(a.id).unwrap();
        assert_eq!(
            ls.iter()
                .map(|l| (
                    l.kind.as_str(),
                    l.git_commit.as_deref(),
                    l.status.as_deref()
                ))
                .collect::<Vec<_>>(),
            [
                ("run", Some("c1"), Some("failed")),
                ("rerun", Some("c2"), None)
            ]
        );
        // Each attempt knows its launch, and so its commit.
        assert_eq!(reg.attempts(a.id, 1).unwrap()[0].launch, Some(1));
        assert_eq!(reg.task(a.id, 1).unwrap().unwrap().launch, Some(2));
        assert_eq!(reg.task(a.id, 0).unwrap().unwrap().launch, None);
        assert_eq!(
            reg.session_path(a.id, "S1").unwrap().as_deref(),
            Some("/s/S1")
        );
        assert_eq!(reg.get(a.id).unwrap().options["cpus"], 2);

        reg.add_tags(b.id, &["x".into(), "baseline".into()])
            .unwrap();
        assert!(reg.add_tags(b.id, &["two words".into()]).is_err());
        reg.set_note(b.id, Some("lr too high")).unwrap();
        assert_eq!(reg.get(b.id).unwrap().note.as_deref(), Some("lr too high"));
        let names = |f: RunFilter| -> Vec<String> {
            reg.list_filtered(&f)
                .unwrap()
                .into_iter()
                .map(|(r, _)| r.name)
                .collect()
        };
        assert_eq!(names(RunFilter::default()), ["iris", "mnist"]);
        let tag = |t: &[&str]| RunFilter {
            tags: t.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(names(tag(&["baseline"])), ["iris", "mnist"]);
        assert_eq!(names(tag(&["baseline", "x"])), ["mnist"]);
        let f = RunFilter {
            name: Some("ir*".into()),
            ..Default::default()
        };
        assert_eq!(names(f), ["iris"]);
        let f = RunFilter {
            status: vec!["pending".into()],
            ..Default::default()
        };
        assert_eq!(names(f), ["mnist"]);
        let f = RunFilter {
            experiment: Some("iris".into()),
            since: Some(now_secs() - 60.0),
            ..Default::default()
        };
        assert_eq!(names(f), ["iris"]);
        let f = RunFilter {
            until: Some(now_secs() - 60.0),
            ..Default::default()
        };
        assert!(names(f).is_empty());
        reg.remove_tags(b.id, &["x".into()]).unwrap();
        assert_eq!(reg.get(b.id).unwrap().tags, ["baseline"]);
        reg.delete(a.id).unwrap();
        assert!(reg.launches(a.id).unwrap().is_empty());
    }
}
