//! The batch script and the sbatch command line of a worker array. The script only sets the
//! session's environment and execs the worker; resources go on the command line.

use super::options::SlurmOptions;
use crate::LaunchSpec;
use shoal_core::layout::Stream;

/// The script every array element runs (the same for all arrays of a session).
pub fn worker_script(spec: &LaunchSpec, opts: &SlurmOptions) -> String {
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&format!(
        "# shoal worker of session {} (written by shoal; each array element is one worker)\n",
        spec.session.id()
    ));
    // #SBATCH lines count only before the first command.
    for d in &opts.extra_directives {
        let d = d.trim();
        if d.starts_with("#SBATCH") {
            s.push_str(d);
        } else {
            s.push_str("#SBATCH ");
            s.push_str(d);
        }
        s.push('\n');
    }
    // Written into the script (not only sbatch's environment) so they hold even with
    // export=NONE or a site profile that resets the environment.
    for (k, v) in &spec.env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    // The worker's id is its array element, as scancel and squeue name it.
    s.push_str("export SHOAL_WORKER_ID=\"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\n");
    let argv: Vec<String> = spec.worker_argv(None).iter().map(|a| quote(a)).collect();
    // exec: signals from Slurm (time limit, scancel) reach the worker itself.
    s.push_str(&format!("exec {}\n", argv.join(" ")));
    s
}

/// sbatch arguments for an array of `n` workers, at most `throttle` running at once.
pub fn sbatch_argv(
    spec: &LaunchSpec,
    opts: &SlurmOptions,
    script: &str,
    n: usize,
    throttle: usize,
) -> Vec<String> {
    let mut a = vec!["--parsable".to_string(), array_spec(n, throttle)];
    a.push(format!("--job-name={}", opts.job_name));
    // Worker ids are ARRAYID_TASKID, so %A_%a is exactly logs/<worker>.out|err.
    let log = |stream| spec.session.log("%A_%a", stream).display().to_string();
    a.push(format!("--output={}", log(Stream::Stdout)));
    a.push(format!("--error={}", log(Stream::Stderr)));
    a.push(format!("--chdir={}", spec.cwd.display()));
    a.push(format!("--export={}", opts.export));
    // shoal resubmits lost workers itself; a Slurm requeue would revive a worker id the
    // engine already buried.
    a.push("--no-requeue".into());
    a.push("--ntasks=1".into());
    if let Some(c) = opts.cpus {
        a.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = opts.memory {
        a.push(format!("--mem={}M", m.megabytes()));
    }
    if let Some(t) = opts.time {
        a.push(format!("--time={}", t.to_slurm()));
    }
    for (flag, v) in [
        ("--partition", &opts.partition),
        ("--account", &opts.account),
        ("--qos", &opts.qos),
        ("--constraint", &opts.constraint),
        ("--reservation", &opts.reservation),
    ] {
        if let Some(v) = v {
            a.push(format!("{flag}={v}"));
        }
    }
    let mut gres: Vec<String> = opts.gpus.map(|g| format!("gpu:{g}")).into_iter().collect();
    gres.extend(opts.gres.clone());
    if !gres.is_empty() {
        a.push(format!("--gres={}", gres.join(",")));
    }
    a.extend(opts.sbatch_args.iter().cloned());
    a.push(script.to_string());
    a
}

/// `--array=0-(n-1)%throttle`; indices start at 0 so any `n <= MaxArraySize` fits.
pub fn array_spec(n: usize, throttle: usize) -> String {
    let last = n.saturating_sub(1);
    if throttle >= n {
        format!("--array=0-{last}")
    } else {
        format!("--array=0-{last}%{}", throttle.max(1))
    }
}

/// Split `n` workers into array sizes no bigger than the site allows.
pub fn split_arrays(n: usize, max_array_size: usize) -> Vec<usize> {
    let max = max_array_size.max(1);
    let mut out = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(max);
        out.push(k);
        left -= k;
    }
    out
}

pub use crate::shell::sh_quote as quote;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_core::SessionDir;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            session: SessionDir::open("/shared/s/abc"),
            python: "/opt/env/bin/python".into(),
            env: vec![
                ("SHOAL_WORKER".into(), "1".into()),
                ("MSG".into(), "it's here".into()),
            ],
            cwd: "/home/u/proj".into(),
        }
    }

    #[test]
    fn script_execs_the_worker_with_env_and_directives() {
        let o = SlurmOptions::from_json(
            2,
            &json!({"extra_directives": ["--nice=5", "#SBATCH --comment=x"]}),
        )
        .unwrap();
        let s = worker_script(&spec(), &o);
        assert_eq!(
            s,
            "#!/bin/sh\n# shoal worker of session abc (written by shoal; each array element is one worker)\n\
             #SBATCH --nice=5\n#SBATCH --comment=x\nexport SHOAL_WORKER=1\nexport MSG='it'\\''s here'\n\
             export SHOAL_WORKER_ID=\"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\n\
             exec /opt/env/bin/python -m shoal.worker /shared/s/abc\n"
        );
    }

    #[test]
    fn command_line_carries_every_option() {
        let o = SlurmOptions::from_json(
            4,
            &json!({"cpus": 2, "memory": "1.5G", "time": "90m", "partition": "short", "account": "a1",
                    "qos": "q", "gpus": 2, "gres": "nvme:1", "job_name": "jn",
                    "sbatch_args": ["--exclusive", "--time=5"]}),
        )
        .unwrap();
        let a = sbatch_argv(&spec(), &o, "/shared/s/abc/slurm-worker.sh", 10, 4);
        assert_eq!(
            a,
            [
                "--parsable",
                "--array=0-9%4",
                "--job-name=jn",
                "--output=/shared/s/abc/logs/%A_%a.out",
                "--error=/shared/s/abc/logs/%A_%a.err",
                "--chdir=/home/u/proj",
                "--export=ALL",
                "--no-requeue",
                "--ntasks=1",
                "--cpus-per-task=2",
                "--mem=1536M",
                "--time=0-01:30:00",
                "--partition=short",
                "--account=a1",
                "--qos=q",
                "--gres=gpu:2,nvme:1",
                "--exclusive",
                "--time=5",
                "/shared/s/abc/slurm-worker.sh",
            ]
        );
    }

    #[test]
    fn arrays_respect_site_limits() {
        assert_eq!(array_spec(3, 16), "--array=0-2");
        assert_eq!(array_spec(1000, 16), "--array=0-999%16");
        assert_eq!(split_arrays(2500, 1001), [1001, 1001, 498]);
        assert_eq!(split_arrays(5, 1001), [5]);
        assert!(split_arrays(0, 1001).is_empty());
    }
}
