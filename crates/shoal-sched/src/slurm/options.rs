//! The Slurm backend's options: parsed once from the Pool/Executor keywords (JSON) into
//! types, so that a bad time, size or list fails before anything is submitted.

use crate::error::{Result, SchedError};
use crate::options::Opts;
use serde_json::Value;
use shoal_core::units::{MemSize, TimeLimit};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct SlurmOptions {
    /// Most workers running or queued at once (the `%N` array throttle as well).
    pub max_workers: usize,
    pub cpus: Option<u32>,
    pub memory: Option<MemSize>,
    pub time: Option<TimeLimit>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub gpus: Option<u32>,
    pub gres: Option<String>,
    pub constraint: Option<String>,
    pub reservation: Option<String>,
    pub job_name: String,
    /// `--export=` value; `ALL` forwards the driver's environment as Slurm does by default.
    pub export: String,
    /// Raw extra sbatch arguments, placed last so they win over shoal's own.
    pub sbatch_args: Vec<String>,
    /// Raw `#SBATCH` lines for the script (the prefix is added when missing).
    pub extra_directives: Vec<String>,
    pub poll_interval: Duration,
    /// Worker processes per job (`workers_per_job`).
    pub per_job: usize,
}

impl SlurmOptions {
    /// Keys and their types come from the registry; this only turns them into fields.
    pub fn from_json(workers: usize, options: &Value) -> Result<Self> {
        let o = Opts::new("slurm", options)?;
        let max_workers = o.count("max_workers")?.map_or(workers, |n| n as usize);
        if max_workers == 0 {
            return Err(SchedError::Config(
                "invalid value 0 for workers: a pool needs at least 1 worker".into(),
            ));
        }
        Ok(SlurmOptions {
            max_workers,
            cpus: o.count("cpus")?,
            memory: o.memory("memory")?,
            time: o.time("time")?,
            partition: o.name("partition")?,
            account: o.name("account")?,
            qos: o.name("qos")?,
            gpus: o.count("gpus")?,
            gres: o.name("gres")?,
            constraint: o.text("constraint")?,
            reservation: o.name("reservation")?,
            job_name: o.name("job_name")?.unwrap_or_else(|| "shoal".into()),
            export: o.name("export")?.unwrap_or_else(|| "ALL".into()),
            sbatch_args: o.args("sbatch_args")?,
            extra_directives: o.lines("extra_directives")?,
            poll_interval: o
                .seconds("poll_interval")?
                .map_or(default_poll(), |d| d.max(Duration::from_millis(100))),
            per_job: o.count("workers_per_job")?.map_or(1, |n| n as usize),
        })
    }
}

/// The registry's default: one squeue per second per session, quick enough to see a dead
/// worker within two intervals and a negligible load on the controller (~10-30 ms a query).
pub fn default_poll() -> Duration {
    crate::registry::known("slurm").default_poll()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_option() {
        let o = SlurmOptions::from_json(
            4,
            &json!({"cpus": 2, "memory": "1Gb", "time": "10m", "partition": "short",
                    "account": "proj", "qos": "low", "gpus": 1, "job_name": "x",
                    "sbatch_args": ["--exclusive"], "extra_directives": ["--nice=5"],
                    "poll_interval": 0.5, "max_workers": 8, "gres": null}),
        )
        .unwrap();
        assert_eq!(o.max_workers, 8);
        assert_eq!(o.cpus, Some(2));
        assert_eq!(o.memory.unwrap().megabytes(), 1024);
        assert_eq!(o.time.unwrap().0.as_secs(), 600);
        assert_eq!(o.partition.as_deref(), Some("short"));
        assert_eq!(o.gres, None);
        assert_eq!(o.poll_interval, Duration::from_millis(500));
        assert_eq!(o.export, "ALL");
        let d = SlurmOptions::from_json(3, &json!({})).unwrap();
        assert_eq!(
            (d.max_workers, d.poll_interval, d.job_name.as_str()),
            (3, Duration::from_secs(1), "shoal")
        );
    }

    #[test]
    fn bad_values_quote_the_value() {
        for (opts, needle) in [
            (json!({"time": "soon"}), "\"soon\""),
            (json!({"memory": "lots"}), "\"lots\""),
            (json!({"cpus": 0}), "cpus"),
            (json!({"cpus": "two"}), "cpus"),
            (json!({"partition": "a b"}), "partition"),
            (json!({"sbatch_args": 3}), "list of strings"),
            (json!({"poll_interval": -1}), "poll_interval"),
            (json!({"nodes": 2}), "option \"nodes\" does not apply"),
            (json!({"partiton": "x"}), "did you mean `partition`?"),
        ] {
            let e = SlurmOptions::from_json(1, &opts).unwrap_err().to_string();
            assert!(e.contains(needle), "{opts}: {e}");
        }
        assert!(SlurmOptions::from_json(0, &json!({})).is_err());
    }
}
