//! The sbatch command line of a worker array: resources and the array go on the command
//! line; the job script (generic, see [`crate::array`]) only sets the environment and runs
//! the worker.

use super::options::SlurmOptions;
use crate::LaunchSpec;
use shoal_core::layout::Stream;

/// `#SBATCH` lines for the script from `extra_directives` (the prefix added when missing).
pub fn directives(opts: &SlurmOptions) -> Vec<String> {
    opts.extra_directives
        .iter()
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
        .map(|d| {
            if d.starts_with("#SBATCH") {
                d.to_string()
            } else {
                format!("#SBATCH {d}")
            }
        })
        .collect()
}

/// The stdout path of batch `tag`'s elements (`%a` unexpanded, as squeue shows it): it names
/// the session dir and the batch, so it identifies the array (the comment is the user's).
pub fn batch_stdout(spec: &LaunchSpec, tag: &str) -> String {
    spec.session
        .log(&format!("{tag}-%a"), Stream::Stdout)
        .display()
        .to_string()
}

/// sbatch arguments for an array of `n` workers of batch `tag`, at most `throttle` running at
/// once; the script gets the tag as its argument.
pub fn sbatch_argv(
    spec: &LaunchSpec,
    opts: &SlurmOptions,
    script: &str,
    tag: &str,
    n: usize,
    throttle: usize,
) -> Vec<String> {
    let mut a = vec!["--parsable".to_string(), array_spec(n, throttle)];
    a.push(format!("--job-name={}", opts.job_name));
    // Worker ids are TAG-INDEX, so TAG-%a is exactly logs/<worker>.out|err. On TCP the nodes
    // cannot see the session dir (a path there fails the job's launch) and the worker streams
    // its output to the driver, which stores it in those files itself.
    let log = |stream| match spec.connect {
        Some(_) => "/dev/null".to_string(),
        None => spec
            .session
            .log(&format!("{tag}-%a"), stream)
            .display()
            .to_string(),
    };
    a.push(format!("--output={}", log(Stream::Stdout)));
    a.push(format!("--error={}", log(Stream::Stderr)));
    a.push(format!("--chdir={}", spec.cwd.display()));
    // A TCP session's token is set in sbatch's environment: ALL forwards it, a list must name it.
    match spec.connect.as_ref().map(|c| &c.token.0) {
        Some(var) if !opts.export.starts_with("ALL") && opts.export != "NONE" => {
            a.push(format!("--export={},{var}", opts.export))
        }
        Some(var) if opts.export == "NONE" => a.push(format!("--export={var}")),
        _ => a.push(format!("--export={}", opts.export)),
    }
    // shoal resubmits lost workers itself; a Slurm requeue would revive a worker id the
    // engine already buried.
    a.push("--no-requeue".into());
    a.push("--ntasks=1".into());
    // workers_per_job: one allocation for N workers of `cpus` and `memory` each.
    let n = opts.per_job.max(1) as u64;
    if opts.cpus.is_some() || n > 1 {
        let c = u64::from(opts.cpus.unwrap_or(1)) * n;
        a.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = opts.memory {
        a.push(format!("--mem={}M", m.megabytes() * n));
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
    a.push(tag.to_string());
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
            connect: None,
        }
    }

    #[test]
    fn directives_get_their_prefix() {
        let o = SlurmOptions::from_json(
            2,
            &json!({"extra_directives": ["--nice=5", "#SBATCH --comment=x", " "]}),
        )
        .unwrap();
        assert_eq!(directives(&o), ["#SBATCH --nice=5", "#SBATCH --comment=x"]);
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
        let a = sbatch_argv(&spec(), &o, "/shared/s/abc/slurm-worker.sh", "b2", 10, 4);
        assert_eq!(
            a,
            [
                "--parsable",
                "--array=0-9%4",
                "--job-name=jn",
                "--output=/shared/s/abc/logs/b2-%a.out",
                "--error=/shared/s/abc/logs/b2-%a.err",
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
                "b2",
            ]
        );
    }

    #[test]
    fn workers_per_job_scales_the_allocation() {
        let o = SlurmOptions::from_json(8, &json!({"workers_per_job": 4, "memory": "1G"})).unwrap();
        let a = sbatch_argv(&spec(), &o, "s.sh", "b1", 2, 2);
        assert!(a.contains(&"--cpus-per-task=4".to_string()), "{a:?}");
        assert!(a.contains(&"--mem=4096M".to_string()), "{a:?}");
        assert!(a.contains(&"--array=0-1".to_string()), "{a:?}");
        let o = SlurmOptions::from_json(8, &json!({"workers_per_job": 2, "cpus": 3})).unwrap();
        let a = sbatch_argv(&spec(), &o, "s.sh", "b1", 1, 1);
        assert!(a.contains(&"--cpus-per-task=6".to_string()), "{a:?}");
    }

    #[test]
    fn a_tcp_session_sends_the_job_output_nowhere_the_nodes_cannot_reach() {
        // The nodes cannot see the session dir: an --output there fails the launch
        // (JobLaunchFailure, 0:53 on the isolated cluster); the worker streams its output.
        let mut spec = spec();
        spec.connect = Some(crate::Connect {
            addr: "10.0.0.4:7000".into(),
            fingerprint: "fp".into(),
            token: ("SHOAL_TOKEN".into(), "secret".into()),
            token_file: (
                "SHOAL_TOKEN_FILE".into(),
                "/shared/s/abc/shoal-token".into(),
            ),
        });
        let o = SlurmOptions::from_json(1, &json!({})).unwrap();
        let a = sbatch_argv(&spec, &o, "s.sh", "b1", 2, 2);
        assert!(a.contains(&"--output=/dev/null".to_string()), "{a:?}");
        assert!(a.contains(&"--error=/dev/null".to_string()), "{a:?}");
        assert!(!a.iter().any(|x| x.contains("secret")), "{a:?}");
    }

    #[test]
    fn array_throttle() {
        assert_eq!(array_spec(3, 16), "--array=0-2");
        assert_eq!(array_spec(1000, 16), "--array=0-999%16");
    }
}
