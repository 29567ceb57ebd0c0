//! The Slurm backend's options: parsed once from the Pool/Executor keywords (JSON) into
//! types, so that a bad time, size or list fails before anything is submitted.

use crate::error::{Result, SchedError};
use serde_json::Value;
use shoal_core::units::{MemSize, TimeLimit};
use shoal_core::CoreError;
use std::time::Duration;

/// Keywords this backend understands, for error messages.
pub const KNOWN: [&str; 16] = [
    "cpus",
    "memory",
    "time",
    "partition",
    "account",
    "qos",
    "gpus",
    "gres",
    "job_name",
    "sbatch_args",
    "extra_directives",
    "max_workers",
    "poll_interval",
    "export",
    "constraint",
    "reservation",
];

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
}

impl SlurmOptions {
    pub fn from_json(workers: usize, options: &Value) -> Result<Self> {
        let empty = serde_json::Map::new();
        let map = match options {
            Value::Object(m) => m,
            Value::Null => &empty,
            other => {
                return Err(config(format!(
                    "backend options must be a mapping, not {other}"
                )))
            }
        };
        for key in map.keys() {
            if !KNOWN.contains(&key.as_str()) {
                return Err(config(format!(
                    "unknown option {key:?} for the slurm backend\nhint: the slurm backend accepts {}; raw sbatch flags go in sbatch_args=[...]",
                    KNOWN.join(", ")
                )));
            }
        }
        // null means "not given", so callers can pass `partition=None`.
        let get = |k: &str| map.get(k).filter(|v| !v.is_null());
        let max_workers = match get("max_workers") {
            Some(v) => positive(v, "max_workers")? as usize,
            None => workers,
        };
        if max_workers == 0 {
            return Err(config(
                "invalid value 0 for workers: a pool needs at least 1 worker".into(),
            ));
        }
        let poll_interval = match get("poll_interval") {
            Some(v) => {
                let secs = v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        invalid("poll_interval", v, "must be a positive number of seconds")
                    })?;
                Duration::from_secs_f64(secs.max(0.1))
            }
            None => DEFAULT_POLL,
        };
        Ok(SlurmOptions {
            max_workers,
            cpus: get("cpus").map(|v| positive(v, "cpus")).transpose()?,
            memory: get("memory")
                .map(|v| MemSize::parse("memory", &scalar(v, "memory")?).map_err(SchedError::from))
                .transpose()?,
            time: get("time")
                .map(|v| TimeLimit::parse("time", &scalar(v, "time")?).map_err(SchedError::from))
                .transpose()?,
            partition: get("partition").map(|v| word(v, "partition")).transpose()?,
            account: get("account").map(|v| word(v, "account")).transpose()?,
            qos: get("qos").map(|v| word(v, "qos")).transpose()?,
            gpus: get("gpus").map(|v| positive(v, "gpus")).transpose()?,
            gres: get("gres").map(|v| word(v, "gres")).transpose()?,
            constraint: get("constraint")
                .map(|v| scalar(v, "constraint"))
                .transpose()?,
            reservation: get("reservation")
                .map(|v| word(v, "reservation"))
                .transpose()?,
            job_name: match get("job_name") {
                Some(v) => word(v, "job_name")?,
                None => "shoal".into(),
            },
            export: match get("export") {
                Some(v) => word(v, "export")?,
                None => "ALL".into(),
            },
            sbatch_args: get("sbatch_args")
                .map(|v| strings(v, "sbatch_args"))
                .transpose()?
                .unwrap_or_default(),
            extra_directives: get("extra_directives")
                .map(|v| strings(v, "extra_directives"))
                .transpose()?
                .unwrap_or_default(),
            poll_interval,
        })
    }
}

/// One squeue per second per session: quick enough to see a dead worker within two
/// intervals, and a negligible load on the controller (~10-30 ms per query).
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

fn config(msg: String) -> SchedError {
    SchedError::Config(msg)
}

fn invalid(option: &str, value: &Value, reason: &str) -> SchedError {
    SchedError::Core(CoreError::invalid(option, value, reason))
}

fn positive(v: &Value, option: &str) -> Result<u32> {
    v.as_u64()
        .filter(|n| *n > 0 && *n <= u64::from(u32::MAX))
        .map(|n| n as u32)
        .ok_or_else(|| invalid(option, v, "must be a positive integer"))
}

/// A string option; numbers are accepted as their text (`time=90`, `memory=512`).
fn scalar(v: &Value, option: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(invalid(option, v, "must be a string")),
    }
}

/// A name that goes into one sbatch argument: no whitespace, not empty.
fn word(v: &Value, option: &str) -> Result<String> {
    let s = scalar(v, option)?;
    let s = s.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(invalid(
            option,
            v,
            "must be a non-empty name without spaces",
        ));
    }
    Ok(s.to_string())
}

fn strings(v: &Value, option: &str) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(invalid(option, v, "must be a list of strings")),
            })
            .collect(),
        _ => Err(invalid(
            option,
            v,
            "must be a list of strings (e.g. [\"--exclusive\", \"--nice=10\"])",
        )),
    }
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
            (3, DEFAULT_POLL, "shoal")
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
            (json!({"sbatch_args": "--exclusive"}), "list of strings"),
            (json!({"poll_interval": -1}), "poll_interval"),
            (json!({"nodes": 2}), "unknown option \"nodes\""),
        ] {
            let e = SlurmOptions::from_json(1, &opts).unwrap_err().to_string();
            assert!(e.contains(needle), "{opts}: {e}");
        }
        assert!(SlurmOptions::from_json(0, &json!({})).is_err());
    }
}
