//! The local backend: workers are child processes of the driver, on the same protocol as
//! cluster workers, so local tests exercise what cluster runs use.
//!
//! Each worker gets its own process group (a terminal's Ctrl-C reaches only the driver, which
//! then decides) and dies with the driver thread that spawned it (PR_SET_PDEATHSIG).

use crate::error::{Result, SchedError};
use crate::{LaunchSpec, Scheduler, WorkerEvent, WorkerState};
use shoal_core::layout::Stream;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct LocalScheduler {
    workers: usize,
    children: BTreeMap<String, Child>,
    /// Started since the last poll: reported as Running then.
    fresh: Vec<String>,
    seq: u64,
}

impl LocalScheduler {
    pub fn new(workers: usize) -> Result<Self> {
        if workers == 0 {
            return Err(SchedError::Config(
                "invalid value 0 for processes: a pool needs at least 1 worker".into(),
            ));
        }
        Ok(LocalScheduler {
            workers,
            children: BTreeMap::new(),
            fresh: Vec::new(),
            seq: 0,
        })
    }

    fn signal_group(child: &Child, sig: libc::c_int) {
        // Negative pid: the worker's whole process group, so subprocesses of tasks go too.
        unsafe {
            libc::kill(-(child.id() as libc::pid_t), sig);
        }
    }
}

impl Scheduler for LocalScheduler {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capacity(&self) -> usize {
        self.workers
    }

    fn keep_warm(&self) -> bool {
        true
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(20)
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<()> {
        if !spec.python.exists() {
            return Err(SchedError::Missing {
                what: "python_path".into(),
                detail: format!("{} does not exist", spec.python.display()),
                hint: "pass python_path= an interpreter that has shoal installed".into(),
            });
        }
        Ok(())
    }

    fn submit(&mut self, spec: &LaunchSpec, n: usize) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            self.seq += 1;
            let id = format!("w{:04}", self.seq);
            let argv = spec.worker_argv(Some(&id));
            let open = |stream| {
                let path = spec.session.log(&id, stream);
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| shoal_core::CoreError::io(path, e))
            };
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .current_dir(&spec.cwd)
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(open(Stream::Stdout)?)
                .stderr(open(Stream::Stderr)?);
            unsafe {
                cmd.pre_exec(|| {
                    libc::setpgid(0, 0);
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = spawn_retrying(&mut cmd).map_err(|e| SchedError::Command {
                command: argv.join(" "),
                message: e.to_string(),
            })?;
            self.children.insert(id.clone(), child);
            self.fresh.push(id.clone());
            ids.push(id);
        }
        Ok(ids)
    }

    fn poll(&mut self) -> Result<Vec<WorkerEvent>> {
        let mut events: Vec<WorkerEvent> = self
            .fresh
            .drain(..)
            .map(|worker| WorkerEvent {
                worker,
                state: WorkerState::Running,
            })
            .collect();
        let mut ended = Vec::new();
        for (id, child) in self.children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let state = match (status.code(), status.signal()) {
                    (Some(0), _) => WorkerState::Exited,
                    (Some(code), _) => WorkerState::Lost(format!("worker exited with code {code}")),
                    (None, Some(sig)) => WorkerState::Lost(format!(
                        "worker killed by signal {sig} ({})",
                        signame(sig)
                    )),
                    _ => WorkerState::Lost("worker ended abnormally".into()),
                };
                events.push(WorkerEvent {
                    worker: id.clone(),
                    state,
                });
                ended.push(id.clone());
            }
        }
        for id in ended {
            self.children.remove(&id);
        }
        Ok(events)
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        // Signal every worker first, then reap them: they die in parallel, so stopping a
        // pool costs one process exit, not one per worker.
        let mut dying = Vec::with_capacity(workers.len());
        for w in workers {
            if let Some(mut child) = self.children.remove(w) {
                Self::signal_group(&child, libc::SIGKILL);
                let _ = child.kill();
                dying.push(child);
            }
        }
        for mut child in dying {
            let _ = child.wait();
        }
        Ok(())
    }

    fn cancel_all(&mut self) -> Result<()> {
        let all: Vec<String> = self.children.keys().cloned().collect();
        self.cancel(&all)
    }
}

impl Drop for LocalScheduler {
    fn drop(&mut self) {
        let _ = self.cancel_all();
    }
}

/// Spawn, retrying briefly on ETXTBSY: an executable written moments ago may still be open
/// for writing in a child another thread forked and has not exec'd yet.
fn spawn_retrying(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn signame(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::SessionDir;

    fn spec(dir: &SessionDir, python: &str) -> LaunchSpec {
        LaunchSpec {
            session: dir.clone(),
            python: python.into(),
            env: vec![],
            cwd: std::env::temp_dir(),
        }
    }

    fn wait_events(s: &mut LocalScheduler, n: usize) -> Vec<WorkerEvent> {
        let mut all = vec![];
        for _ in 0..500 {
            all.extend(s.poll().unwrap());
            if all.len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        all
    }

    #[test]
    fn exit_codes_become_events() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        // `sh -m shoal.worker DIR --worker-id ID` is an error in sh: exercises the Lost path
        // with a real process; `true` ignores its arguments and exits 0.
        let mut s = LocalScheduler::new(2).unwrap();
        s.submit(&spec(&d, "/bin/true"), 1).unwrap();
        let ev = wait_events(&mut s, 2);
        assert_eq!(ev[0].state, WorkerState::Running);
        assert_eq!(ev[1].state, WorkerState::Exited);
        s.submit(&spec(&d, "/bin/false"), 1).unwrap();
        let ev = wait_events(&mut s, 2);
        assert_eq!(
            ev[1].state,
            WorkerState::Lost("worker exited with code 1".into())
        );
    }

    #[test]
    fn cancel_all_kills_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        let script = t.path().join("sleeper");
        std::fs::write(&script, "#!/bin/sh\nsleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut s = LocalScheduler::new(2).unwrap();
        let ids = s.submit(&spec(&d, script.to_str().unwrap()), 2).unwrap();
        assert_eq!(ids.len(), 2);
        let pids: Vec<u32> = s.children.values().map(|c| c.id()).collect();
        s.cancel_all().unwrap();
        for pid in pids {
            assert!(!shoal_core::fsutil::pid_alive(pid));
        }
        assert!(s
            .poll()
            .unwrap()
            .iter()
            .all(|e| e.state == WorkerState::Running));
        assert!(s.poll().unwrap().is_empty());
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        let mut s = LocalScheduler::new(1).unwrap();
        let e = s
            .preflight(&spec(&d, "/no/such/python"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/python") && e.contains("hint"), "{e}");
        assert!(LocalScheduler::new(0).is_err());
    }
}
