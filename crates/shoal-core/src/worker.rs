//! The worker side of the protocol: identify this worker, announce it, heartbeat from a
//! background thread (so a task holding the GIL for hours still counts as alive), and wait
//! for chunks until told to stop, idle for too long, or the driver is gone.

use crate::error::{CoreError, Result};
use crate::fsutil::{hostname, now_secs, read_json, write_json};
use crate::layout::{valid_worker_id, SessionDir};
use crate::protocol::{ChunkHeader, Claimer, ResultHeader};
use crate::watch::DirWatch;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the driver tells every worker, written once to `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Exit after this long without work (None: wait until stopped).
    #[serde(default)]
    pub idle_timeout: Option<f64>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: f64,
    /// Exit when the driver's heartbeat is older than this (None: never).
    #[serde(default)]
    pub driver_timeout: Option<f64>,
    /// Longest pause between looks at `pending/` while idle. Same-host changes wake the
    /// worker at once (inotify); this bounds how late it notices chunks written elsewhere.
    #[serde(default = "default_poll_max")]
    pub poll_max: f64,
    /// Settings only the Python worker reads (initializer, sys.path, ...).
    #[serde(default)]
    pub python: serde_json::Value,
}

fn default_heartbeat() -> f64 {
    10.0
}

fn default_poll_max() -> f64 {
    0.05
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            idle_timeout: None,
            heartbeat_interval: default_heartbeat(),
            driver_timeout: None,
            poll_max: default_poll_max(),
            python: serde_json::Value::Null,
        }
    }
}

impl SessionDir {
    pub fn write_config(&self, config: &WorkerConfig) -> Result<()> {
        write_json(&self.config_file(), config)
    }

    pub fn read_config(&self) -> Result<WorkerConfig> {
        read_json(&self.config_file())
    }
}

/// The worker id: given explicitly, or from the scheduler's array-task environment, or
/// host-pid as a last resort.
pub fn resolve_worker_id(explicit: Option<&str>) -> Result<String> {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty() && v != "undefined")
    };
    let id = explicit.map(str::to_string).or_else(|| {
        // What the backends' job scripts set (the lead's protocol keeps only this source).
        if let Some(id) = env("SHOAL_WORKER_ID") {
            return Some(id);
        }
        if let (Some(j), Some(t)) = (env("SLURM_ARRAY_JOB_ID"), env("SLURM_ARRAY_TASK_ID")) {
            return Some(format!("{j}_{t}"));
        }
        if let Some(j) = env("SLURM_JOB_ID") {
            return Some(j);
        }
        if let (Some(j), Some(t)) = (env("JOB_ID"), env("SGE_TASK_ID")) {
            return Some(format!("{j}.{t}"));
        }
        None
    });
    let id = id.unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    if !valid_worker_id(&id) {
        return Err(CoreError::invalid(
            "worker id",
            &id,
            "use letters, digits, '_', '-' and '.' only",
        ));
    }
    Ok(id)
}

/// What a worker announces in `workers/ID.json` when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub worker: String,
    pub host: String,
    pub pid: u32,
    #[serde(default)]
    pub started: f64,
}

impl SessionDir {
    /// Every worker that announced itself; unreadable records are skipped.
    pub fn worker_infos(&self) -> Vec<WorkerInfo> {
        crate::fsutil::list_names(&self.sub("workers"))
            .unwrap_or_default()
            .iter()
            .filter(|n| n.ends_with(".json"))
            .filter_map(|n| read_json(&self.sub("workers").join(n)).ok())
            .collect()
    }
}

/// Why `next_chunk` returned no chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    Stopped,
    Idle,
    DriverGone,
    Timeout,
}

pub struct WorkerSession {
    dir: SessionDir,
    claimer: Claimer,
    config: WorkerConfig,
    beating: Arc<AtomicBool>,
    beat_thread: Option<JoinHandle<()>>,
    watch: DirWatch,
}

impl WorkerSession {
    pub fn open(root: impl Into<std::path::PathBuf>, worker_id: Option<&str>) -> Result<Self> {
        let dir = SessionDir::open(root);
        let config = dir.read_config()?;
        let id = resolve_worker_id(worker_id)?;
        let info = WorkerInfo {
            worker: id.clone(),
            host: hostname(),
            pid: std::process::id(),
            started: now_secs(),
        };
        write_json(&dir.worker_info(&id), &info)?;
        dir.beat(&dir.heartbeat(&id))?;
        let beating = Arc::new(AtomicBool::new(true));
        let beat_thread = {
            let (dir, id, beating) = (dir.clone(), id.clone(), beating.clone());
            let every = Duration::from_secs_f64(config.heartbeat_interval.max(0.05));
            std::thread::Builder::new()
                .name("shoal-heartbeat".into())
                .spawn(move || {
                    let mut last = Instant::now();
                    while beating.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50).min(every));
                        if last.elapsed() >= every {
                            last = Instant::now();
                            let _ = dir.beat(&dir.heartbeat(&id));
                        }
                    }
                })
                .ok()
        };
        Ok(WorkerSession {
            watch: DirWatch::new(&[&dir.sub("pending"), &dir.sub("control")]),
            claimer: Claimer::new(dir.clone(), id),
            dir,
            config,
            beating,
            beat_thread,
        })
    }

    pub fn id(&self) -> &str {
        self.claimer.worker()
    }

    pub fn dir(&self) -> &SessionDir {
        &self.dir
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Wait for the next chunk. `wait` bounds this call (None: as long as the config allows).
    pub fn next_chunk(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<std::result::Result<(ChunkHeader, Vec<u8>), ExitReason>> {
        let start = Instant::now();
        let idle = self.config.idle_timeout.map(Duration::from_secs_f64);
        let mut sleep = Duration::from_micros(200);
        let poll_max = Duration::from_secs_f64(self.config.poll_max.max(0.001));
        let mut last_check = Instant::now() - Duration::from_secs(1);
        loop {
            if let Some(c) = self.claimer.try_claim()? {
                return Ok(Ok(c));
            }
            if last_check.elapsed() >= Duration::from_millis(100) {
                last_check = Instant::now();
                if self.dir.control("stop").exists() {
                    return Ok(Err(ExitReason::Stopped));
                }
                if let Some(limit) = self.config.driver_timeout {
                    if self
                        .dir
                        .age_of(&self.dir.control("driver.hb"))
                        .is_some_and(|a| a > limit)
                    {
                        return Ok(Err(ExitReason::DriverGone));
                    }
                }
            }
            let waited = start.elapsed();
            if idle.is_some_and(|i| waited >= i) {
                return Ok(Err(ExitReason::Idle));
            }
            if wait.is_some_and(|w| waited >= w) {
                return Ok(Err(ExitReason::Timeout));
            }
            if self.watch.wait(sleep) {
                sleep = Duration::from_micros(200);
            } else {
                sleep = (sleep * 2).min(poll_max);
            }
        }
    }

    pub fn complete(&self, header: &ResultHeader, payload: &[u8]) -> Result<()> {
        self.claimer.complete(header, payload)
    }
}

impl Drop for WorkerSession {
    fn drop(&mut self) {
        self.beating.store(false, Ordering::Relaxed);
        if let Some(t) = self.beat_thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_claims_then_stops() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        d.write_config(&WorkerConfig {
            heartbeat_interval: 0.05,
            ..Default::default()
        })
        .unwrap();
        d.put_chunk(
            &ChunkHeader {
                chunk: 0,
                first_task: 0,
                ntasks: 1,
            },
            b"p",
        )
        .unwrap();
        let mut w = WorkerSession::open(d.root(), Some("w1")).unwrap();
        let (h, _) = w.next_chunk(None).unwrap().unwrap();
        assert_eq!(h.chunk, 0);
        assert!(d.worker_info("w1").exists());
        let infos = d.worker_infos();
        assert_eq!((infos.len(), infos[0].worker.as_str()), (1, "w1"));
        assert_eq!(infos[0].pid, std::process::id());
        assert_eq!(
            w.next_chunk(Some(Duration::from_millis(30))).unwrap(),
            Err(ExitReason::Timeout)
        );
        std::thread::sleep(Duration::from_millis(150));
        assert!(d.age_of(&d.heartbeat("w1")).unwrap() < 0.5);
        d.beat(&d.control("stop")).unwrap();
        assert_eq!(w.next_chunk(None).unwrap(), Err(ExitReason::Stopped));
    }

    #[test]
    fn idle_timeout_and_bad_ids() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        d.write_config(&WorkerConfig {
            idle_timeout: Some(0.05),
            ..Default::default()
        })
        .unwrap();
        let mut w = WorkerSession::open(d.root(), Some("w1")).unwrap();
        assert_eq!(w.next_chunk(None).unwrap(), Err(ExitReason::Idle));
        assert!(WorkerSession::open(d.root(), Some("a/b")).is_err());
    }
}
