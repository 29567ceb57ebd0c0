//! Fill a registry with finished runs through the same calls a driver makes (for
//! benches/registry): `fill_registry PATH RUNS TASKS`.

use shoal_runs::registry::{NewLaunch, NewRun, Outcome};
use shoal_runs::Registry;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, runs, tasks] = args.as_slice() else {
        return Err("usage: fill_registry PATH RUNS TASKS".into());
    };
    let (runs, tasks): (usize, usize) = (runs.parse()?, tasks.parse()?);
    let path = PathBuf::from(path);
    let reg = Registry::open(&path)?;
    let dir = path.parent().unwrap_or(&path).to_path_buf();
    for k in 0..runs {
        let new = NewRun {
            name: format!("bench{k}"),
            command: vec!["true".into(), "{i}".into()],
            params: serde_json::json!({"param": [format!("i=0..{}", tasks - 1)]}),
            backend: "local".into(),
            template: None,
            options: serde_json::json!({"workers": 2}),
            cwd: dir.clone(),
            results_dir: dir.join("results"),
            config_path: None,
            git: Some(("0123456789abcdef0123456789abcdef01234567".into(), false)),
            experiment: None,
            overrides: serde_json::json!({}),
            datasets: serde_json::json!([]),
            note: None,
            tags: vec!["bench".into()],
        };
        let combos: Vec<_> = (0..tasks)
            .map(|i| vec![("i".to_string(), i.to_string())])
            .collect();
        let run = reg.create_run(&new, &combos)?;
        reg.begin_launch(
            run.id,
            &NewLaunch {
                kind: "run".into(),
                git: new.git.clone(),
                template: None,
                options: new.options.clone(),
                options_from: "command line".into(),
                overrides: serde_json::json!({}),
                tasks,
                detached: false,
            },
        )?;
        reg.start_driver(run.id, std::process::id(), "bench")?;
        reg.set_session(run.id, &format!("S{k}"), "/tmp/s")?;
        let idxs: Vec<i64> = (0..tasks as i64).collect();
        reg.mark_running(run.id, &idxs)?;
        let outs: Vec<Outcome> = idxs
            .iter()
            .map(|&idx| Outcome {
                idx,
                attempt: 1,
                state: "done".into(),
                exit_code: Some(0),
                duration: Some(0.01),
                started: Some(1.0),
                ended: Some(1.01),
                host: Some("bench".into()),
                worker: Some("1".into()),
                session: Some(format!("S{k}")),
                launch: None,
            })
            .collect();
        reg.record(run.id, &outs)?;
        reg.settle(run.id)?;
    }
    Ok(())
}
