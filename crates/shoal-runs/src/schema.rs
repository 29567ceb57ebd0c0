//! The registry's schema as numbered migrations (SQLite's `user_version` holds the number), so
//! a registry written by an older shoal upgrades in place when a newer one opens it.
//!
//! Never edit a migration that has shipped: add the next one.

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

/// 1: the schema shoal 0.1 created without a version (`CREATE ... IF NOT EXISTS`, so such a
/// registry passes through unchanged and is stamped 1).
pub(crate) const V1: &str = r#"
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

/// 2: launches (every time a driver took the run: its kind, git commit, options and session),
/// tags and notes, experiments and datasets, and the options given on the command line apart
/// from the template's (so resume and rerun can re-read the template).
const V2: &str = r#"
ALTER TABLE runs ADD COLUMN experiment TEXT;
ALTER TABLE runs ADD COLUMN overrides TEXT NOT NULL DEFAULT '{}';
ALTER TABLE runs ADD COLUMN datasets TEXT NOT NULL DEFAULT '[]';
ALTER TABLE runs ADD COLUMN note TEXT;
ALTER TABLE tasks ADD COLUMN launch INTEGER;
ALTER TABLE attempts ADD COLUMN launch INTEGER;
CREATE TABLE run_tags (
    run_id INTEGER NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (run_id, tag)
) WITHOUT ROWID;
CREATE INDEX run_tags_tag ON run_tags(tag);
CREATE TABLE launches (
    run_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    kind TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT,
    git_commit TEXT,
    git_dirty INTEGER,
    template TEXT,
    options TEXT NOT NULL,
    options_from TEXT,
    tasks INTEGER NOT NULL,
    detached INTEGER NOT NULL DEFAULT 0,
    session TEXT,
    session_path TEXT,
    driver_pid INTEGER,
    driver_host TEXT,
    PRIMARY KEY (run_id, n)
) WITHOUT ROWID;
-- What an older registry knew of each run's first launch; later reruns were not recorded.
INSERT INTO launches (run_id, n, kind, started, ended, status, git_commit, git_dirty, template,
    options, options_from, tasks, session, session_path, driver_pid, driver_host)
SELECT id, 1, 'run', COALESCE(started, created), ended, status, git_commit, git_dirty, template,
    options, 'recorded', (SELECT COUNT(*) FROM tasks WHERE tasks.run_id = runs.id), session,
    session_path, driver_pid, driver_host
FROM runs WHERE started IS NOT NULL;
"#;

pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(V1), M::up(V2)])
}

/// The schema version this shoal writes.
pub const LATEST: usize = 2;

fn version(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Bring `conn`'s database to the latest schema. Two processes opening an old registry at once
/// both try: the second one's ALTERs fail once the first has committed, which is fine when
/// the version it then reads is the latest.
pub fn upgrade(conn: &mut Connection) -> std::result::Result<(), String> {
    match version(conn) {
        Ok(v) if v == LATEST => return Ok(()),
        Ok(v) if v > LATEST => {
            return Err(format!(
                "it has schema version {v}, newer than this shoal's {LATEST} (a newer shoal wrote \
                 it)\nhint: upgrade shoal, or set SHOAL_HOME to use another registry"
            ))
        }
        _ => {}
    }
    match migrations().to_latest(conn) {
        Ok(()) => Ok(()),
        Err(_) if version(conn).is_ok_and(|v| v == LATEST) => Ok(()),
        Err(e) => Err(format!("could not upgrade its schema: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn a_newer_registry_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", LATEST + 1).unwrap();
        let e = upgrade(&mut c).unwrap_err();
        assert!(e.contains("newer than this shoal's"), "{e}");
    }
}
