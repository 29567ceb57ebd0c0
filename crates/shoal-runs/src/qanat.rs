//! `shoal import-qanat`: turn a Qanat project into shoal.toml — the `htcondor:`/`slurm:` submit
//! templates of `.qanat/config.yaml` into templates with shoal's option names, and the
//! experiments, datasets, tags and actions of `.qanat/database.db` into `[experiments.*]` and
//! `[datasets]`.

use crate::config::Config;
use crate::error::{Result, RunError};
use serde_yaml::Value as Yaml;
use std::path::Path;

fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn int_or_str(text: &str) -> toml::Value {
    match text.parse::<i64>() {
        Ok(i) => toml::Value::Integer(i),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Slurm: `--cpus-per-task: 2` -> `cpus = 2`; flags without a shoal option go to sbatch_args.
fn slurm_template(map: &serde_yaml::Mapping, notes: &mut Vec<String>) -> toml::Table {
    let mut t = toml::Table::new();
    let mut extra = Vec::new();
    for (k, v) in map {
        let (Some(key), Some(val)) = (k.as_str(), scalar(v)) else {
            continue;
        };
        let option = match key {
            "--cpus-per-task" | "-c" => Some("cpus"),
            "--mem" => Some("memory"),
            "--time" | "-t" => Some("time"),
            "--partition" | "-p" => Some("partition"),
            "--account" | "-A" => Some("account"),
            "--qos" | "-q" => Some("qos"),
            "--gpus" | "-G" => Some("gpus"),
            "--gres" => Some("gres"),
            "--job-name" | "-J" => Some("job_name"),
            _ => None,
        };
        match option {
            Some("cpus") | Some("gpus") => {
                t.insert(option.unwrap_or_default().into(), int_or_str(&val));
            }
            Some(o) => {
                t.insert(o.into(), toml::Value::String(val));
            }
            None if matches!(key, "--output" | "-o" | "--error" | "-e") => {
                notes.push(format!(
                    "dropped slurm {key} (shoal keeps worker logs itself)"
                ));
            }
            None if key.starts_with("--") => extra.push(format!("{key}={val}")),
            None => {
                extra.push(key.to_string());
                extra.push(val);
            }
        }
    }
    if !extra.is_empty() {
        t.insert("sbatch_args".into(), extra.into());
    }
    t
}

/// HTCondor: submit-description keys keep their names; `+Attr` goes to attributes.
fn htcondor_template(map: &serde_yaml::Mapping, notes: &mut Vec<String>) -> toml::Table {
    let mut t = toml::Table::new();
    let mut attributes = toml::Table::new();
    let mut extra = Vec::new();
    for (k, v) in map {
        let (Some(key), Some(val)) = (k.as_str(), scalar(v)) else {
            continue;
        };
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            "request_cpus" | "request_gpus" => {
                t.insert(lower.clone(), int_or_str(&val));
            }
            "request_memory" | "request_disk" | "universe" | "requirements"
            | "accounting_group" => {
                t.insert(lower.clone(), toml::Value::String(val));
            }
            "initialdir" | "initial_dir" => {
                t.insert("initial_dir".into(), toml::Value::String(val));
            }
            "getenv" => {
                t.insert(
                    "getenv".into(),
                    toml::Value::Boolean(val.eq_ignore_ascii_case("true")),
                );
            }
            "executable" | "arguments" | "output" | "error" | "log" | "queue" => {
                notes.push(format!(
                    "dropped htcondor {key} (shoal writes these itself)"
                ));
            }
            _ if key.starts_with('+') || key.starts_with("My.") => {
                let name = key.trim_start_matches('+').trim_start_matches("My.");
                attributes.insert(name.into(), toml::Value::String(val));
            }
            _ => extra.push(format!("{key} = {val}")),
        }
    }
    if !attributes.is_empty() {
        t.insert("attributes".into(), toml::Value::Table(attributes));
    }
    if !extra.is_empty() {
        t.insert("extra_directives".into(), extra.into());
    }
    t
}

/// A name shoal accepts (letter first; letters, digits, `_ . -`), noting a change.
fn shoal_name(kind: &str, name: &str, notes: &mut Vec<String>) -> String {
    let clean = crate::registry::to_name(name, "x");
    if clean != name {
        notes.push(format!("{kind} {name:?} is named {clean:?} here"));
    }
    clean
}

/// `description` and `tags` of a dataset or experiment, when it has them.
fn describe(t: &mut toml::Table, description: Option<String>, tags: Vec<String>) {
    if let Some(desc) = description.filter(|d| !d.is_empty()) {
        t.insert("description".into(), desc.into());
    }
    if !tags.is_empty() {
        t.insert("tags".into(), tags.into());
    }
}

/// Every row of a query, mapped by `f`.
fn query<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    args: impl rusqlite::Params,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map(args, f)?;
    rows.collect()
}

fn words(line: Option<String>) -> Vec<String> {
    line.map(|l| shlex::split(&l).unwrap_or_else(|| vec![l]))
        .unwrap_or_default()
}

/// Experiments, datasets and actions from Qanat's database (SQLAlchemy tables `experiments`,
/// `datasets`, `actions`, `tags` and their link tables), into `root`.
fn import_database(db: &Path, root: &mut toml::Table, notes: &mut Vec<String>) -> Result<()> {
    let err = |source| RunError::Db {
        path: db.to_path_buf(),
        source,
    };
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(err)?;
    let tags_of = |sql: &str, id: i64| query(&conn, sql, [id], |r| r.get::<_, String>(0));
    let mut datasets = toml::Table::new();
    let mut dataset_names = std::collections::HashMap::new();
    let rows: Vec<(i64, String, Option<String>, Option<String>)> = query(
        &conn,
        "SELECT id, name, path, description FROM datasets ORDER BY id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .map_err(err)?;
    for (id, name, path, description) in rows {
        let name = shoal_name("dataset", &name, notes);
        let mut d = toml::Table::new();
        d.insert("path".into(), path.unwrap_or_default().into());
        let tags = tags_of(
            "SELECT t.name FROM tags t JOIN datasets_tags l ON l.tag_id = t.id \
             WHERE l.dataset_id = ?1 ORDER BY t.name",
            id,
        );
        describe(&mut d, description, tags.unwrap_or_default());
        dataset_names.insert(id, name.clone());
        datasets.insert(name, toml::Value::Table(d));
    }
    type ExpRow = (i64, String, Option<String>, Option<String>, Option<String>);
    let rows: Vec<ExpRow> = query(
        &conn,
        "SELECT id, name, description, executable, executable_command FROM experiments \
         ORDER BY id",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .map_err(err)?;
    let mut experiments = toml::Table::new();
    for (id, name, description, executable, command) in rows {
        let name = shoal_name("experiment", &name, notes);
        let mut e = toml::Table::new();
        let tags = tags_of(
            "SELECT t.name FROM tags t JOIN experiments_tags l ON l.tag_id = t.id \
             WHERE l.experiment_id = ?1 ORDER BY t.name",
            id,
        );
        describe(&mut e, description, tags.unwrap_or_default());
        e.insert("script".into(), executable.unwrap_or_default().into());
        // Qanat runs `EXECUTABLE_COMMAND EXECUTABLE --storage_path DIR [params as flags]`.
        e.insert("interpreter".into(), words(command).into());
        e.insert("args".into(), vec!["--storage_path", "{out}"].into());
        let ids: Vec<i64> = query(
            &conn,
            "SELECT dataset_id FROM datasets_experiments WHERE experiment_id = ?1 ORDER BY id",
            [id],
            |r| r.get(0),
        )
        .unwrap_or_default();
        let used: Vec<String> = ids
            .iter()
            .filter_map(|i| dataset_names.get(i).cloned())
            .collect();
        if !used.is_empty() {
            e.insert("datasets".into(), used.into());
        }
        type ActRow = (String, Option<String>, Option<String>, Option<String>);
        let acts: Vec<ActRow> = query(
            &conn,
            "SELECT name, description, executable, executable_command FROM actions \
             WHERE experiment_id = ?1 ORDER BY id",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .map_err(err)?;
        let mut actions = toml::Table::new();
        for (aname, adesc, aexe, acmd) in acts {
            let aname = shoal_name("action", &aname, notes);
            let mut a = toml::Table::new();
            if let Some(d) = adesc.filter(|d| !d.is_empty()) {
                a.insert("description".into(), d.into());
            }
            let mut command = words(acmd);
            command.push(aexe.unwrap_or_default());
            command.extend(["--storage_path".to_string(), "{run_dir}".to_string()]);
            a.insert("command".into(), command.into());
            actions.insert(aname, toml::Value::Table(a));
        }
        if !actions.is_empty() {
            e.insert("actions".into(), toml::Value::Table(actions));
        }
        experiments.insert(name, toml::Value::Table(e));
    }
    if !datasets.is_empty() {
        root.insert("datasets".into(), toml::Value::Table(datasets));
    }
    if !experiments.is_empty() {
        root.insert("experiments".into(), toml::Value::Table(experiments));
    }
    Ok(())
}

/// Read a Qanat project (its `.qanat/config.yaml`, or the `.qanat` dir) and return shoal.toml
/// text, checked by shoal's own config parser. The database next to the config, when there is
/// one, brings the experiments, datasets and actions.
pub fn import(path: &Path) -> Result<String> {
    let path = if path.is_dir() {
        path.join("config.yaml")
    } else {
        path.to_path_buf()
    };
    let path = path.as_path();
    let text = std::fs::read_to_string(path).map_err(|e| shoal_core::CoreError::io(path, e))?;
    let doc: Yaml = serde_yaml::from_str(&text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        RunError::Config {
            path: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
            hint: "this should be Qanat's .qanat/config.yaml".into(),
        }
    })?;
    let mut root = toml::Table::new();
    let mut notes = Vec::new();
    for backend in ["htcondor", "slurm"] {
        let Some(templates) = doc.get(backend).and_then(Yaml::as_mapping) else {
            continue;
        };
        let mut section = toml::Table::new();
        for (name, body) in templates {
            let (Some(name), Some(body)) = (name.as_str(), body.as_mapping()) else {
                continue;
            };
            let t = if backend == "slurm" {
                slurm_template(body, &mut notes)
            } else {
                htcondor_template(body, &mut notes)
            };
            section.insert(name.to_string(), toml::Value::Table(t));
        }
        root.insert(backend.into(), toml::Value::Table(section));
    }
    let db = path.with_file_name("database.db");
    if db.is_file() {
        import_database(&db, &mut root, &mut notes)?;
    }
    if root.is_empty() {
        return Err(RunError::Command(format!(
            "{} has no htcondor: or slurm: templates, and no experiments or datasets in {}\n\
             hint: pass Qanat's .qanat/config.yaml (its database.db sits beside it)",
            path.display(),
            db.display()
        )));
    }
    let body = toml::to_string(&root).map_err(|e| RunError::Command(e.to_string()))?;
    let mut out = format!(
        "# Imported from {} by `shoal import-qanat`.\n",
        path.display()
    );
    for n in &notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    out.push('\n');
    out.push_str(&body);
    // Whatever we wrote must load: values Qanat accepted but shoal cannot parse fail here.
    Config::parse(Path::new("shoal.toml (imported)"), &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_qanat_templates() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("config.yaml");
        std::fs::write(
            &p,
            "storage_path: /data\nhtcondor:\n  default:\n    +WishedAcctGroup: group_x\n    getenv: 'true'\n    request_cpus: 1\n    request_disk: 1GB\n    request_gpus: 0\n    request_memory: 1GB\n    universe: vanilla\nslurm:\n  default:\n    --cpus-per-task: 1\n    --ntasks: 1\n    --time: 1-00:00:00\n  gpu:\n    --gres: gpu:1\n    --mem: 8G\n",
        )
        .unwrap();
        let out = import(&p);
        // request_gpus = 0 is not a valid shoal value (>= 1): the import says so, with a line.
        let e = out.unwrap_err().to_string();
        assert!(
            e.contains("for request_gpus: must be a whole number >= 1"),
            "{e}"
        );
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("    request_gpus: 0\n", "");
        std::fs::write(&p, text).unwrap();
        let out = import(&p).unwrap();
        let c = Config::parse(Path::new("x/shoal.toml"), &out).unwrap();
        let h = c.template("htcondor", None).unwrap().unwrap().options;
        assert_eq!(h["request_cpus"], 1);
        assert_eq!(h["getenv"], true);
        assert_eq!(h["attributes"]["WishedAcctGroup"], "group_x");
        let s = c.template("slurm", None).unwrap().unwrap().options;
        assert_eq!(s["cpus"], 1);
        assert_eq!(s["time"], "1-00:00:00");
        assert_eq!(s["sbatch_args"][0], "--ntasks=1");
        let g = c.template("slurm", Some("gpu")).unwrap().unwrap().options;
        assert_eq!(
            (g["gres"].as_str(), g["memory"].as_str()),
            (Some("gpu:1"), Some("8G"))
        );
    }

    #[test]
    fn carries_experiments_datasets_and_actions_over() {
        let t = tempfile::tempdir().unwrap();
        let q = t.path().join(".qanat");
        std::fs::create_dir(&q).unwrap();
        std::fs::write(q.join("config.yaml"), "result_dir: results\n").unwrap();
        let db = rusqlite::Connection::open(q.join("database.db")).unwrap();
        // The tables Qanat's SQLAlchemy models create (the columns shoal reads).
        db.execute_batch(
            "CREATE TABLE experiments (id INTEGER PRIMARY KEY, path VARCHAR, name VARCHAR, \
             description VARCHAR, executable VARCHAR, executable_command VARCHAR);
             CREATE TABLE datasets (id INTEGER PRIMARY KEY, path VARCHAR, name VARCHAR, \
             description VARCHAR);
             CREATE TABLE tags (id INTEGER PRIMARY KEY, name VARCHAR, description VARCHAR);
             CREATE TABLE actions (id INTEGER PRIMARY KEY, experiment_id INTEGER, name VARCHAR, \
             executable VARCHAR, executable_command VARCHAR, description VARCHAR);
             CREATE TABLE datasets_experiments (id INTEGER PRIMARY KEY, experiment_id INTEGER, \
             dataset_id INTEGER);
             CREATE TABLE experiments_tags (id INTEGER PRIMARY KEY, experiment_id INTEGER, \
             tag_id INTEGER);
             CREATE TABLE datasets_tags (id INTEGER PRIMARY KEY, dataset_id INTEGER, \
             tag_id INTEGER);
             INSERT INTO experiments VALUES (1, 'experiments', 'summary mnist', 'Summary stats', \
             'experiments/mnist.py', 'python -u');
             INSERT INTO datasets VALUES (1, 'data/mnist', 'mnist', 'Digits');
             INSERT INTO tags VALUES (1, 'Statistics', ''), (2, 'images', '');
             INSERT INTO experiments_tags VALUES (1, 1, 1);
             INSERT INTO datasets_tags VALUES (1, 1, 2);
             INSERT INTO datasets_experiments VALUES (1, 1, 1);
             INSERT INTO actions VALUES (1, 1, 'plot', 'experiments/plot.py', 'python', \
             'Plot the stats');",
        )
        .unwrap();
        drop(db);
        let out = import(&q).unwrap();
        assert!(
            out.contains("\"summary mnist\" is named \"summary_mnist\""),
            "{out}"
        );
        let c = Config::parse(&t.path().join("shoal.toml"), &out).unwrap();
        let d = &c.datasets["mnist"];
        assert_eq!(d.path, t.path().join("data/mnist"));
        assert_eq!(
            (d.description.as_deref(), d.tags.clone()),
            (Some("Digits"), vec!["images".to_string()])
        );
        let e = c.experiment("summary_mnist").unwrap();
        assert_eq!(e.description.as_deref(), Some("Summary stats"));
        assert_eq!(e.tags, ["Statistics"]);
        assert_eq!(e.interpreter, ["python", "-u"]);
        assert_eq!(e.script, t.path().join("experiments/mnist.py"));
        assert_eq!(e.args, ["--storage_path", "{out}"]);
        assert_eq!(e.datasets, ["mnist"]);
        let plot = &e.actions["plot"];
        assert_eq!(plot.description.as_deref(), Some("Plot the stats"));
        assert_eq!(
            plot.command,
            [
                "python",
                "experiments/plot.py",
                "--storage_path",
                "{run_dir}"
            ]
        );
    }
}
