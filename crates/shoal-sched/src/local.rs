//! The local backend: workers are child processes of the driver, on the same protocol as
//! cluster workers, so local tests exercise what cluster runs use.
//!
//! A worker is forked by the driver's template process when the pool runs the driver's own
//! interpreter ([`template`], a cold pool in a few milliseconds), and spawned otherwise: the
//! one rule is [`template::forks`]. Either way it gets its own process group (a terminal's
//! Ctrl-C reaches only the driver, which then decides) and dies with its parent
//! (PR_SET_PDEATHSIG): the template, which dies with the driver, or the supervisor's thread,
//! which lives as long as the session. A worker stopped by a signal (state `T` in
//! /proc/PID/stat, e.g. after SIGSTOP) is reported `Suspended` until it runs again.

use crate::error::{Result, SchedError};
use crate::supervisor::{Backend, Batch, IdScheme};
use crate::{LaunchSpec, WorkerEvent, WorkerState};
use shoal_core::layout::Stream;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod template;
pub use template::DISABLE as TEMPLATE_ENV;

/// A worker process: spawned (our child) or forked by the template (its child).
enum Proc {
    Spawned(Child),
    Forked(u32),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Spawned(child) => child.id(),
            Proc::Forked(pid) => *pid,
        }
    }
}

struct Worker {
    proc: Proc,
    stopped: bool,
}

pub struct LocalBackend {
    workers: usize,
    children: BTreeMap<String, Worker>,
    /// Started since the last poll: reported as Running then.
    fresh: Vec<String>,
    /// This backend's connection to the template, once a worker was forked.
    template: Option<template::Conn>,
}

/// Whether the process is stopped by a signal (`T`) or a tracer (`t`), from /proc/PID/stat.
pub fn is_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the state follows the
    // last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

impl LocalBackend {
    pub fn new(workers: usize) -> Result<Self> {
        if workers == 0 {
            return Err(SchedError::Config(
                "invalid value 0 for processes: a pool needs at least 1 worker".into(),
            ));
        }
        Ok(LocalBackend {
            workers,
            children: BTreeMap::new(),
            fresh: Vec::new(),
            template: None,
        })
    }

    /// Ask the template to fork the batch's workers; false (nothing started) when this spec's
    /// workers are to be spawned, or the template cannot fork them.
    fn fork(&mut self, spec: &LaunchSpec, batch: &Batch) -> bool {
        let Some(env) = template::forks(spec, &mut self.template) else {
            return false;
        };
        let Some(conn) = self.template.as_mut() else {
            return false;
        };
        let argvs: Vec<Vec<String>> = batch
            .ids
            .iter()
            .map(|id| spec.worker_argv(Some(id)))
            .collect();
        let logs: Vec<_> = batch
            .ids
            .iter()
            .map(|id| {
                (
                    spec.session.log(id, Stream::Stdout),
                    spec.session.log(id, Stream::Stderr),
                )
            })
            .collect();
        let forks: Vec<template::Fork<'_>> = batch
            .ids
            .iter()
            .zip(&argvs)
            .zip(&logs)
            .map(|((id, argv), (out, err))| template::Fork {
                id,
                argv,
                stdout: out,
                stderr: err,
            })
            .collect();
        let Ok(pids) = conn.fork(&forks, &env, &spec.cwd) else {
            return false;
        };
        for (id, pid) in batch.ids.iter().zip(pids) {
            self.children.insert(
                id.clone(),
                Worker {
                    proc: Proc::Forked(pid),
                    stopped: false,
                },
            );
            self.fresh.push(id.clone());
        }
        true
    }
}

/// Kill the worker's whole process group, so subprocesses of tasks go too, and the worker
/// itself should it not have made its group yet.
fn kill_group(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// A worker's end as the user reads it.
fn ended(code: Option<i32>, signal: Option<i32>) -> WorkerState {
    match (code, signal) {
        (Some(0), _) => WorkerState::Exited,
        (Some(code), _) => WorkerState::Lost(format!("worker exited with code {code}")),
        (None, Some(sig)) => {
            WorkerState::Lost(format!("worker killed by signal {sig} ({})", signame(sig)))
        }
        _ => WorkerState::Lost("worker ended abnormally".into()),
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn capacity(&self) -> usize {
        self.workers
    }

    fn poll_interval(&self) -> Duration {
        crate::registry::known("local").default_poll()
    }

    fn ids(&self) -> IdScheme {
        IdScheme::Sequential
    }

    fn preflight(&mut self, spec: &LaunchSpec) -> Result<Vec<String>> {
        if !spec.python.exists() {
            return Err(SchedError::Missing {
                what: "python_path".into(),
                detail: format!("{} does not exist", spec.python.display()),
                hint: "pass python_path= an interpreter that has shoal installed".into(),
            });
        }
        Ok(Vec::new())
    }

    fn submit(&mut self, spec: &LaunchSpec, batch: &Batch) -> Result<()> {
        if self.fork(spec, batch) {
            return Ok(());
        }
        for id in &batch.ids {
            let id = id.clone();
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
                .envs(spec.secret_env())
                .stdin(Stdio::null())
                .stdout(open(Stream::Stdout)?)
                .stderr(open(Stream::Stderr)?);
            cmd.process_group(0);
            // SAFETY: one async-signal-safe syscall between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))
                    .map_err(std::io::Error::from)
                });
            }
            let child = spawn_retrying(&mut cmd).map_err(|e| SchedError::Command {
                command: argv.join(" "),
                message: e.to_string(),
            })?;
            self.children.insert(
                id.clone(),
                Worker {
                    proc: Proc::Spawned(child),
                    stopped: false,
                },
            );
            self.fresh.push(id);
        }
        Ok(())
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
        let mut forked_ended = self
            .template
            .as_mut()
            .map(|t| t.ended())
            .unwrap_or_default();
        let mut gone = Vec::new();
        for (id, w) in self.children.iter_mut() {
            let state = match &mut w.proc {
                Proc::Spawned(child) => match child.try_wait() {
                    Ok(Some(status)) => Some(ended(status.code(), status.signal())),
                    _ => None,
                },
                Proc::Forked(_) => forked_ended.remove(id).map(|e| match e {
                    template::Ended::Code(code) => ended(Some(code), None),
                    template::Ended::Signal(sig) => ended(None, Some(sig)),
                    template::Ended::TemplateGone => {
                        WorkerState::Lost("the local template process ended".into())
                    }
                }),
            };
            if let Some(state) = state {
                events.push(WorkerEvent {
                    worker: id.clone(),
                    state,
                });
                gone.push(id.clone());
                continue;
            }
            let stopped = is_stopped(w.proc.pid());
            if stopped != w.stopped {
                w.stopped = stopped;
                events.push(WorkerEvent {
                    worker: id.clone(),
                    state: if stopped {
                        WorkerState::Suspended
                    } else {
                        WorkerState::Running
                    },
                });
            }
        }
        for id in gone {
            self.children.remove(&id);
        }
        Ok(events)
    }

    fn cancel(&mut self, workers: &[String]) -> Result<()> {
        // Signal every worker first, then reap them: they die in parallel, so stopping a
        // pool costs one process exit, not one per worker.
        let mut dying = Vec::with_capacity(workers.len());
        let mut forked = BTreeSet::new();
        let mut forked_pids = Vec::new();
        for id in workers {
            if let Some(w) = self.children.remove(id) {
                match w.proc {
                    Proc::Spawned(child) => {
                        kill_group(child.id());
                        dying.push(child);
                    }
                    Proc::Forked(pid) => {
                        forked.insert(id.clone());
                        forked_pids.push(pid);
                    }
                }
            }
        }
        if let Some(t) = self.template.as_mut() {
            if !t.kill(&forked) {
                forked_pids.iter().for_each(|pid| kill_group(*pid));
            }
        }
        for mut child in dying {
            let _ = child.wait();
        }
        if let Some(t) = self.template.as_mut() {
            t.wait(&forked);
        }
        Ok(())
    }

    fn cancel_all(&mut self) -> Result<()> {
        let all: Vec<String> = self.children.keys().cloned().collect();
        self.cancel(&all)
    }

    fn job_ids(&self) -> Vec<String> {
        Vec::new()
    }
}

impl Drop for LocalBackend {
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
            connect: None,
        }
    }

    fn batch(ids: &[&str]) -> Batch {
        Batch {
            number: 1,
            ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn wait_events(s: &mut LocalBackend, n: usize) -> Vec<WorkerEvent> {
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

    fn sleeper(t: &tempfile::TempDir) -> String {
        let script = t.path().join("sleeper");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        script.display().to_string()
    }

    #[test]
    fn exit_codes_become_events() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        // `sh -m shoal.worker DIR --worker-id ID` is an error in sh: exercises the Lost path
        // with a real process; `true` ignores its arguments and exits 0.
        let mut s = LocalBackend::new(2).unwrap();
        s.submit(&spec(&d, "/bin/true"), &batch(&["w0001"]))
            .unwrap();
        let ev = wait_events(&mut s, 2);
        assert_eq!(ev[0].state, WorkerState::Running);
        assert_eq!(ev[1].state, WorkerState::Exited);
        s.submit(&spec(&d, "/bin/false"), &batch(&["w0002"]))
            .unwrap();
        let ev = wait_events(&mut s, 2);
        assert_eq!(
            ev[1],
            WorkerEvent {
                worker: "w0002".into(),
                state: WorkerState::Lost("worker exited with code 1".into())
            }
        );
    }

    #[test]
    fn a_stopped_worker_is_suspended_until_it_runs_again() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        let mut s = LocalBackend::new(1).unwrap();
        s.submit(&spec(&d, &sleeper(&t)), &batch(&["w0001"]))
            .unwrap();
        assert_eq!(wait_events(&mut s, 1)[0].state, WorkerState::Running);
        let pid = rustix::process::Pid::from_raw(s.children["w0001"].proc.pid() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        assert_eq!(wait_events(&mut s, 1)[0].state, WorkerState::Suspended);
        assert!(is_stopped(pid.as_raw_nonzero().get() as u32));
        rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
        assert_eq!(wait_events(&mut s, 1)[0].state, WorkerState::Running);
        s.cancel_all().unwrap();
    }

    #[test]
    fn cancel_all_kills_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        let mut s = LocalBackend::new(2).unwrap();
        s.submit(&spec(&d, &sleeper(&t)), &batch(&["w0001", "w0002"]))
            .unwrap();
        let pids: Vec<u32> = s.children.values().map(|w| w.proc.pid()).collect();
        assert_eq!(pids.len(), 2);
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
        let mut s = LocalBackend::new(1).unwrap();
        let e = s
            .preflight(&spec(&d, "/no/such/python"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/python") && e.contains("hint"), "{e}");
        assert!(LocalBackend::new(0).is_err());
    }
}
