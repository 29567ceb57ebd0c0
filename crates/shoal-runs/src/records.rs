//! The run registry's store on a network filesystem: immutable change records, one file per
//! write, merged by every reader into a node-local SQLite cache.
//!
//! Why not SQLite there: its locking is only as good as the client's caches. GlusterFS's
//! write-behind, io-cache and quick-read (all on by default) do not honour POSIX lock
//! boundaries, so two nodes writing one `runs.db` in DELETE journal mode corrupt it within
//! seconds. So nothing on the shared filesystem is ever modified in place:
//!
//! - `runs.d/ID/` is run ID's directory, allocated by an exclusive `mkdir` (the server decides
//!   who gets an id; a stale listing only costs a retry);
//! - every write is one record `runs.d/ID/STAMP-WRITER.json` holding the SQL statements it
//!   executed and their values, written under a random dot-name, fsynced (a full disk shows
//!   there, not later) and renamed into place. A new file is a new inode that no client has
//!   cached, so a reader sees all of it or nothing; a killed writer leaves only a dot-file;
//! - a reader lists the run directories it needs, reads the records it has not seen, and
//!   replays them in (stamp, writer) order into a cache on node-local disk (WAL, the same
//!   schema and queries as a local registry). Stamps are hybrid clocks (wall-clock
//!   microseconds, at least one past every stamp the writer has seen for that run), so a
//!   record made after another was seen sorts after it; concurrent writes from two nodes get
//!   one order that every reader agrees on. A record that arrives late with a smaller stamp
//!   makes that run's cache be rebuilt from all its records;
//! - a run's driver (only it, so two never race) folds the records into a base
//!   `STAMP-WRITER.base.json`: the run's rows, and the names of the records they include,
//!   which it then removes. A run is its newest base plus the records it does not name. A base
//!   names the previous base and whatever of that base's records is still there (a driver
//!   killed while compacting leaves them); a reader adopting a base drops the records it
//!   cached that are gone from the directory (folded into a base it may never have seen).
//!
//! A directory is listed again only when its mtime has changed, or until a listing has been
//! made 2 s after this mtime was first seen (entries created in the same timestamp tick); the
//! mtime is only ever compared with itself, never with a local clock.

use crate::error::{Result, RunError};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, ToSql};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::hash::{BuildHasher, Hasher};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The record format this shoal writes; a newer one is refused rather than misread.
const FORMAT: u32 = 1;

/// How long after first seeing a directory's mtime a listing must have been made before an
/// unchanged mtime is trusted to mean "no new records".
const SETTLE_SECS: f64 = 2.0;

/// The cache's own tables (beside the registry schema): the records replayed on top of each
/// run's base, the base, and when each run directory was last listed.
const CACHE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS record_ops (
    run_id INTEGER NOT NULL,
    stamp INTEGER NOT NULL,
    writer TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, stamp, writer)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS record_bases (
    run_id INTEGER PRIMARY KEY,
    stamp INTEGER NOT NULL,
    writer TEXT NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS record_dirs (
    run_id INTEGER PRIMARY KEY,
    mtime INTEGER NOT NULL,
    seen_since REAL NOT NULL,
    listed_at REAL NOT NULL
);
";

/// One SQL statement and the values of each time it was executed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Stmt {
    pub sql: String,
    pub rows: Vec<Vec<Json>>,
}

/// One record: a write's statements, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    format: u32,
    /// The registry schema version the statements were written against.
    schema: usize,
    run: i64,
    stamp: i64,
    writer: String,
    stmts: Vec<Stmt>,
    /// A base (the run's whole state) names the records it includes; readers skip those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    covers: Vec<String>,
}

/// The statements a write executes, collected as it runs them.
#[derive(Debug, Default)]
pub(crate) struct Log(Vec<Stmt>);

impl Log {
    pub fn push(&mut self, sql: &str, row: Vec<Json>) {
        match self.0.last_mut() {
            Some(s) if s.sql == sql => s.rows.push(row),
            _ => self.0.push(Stmt {
                sql: sql.to_string(),
                rows: vec![row],
            }),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An SQL value as JSON (the registry stores no blobs).
pub(crate) fn to_json(v: &Value) -> Json {
    match v {
        Value::Null | Value::Blob(_) => Json::Null,
        Value::Integer(i) => Json::from(*i),
        Value::Real(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::String(s.clone()),
    }
}

/// The SQL value a record's JSON holds: integers stay integers, `1.0` stays a real.
fn from_json(j: &Json) -> Value {
    match j {
        Json::Number(n) => n
            .as_i64()
            .map(Value::Integer)
            .unwrap_or_else(|| Value::Real(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => Value::Text(s.clone()),
        Json::Bool(b) => Value::Integer(*b as i64),
        _ => Value::Null,
    }
}

/// A parameter as the value it binds.
pub(crate) fn value_of(p: &dyn ToSql) -> rusqlite::Result<Value> {
    use rusqlite::types::ToSqlOutput;
    Ok(match p.to_sql()? {
        ToSqlOutput::Borrowed(v) => v.into(),
        ToSqlOutput::Owned(v) => v,
        _ => Value::Null,
    })
}

fn random_u64() -> u64 {
    // RandomState is seeded randomly per process: no crate needed for a name suffix.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn now_micros() -> i64 {
    (shoal_core::fsutil::now_secs() * 1e6) as i64
}

/// The shared record directory (`runs.d` beside `runs.db`) and this process's writer name.
pub(crate) struct Store {
    root: PathBuf,
    pub(crate) writer: String,
}

/// An io error of the record store, naming the path.
fn io(path: &Path, e: std::io::Error) -> RunError {
    shoal_core::CoreError::io(path, e).into()
}

/// Network filesystems answer ESTALE (and, with caching off, ENOENT) for a file another node
/// just renamed into place; a few short retries ride it out. A record still missing then was
/// folded into a base and removed.
fn read_retrying(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut wait = Duration::from_millis(5);
    for _ in 0..3 {
        match std::fs::read(path) {
            Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESTALE) => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            r => return r,
        }
    }
    std::fs::read(path)
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

impl Store {
    pub fn new(root: PathBuf) -> Store {
        let writer = format!(
            "{}-{}-{:08x}",
            shoal_core::fsutil::hostname(),
            std::process::id(),
            random_u64() as u32
        );
        Store { root, writer }
    }

    fn run_dir(&self, id: i64) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Run ids that have a directory, with each directory's mtime (ns).
    fn run_dirs(&self) -> Result<Vec<(i64, i64)>> {
        let rd = std::fs::read_dir(&self.root).map_err(|e| io(&self.root, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io(&self.root, e))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            match entry.metadata() {
                Ok(m) => out.push((id, mtime_ns(&m))),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(&entry.path(), e)),
            }
        }
        Ok(out)
    }

    /// A new run id: one past the largest seen, claimed by an exclusive mkdir.
    pub fn allocate(&self) -> Result<i64> {
        std::fs::create_dir_all(&self.root).map_err(|e| io(&self.root, e))?;
        let mut id = self.run_dirs()?.iter().map(|r| r.0).max().unwrap_or(0) + 1;
        loop {
            let dir = self.run_dir(id);
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(id),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => id += 1,
                Err(e) => return Err(io(&dir, e)),
            }
        }
    }

    /// Names of a run's published records.
    fn records(&self, id: i64) -> Result<Vec<String>> {
        let dir = self.run_dir(id);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, e)),
        };
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io(&dir, e))?;
            if let Some(n) = entry.file_name().to_str() {
                if !n.starts_with('.') && n.ends_with(".json") {
                    names.push(n.to_string());
                }
            }
        }
        Ok(names)
    }

    /// Write run `id`'s record of `stmts` (a base when it `covers` records); returns its name
    /// and body.
    fn publish(
        &self,
        id: i64,
        stamp: i64,
        stmts: Vec<Stmt>,
        covers: Vec<String>,
    ) -> Result<(String, String)> {
        let suffix = if covers.is_empty() {
            "json"
        } else {
            "base.json"
        };
        let rec = Record {
            format: FORMAT,
            schema: crate::schema::LATEST,
            run: id,
            stamp,
            writer: self.writer.clone(),
            stmts,
            covers,
        };
        let body = serde_json::to_string(&rec).expect("records serialise");
        let dir = self.run_dir(id);
        let name = format!("{stamp:020}-{}.{suffix}", self.writer);
        let mut tmp = tempfile::Builder::new()
            .prefix(".rec-")
            .tempfile_in(&dir)
            .map_err(|e| io(&dir, e))?;
        let path = tmp.path().to_path_buf();
        tmp.write_all(body.as_bytes()).map_err(|e| io(&path, e))?;
        // A full or over-quota volume may accept write() and fail only here (or at close).
        tmp.as_file().sync_all().map_err(|e| io(&path, e))?;
        tmp.persist(dir.join(&name))
            .map_err(|e| io(&dir.join(&name), e.error))?;
        Ok((name, body))
    }
}

/// Where this node keeps its cache of a record store: node-local (`$XDG_RUNTIME_DIR`, else
/// the temp dir), one file per store.
pub(crate) fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: getuid cannot fail.
    base.join(format!("shoal-{}", unsafe { libc::getuid() }))
}

/// The cache file for the store at `root` inside `dir`.
pub(crate) fn cache_file(dir: &Path, root: &Path) -> PathBuf {
    // FNV-1a: stable across processes and shoal versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in root.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    dir.join(format!("registry-{h:016x}.db"))
}

pub(crate) fn create_cache_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CACHE_TABLES)
}

/// A record's order: (stamp, writer), from its name `STAMP-WRITER.json` (or `.base.json`).
fn key(name: &str) -> Option<(i64, &str)> {
    let stem = name
        .strip_suffix(".base.json")
        .or_else(|| name.strip_suffix(".json"))?;
    let (stamp, writer) = stem.split_once('-')?;
    Some((stamp.parse().ok()?, writer))
}

fn is_base(name: &str) -> bool {
    name.ends_with(".base.json")
}

/// How many records on top of its base make a run's driver fold them into a new base.
pub(crate) const COMPACT_AFTER: i64 = 64;

/// The tables holding a run's rows, with the column naming the run.
const RUN_TABLES: [(&str, &str); 5] = [
    ("runs", "id"),
    ("tasks", "run_id"),
    ("attempts", "run_id"),
    ("launches", "run_id"),
    ("run_tags", "run_id"),
];

/// Execute one record's statements in a savepoint: a record that no longer applies (it lost a
/// race, e.g. two launches numbered alike) is skipped whole, the same way on every reader.
fn apply(conn: &Connection, stmts: &[Stmt]) -> rusqlite::Result<()> {
    conn.execute_batch("SAVEPOINT rec")?;
    let r: rusqlite::Result<()> = (|| {
        for s in stmts {
            let mut st = conn.prepare_cached(&s.sql)?;
            for row in &s.rows {
                st.execute(rusqlite::params_from_iter(row.iter().map(from_json)))?;
            }
        }
        Ok(())
    })();
    if r.is_err() {
        conn.execute_batch("ROLLBACK TO rec")?;
    }
    conn.execute_batch("RELEASE rec")
}

/// Forget what the cache holds of run `id` and replay it: its base, then the records on top
/// in (stamp, writer) order.
fn rebuild(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    for (t, col) in RUN_TABLES {
        conn.execute(&format!("DELETE FROM {t} WHERE {col} = ?1"), [id])?;
    }
    let bodies: Vec<String> = {
        let mut st = conn.prepare(
            "SELECT body FROM record_bases WHERE run_id = ?1 UNION ALL \
             SELECT body FROM (SELECT body FROM record_ops WHERE run_id = ?1 \
             ORDER BY stamp, writer)",
        )?;
        let rows = st.query_map([id], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for b in bodies {
        if let Ok(rec) = serde_json::from_str::<Record>(&b) {
            apply(conn, &rec.stmts)?;
        }
    }
    Ok(())
}

/// Every row of run `id` as the statements that recreate it (a base's body).
fn dump(conn: &Connection, id: i64) -> rusqlite::Result<Vec<Stmt>> {
    let mut out = Vec::new();
    for (t, col) in RUN_TABLES {
        let mut st = conn.prepare(&format!("SELECT * FROM {t} WHERE {col} = ?1"))?;
        let cols: Vec<String> = st.column_names().iter().map(|c| c.to_string()).collect();
        let n = cols.len();
        let mut rows = Vec::new();
        let mut q = st.query([id])?;
        while let Some(r) = q.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(to_json(&r.get::<_, Value>(i)?));
            }
            rows.push(row);
        }
        if !rows.is_empty() {
            let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
            out.push(Stmt {
                sql: format!(
                    "INSERT OR REPLACE INTO {t} ({}) VALUES ({})",
                    cols.join(", "),
                    marks.join(", ")
                ),
                rows,
            });
        }
    }
    Ok(out)
}

/// The newest (stamp, writer) of what the cache holds for run `id`: records on top when
/// `on_top`, else also its base.
fn newest(conn: &Connection, id: i64, on_top: bool) -> rusqlite::Result<Option<(i64, String)>> {
    let sql = if on_top {
        "SELECT stamp, writer FROM record_ops WHERE run_id = ?1 ORDER BY stamp DESC, writer DESC \
         LIMIT 1"
    } else {
        "SELECT stamp, writer FROM (SELECT stamp, writer FROM record_ops WHERE run_id = ?1 \
         UNION ALL SELECT stamp, writer FROM record_bases WHERE run_id = ?1) \
         ORDER BY stamp DESC, writer DESC LIMIT 1"
    };
    conn.query_row(sql, [id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

impl Store {
    fn check(&self, rec: &Record) -> Result<()> {
        if rec.format > FORMAT || rec.schema > crate::schema::LATEST {
            return Err(RunError::Command(format!(
                "run registry {}: run {} has a record of format {} (schema {}), newer than this \
                 shoal's {FORMAT} (schema {})\nhint: upgrade shoal on this node",
                self.root.display(),
                rec.run,
                rec.format,
                rec.schema,
                crate::schema::LATEST
            )));
        }
        Ok(())
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> RunError + '_ {
        |e| RunError::Db {
            path: self.root.clone(),
            source: e,
        }
    }

    /// Run `id`'s record `name`: None when it is gone (folded into a base) or not a record.
    fn read(&self, id: i64, name: &str) -> Result<Option<(String, Record)>> {
        let path = self.run_dir(id).join(name);
        let body = match read_retrying(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        // Published records are complete; anything unparsable is not one of ours.
        let Ok(rec) = serde_json::from_slice::<Record>(&body) else {
            return Ok(None);
        };
        self.check(&rec)?;
        Ok((rec.run == id).then(|| (String::from_utf8_lossy(&body).into_owned(), rec)))
    }

    /// Read run `id`'s records the cache has not seen and replay them (inside the caller's
    /// transaction). `mtime` is the directory's, as just observed; `force` lists it anyway.
    fn ingest(&self, conn: &Connection, id: i64, mtime: i64, force: bool) -> Result<()> {
        let db = self.db();
        let now = shoal_core::fsutil::now_secs();
        let seen: Option<(i64, f64, f64)> = conn
            .query_row(
                "SELECT mtime, seen_since, listed_at FROM record_dirs WHERE run_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(&db)?;
        let seen_since = match seen {
            Some((m, since, listed)) if m == mtime => {
                if listed >= since + SETTLE_SECS && !force {
                    return Ok(());
                }
                since
            }
            _ => now,
        };
        let mut names = self.records(id)?;
        names.retain(|n| key(n).is_some());
        names.sort_by(|a, b| key(a).cmp(&key(b)));
        let base: Option<(String, Vec<String>)> = conn
            .query_row(
                "SELECT name, body FROM record_bases WHERE run_id = ?1",
                [id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(&db)?
            .map(|(n, b)| {
                let covers = serde_json::from_str::<Record>(&b).map_or(vec![], |r| r.covers);
                (n, covers)
            });
        let mut rebuild_it = false;
        let mut covers: std::collections::HashSet<String> = base
            .as_ref()
            .map(|b| b.1.iter().cloned().collect())
            .unwrap_or_default();
        // A newer base than the cache's replaces it and all it includes.
        let newer = names
            .iter()
            .rev()
            .filter(|n| is_base(n))
            .find(|n| base.as_ref().is_none_or(|(b, _)| key(n) > key(b)));
        if let Some(name) = newer {
            if let Some((body, rec)) = self.read(id, name)? {
                conn.execute(
                    "INSERT OR REPLACE INTO record_bases (run_id, stamp, writer, name, body) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, rec.stamp, rec.writer, name, body],
                )
                .map_err(&db)?;
                let mut st = conn
                    .prepare_cached("DELETE FROM record_ops WHERE run_id = ?1 AND name = ?2")
                    .map_err(&db)?;
                for c in &rec.covers {
                    st.execute(params![id, c]).map_err(&db)?;
                }
                covers = rec.covers.into_iter().collect();
                rebuild_it = true;
            }
        }
        let mut known: std::collections::HashSet<String> = {
            let mut st = conn
                .prepare_cached("SELECT name FROM record_ops WHERE run_id = ?1")
                .map_err(&db)?;
            let rows = st.query_map([id], |r| r.get(0)).map_err(&db)?;
            rows.collect::<rusqlite::Result<_>>().map_err(&db)?
        };
        if rebuild_it {
            // Records this cache holds that are gone from the directory were folded into a
            // base and removed — maybe an intermediate base this cache never saw, which the
            // new one names but whose records it does not: the new base holds them.
            let listed: std::collections::HashSet<&String> = names.iter().collect();
            let mut st = conn
                .prepare_cached("DELETE FROM record_ops WHERE run_id = ?1 AND name = ?2")
                .map_err(&db)?;
            for gone in known.iter().filter(|n| !listed.contains(n)) {
                st.execute(params![id, gone]).map_err(&db)?;
            }
            known.retain(|n| listed.contains(n));
        }
        let mut fresh = Vec::new();
        let mut complete = true;
        for name in names
            .iter()
            .filter(|n| !is_base(n) && !covers.contains(*n) && !known.contains(*n))
        {
            match self.read(id, name)? {
                Some((body, rec)) => fresh.push((name, body, rec)),
                // Folded into a base this listing did not show yet: stop at a prefix (an
                // earlier state of the run) and list again next time.
                None if !self.run_dir(id).join(name).exists() => {
                    complete = false;
                    break;
                }
                None => {}
            }
        }
        if !fresh.is_empty() {
            let before = newest(conn, id, true).map_err(&db)?;
            for (name, body, rec) in &fresh {
                conn.execute(
                    "INSERT OR IGNORE INTO record_ops (run_id, stamp, writer, name, body) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, rec.stamp, rec.writer, name, body],
                )
                .map_err(&db)?;
            }
            let first = (fresh[0].2.stamp, fresh[0].2.writer.as_str());
            let in_order = before
                .as_ref()
                .is_none_or(|(s, w)| first > (*s, w.as_str()));
            if in_order && !rebuild_it {
                for (_, _, rec) in &fresh {
                    apply(conn, &rec.stmts).map_err(&db)?;
                }
            } else {
                rebuild_it = true;
            }
        }
        if rebuild_it {
            rebuild(conn, id).map_err(&db)?;
        }
        if complete {
            conn.execute(
                "INSERT OR REPLACE INTO record_dirs (run_id, mtime, seen_since, listed_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, mtime, seen_since, now],
            )
            .map_err(&db)?;
        }
        Ok(())
    }

    fn refresh_run(&self, conn: &Connection, id: i64, force: bool) -> Result<()> {
        let dir = self.run_dir(id);
        match std::fs::metadata(&dir) {
            Ok(m) => self.ingest(conn, id, mtime_ns(&m), force),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&dir, e)),
        }
    }

    /// Bring the cache up to date with run `id` (every run when None), inside the caller's
    /// transaction.
    pub fn refresh(&self, conn: &Connection, id: Option<i64>) -> Result<()> {
        match id {
            Some(id) => self.refresh_run(conn, id, false),
            None => {
                if !self.root.exists() {
                    return Ok(());
                }
                let dirs = self.run_dirs()?;
                for &(id, mtime) in &dirs {
                    self.ingest(conn, id, mtime, false)?;
                }
                self.forget_missing(conn, &dirs)
            }
        }
    }

    /// Drop from the cache the runs whose directory is gone (removed by hand).
    fn forget_missing(&self, conn: &Connection, dirs: &[(i64, i64)]) -> Result<()> {
        let db = self.db();
        let listed: std::collections::HashSet<i64> = dirs.iter().map(|d| d.0).collect();
        let cached: Vec<i64> = {
            let mut st = conn
                .prepare("SELECT run_id FROM record_dirs")
                .map_err(&db)?;
            let rows = st.query_map([], |r| r.get(0)).map_err(&db)?;
            rows.collect::<rusqlite::Result<_>>().map_err(&db)?
        };
        for id in cached.into_iter().filter(|id| !listed.contains(id)) {
            for t in ["record_ops", "record_bases", "record_dirs"] {
                conn.execute(&format!("DELETE FROM {t} WHERE run_id = ?1"), [id])
                    .map_err(&db)?;
            }
            rebuild(conn, id).map_err(&db)?;
        }
        Ok(())
    }

    fn stamp(&self, conn: &Connection, id: i64) -> Result<i64> {
        let after = newest(conn, id, false)
            .map_err(self.db())?
            .map_or(0, |(s, _)| s + 1);
        Ok(now_micros().max(after))
    }

    /// Publish `log` (already executed on the cache by the caller's transaction) as a record
    /// of run `id`, and note it in the cache as replayed. Returns how many records the run
    /// now has on top of its base.
    pub fn commit(&self, conn: &Connection, id: i64, log: &Log) -> Result<i64> {
        let db = self.db();
        let stamp = self.stamp(conn, id)?;
        let (name, body) = self.publish(id, stamp, log.0.clone(), vec![])?;
        conn.execute(
            "INSERT INTO record_ops (run_id, stamp, writer, name, body) VALUES (?1, ?2, ?3, ?4, \
             ?5)",
            params![id, stamp, self.writer, name, body],
        )
        .map_err(&db)?;
        conn.query_row(
            "SELECT COUNT(*) FROM record_ops WHERE run_id = ?1",
            [id],
            |r| r.get(0),
        )
        .map_err(&db)
    }

    /// Fold run `id`'s records into one base (its whole state as this cache has it, after a
    /// fresh listing), then remove the records and bases it includes, so a reader that has
    /// never seen the run reads one file. Only the run's driver compacts (one at a time), so
    /// no base leaves out what another removed.
    pub fn compact(&self, conn: &Connection, id: i64) -> Result<()> {
        let db = self.db();
        self.refresh_run(conn, id, true)?;
        let mut covers: Vec<String> = {
            let mut st = conn
                .prepare("SELECT name FROM record_ops WHERE run_id = ?1 ORDER BY stamp, writer")
                .map_err(&db)?;
            let rows = st.query_map([id], |r| r.get(0)).map_err(&db)?;
            rows.collect::<rusqlite::Result<_>>().map_err(&db)?
        };
        let old_base: Option<String> = conn
            .query_row(
                "SELECT name FROM record_bases WHERE run_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(&db)?;
        if covers.is_empty() {
            return Ok(());
        }
        // What the old base folded in and is still there (its driver was killed before
        // removing it): named again, or a reader meeting it beside the new base replays it.
        if let Some(old) = &old_base {
            let body: String = conn
                .query_row(
                    "SELECT body FROM record_bases WHERE run_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .map_err(&db)?;
            let folded: std::collections::HashSet<String> = serde_json::from_str::<Record>(&body)
                .map(|r| r.covers.into_iter().collect())
                .unwrap_or_default();
            covers.extend(
                self.records(id)?
                    .into_iter()
                    .filter(|n| folded.contains(n) && n != old),
            );
        }
        covers.extend(old_base);
        let stmts = dump(conn, id).map_err(&db)?;
        let stamp = self.stamp(conn, id)?;
        let (name, body) = self.publish(id, stamp, stmts, covers.clone())?;
        conn.execute(
            "INSERT OR REPLACE INTO record_bases (run_id, stamp, writer, name, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, stamp, self.writer, name, body],
        )
        .map_err(&db)?;
        conn.execute("DELETE FROM record_ops WHERE run_id = ?1", [id])
            .map_err(&db)?;
        // Best effort: a record left behind is skipped by every reader (the base names it).
        for c in covers {
            let _ = std::fs::remove_file(self.run_dir(id).join(c));
        }
        Ok(())
    }
}

/// Turn the SQLite registry at `db` (left on a network filesystem by an older shoal) into the
/// record store `root`: one record per run holding all its rows, ids kept. It is built in a
/// hidden directory renamed into place, so of two nodes importing at once one wins and the
/// other uses its store; `db` becomes `runs.db.imported`.
pub(crate) fn import(db: &Path, root: &Path) -> Result<()> {
    let parent = root.parent().unwrap_or(Path::new("."));
    let err = |e| RunError::Db {
        path: db.to_path_buf(),
        source: e,
    };
    // Read a private copy, brought to the latest schema like any registry being opened.
    let local = tempfile::NamedTempFile::new().map_err(|e| io(db, e))?;
    std::fs::copy(db, local.path()).map_err(|e| io(db, e))?;
    let mut conn = Connection::open(local.path()).map_err(err)?;
    crate::schema::upgrade(&mut conn)
        .map_err(|e| RunError::Command(format!("run registry {}: {e}", db.display())))?;
    let building = tempfile::Builder::new()
        .prefix(".runs.d-import-")
        .tempdir_in(parent)
        .map_err(|e| io(parent, e))?;
    let store = Store::new(building.path().to_path_buf());
    let ids: Vec<i64> = {
        let mut st = conn
            .prepare("SELECT id FROM runs ORDER BY id")
            .map_err(err)?;
        let rows = st.query_map([], |r| r.get(0)).map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)?
    };
    for id in ids {
        let dir = store.run_dir(id);
        std::fs::create_dir(&dir).map_err(|e| io(&dir, e))?;
        store.publish(id, now_micros(), dump(&conn, id).map_err(err)?, vec![])?;
    }
    let built = building.keep();
    match std::fs::rename(&built, root) {
        Ok(()) => {
            let _ = std::fs::rename(db, db.with_extension("db.imported"));
        }
        // Another node imported first.
        Err(_) if root.is_dir() => {
            let _ = std::fs::remove_dir_all(&built);
        }
        Err(e) => return Err(io(root, e)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_a_record() {
        for v in [
            Value::Null,
            Value::Integer(-3),
            Value::Integer(i64::MAX),
            Value::Real(1.0),
            Value::Real(1.7e9 + 0.123_456),
            Value::Text("a \"b\"\n".into()),
        ] {
            let j = serde_json::to_string(&to_json(&v)).unwrap();
            assert_eq!(from_json(&serde_json::from_str(&j).unwrap()), v, "{j}");
        }
    }

    #[test]
    fn a_log_groups_repeated_statements() {
        let mut log = Log::default();
        log.push("A", vec![Json::from(1)]);
        log.push("A", vec![Json::from(2)]);
        log.push("B", vec![]);
        log.push("A", vec![Json::from(3)]);
        let sqls: Vec<_> = log
            .0
            .iter()
            .map(|s| (s.sql.as_str(), s.rows.len()))
            .collect();
        assert_eq!(sqls, [("A", 2), ("B", 1), ("A", 1)]);
    }

    #[test]
    fn ids_are_claimed_exclusively() {
        let t = tempfile::tempdir().unwrap();
        let a = Store::new(t.path().join("runs.d"));
        let b = Store::new(t.path().join("runs.d"));
        assert_eq!(a.allocate().unwrap(), 1);
        assert_eq!(b.allocate().unwrap(), 2);
        std::fs::create_dir(t.path().join("runs.d/4")).unwrap();
        assert_eq!(a.allocate().unwrap(), 5);
        assert_ne!(a.writer, b.writer);
    }
}
