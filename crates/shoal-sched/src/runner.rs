//! The one way backends run scheduler commands: every call has a deadline, a failure quotes
//! the command and the scheduler's own words, each program's calls are counted and timed, and
//! calls in flight can be aborted (cancelling a session never waits behind a hung `squeue`).
//!
//! A command runs in its own process group, so a wrapper script and whatever it started die
//! together on a timeout or an abort.

use crate::error::{Result, SchedError};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deadline of a call unless the caller gives one: long enough for a busy controller
/// (`sbatch` under load takes seconds), short enough that an outage is noticed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Words every timed-out call's error carries (the retry policy treats them as transient).
pub const TIMED_OUT: &str = "no answer within";
/// Words of a call killed by [`Abort::abort`].
pub const ABORTED: &str = "aborted: the session is being cancelled";

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// What the scheduler said, for an error message: stderr, else stdout, trimmed.
    pub fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        text.trim().to_string()
    }
}

/// Calls of one program, for the cost report (`SHOAL_SCHED_STATS=1`) and tests.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CallStats {
    pub calls: u64,
    /// Non-zero exits, timeouts and aborts.
    pub failures: u64,
    pub timeouts: u64,
    pub total: Duration,
    pub max: Duration,
}

/// Kills the calls in flight of every runner sharing it, and refuses new ones until
/// [`Abort::resume`].
#[derive(Debug, Default)]
pub struct Abort {
    aborted: AtomicBool,
    next: AtomicU64,
    children: Mutex<HashMap<u64, Child>>,
}

impl Abort {
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.values_mut() {
            kill_group(child);
        }
    }

    pub fn resume(&self) {
        self.aborted.store(false, Ordering::SeqCst);
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }
}

/// Runs one scheduler's client programs, found on PATH or in one directory (fault-injection
/// tests put fake `sbatch`/`qstat`/... there).
#[derive(Debug, Clone)]
pub struct Runner {
    bin: Option<PathBuf>,
    /// Arguments put before every call's own (HTCondor's `-pool P -name S`).
    prefix: Vec<String>,
    timeout: Duration,
    abort: Arc<Abort>,
    stats: Arc<Mutex<BTreeMap<String, CallStats>>>,
    /// What to tell a user whose program is missing.
    missing_hint: String,
    /// Extra environment of the calls (a TCP session's token for the submission to forward).
    env: Vec<(String, String)>,
}

impl Default for Runner {
    fn default() -> Self {
        Runner::new("put the scheduler's client commands on PATH")
    }
}

impl Runner {
    pub fn new(missing_hint: impl Into<String>) -> Runner {
        Runner {
            bin: None,
            prefix: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            abort: Arc::new(Abort::default()),
            stats: Arc::new(Mutex::new(BTreeMap::new())),
            missing_hint: missing_hint.into(),
            env: Vec::new(),
        }
    }

    /// Take the programs from `dir` instead of PATH.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Runner {
        self.bin = Some(dir.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Runner {
        self.timeout = timeout;
        self
    }

    pub fn with_prefix(mut self, args: Vec<String>) -> Runner {
        self.prefix = args;
        self
    }

    /// The same runner (shared statistics and abort) whose calls also get `env`.
    pub fn with_env(&self, env: Vec<(String, String)>) -> Runner {
        Runner {
            env,
            ..self.clone()
        }
    }

    /// The same runner (shared statistics and abort) with other leading arguments.
    pub fn prefixed(&self, args: Vec<String>) -> Runner {
        Runner {
            prefix: args,
            ..self.clone()
        }
    }

    pub fn bin_dir(&self) -> Option<&Path> {
        self.bin.as_deref()
    }

    pub fn abort_handle(&self) -> Arc<Abort> {
        self.abort.clone()
    }

    /// Where `name` would run from, if anywhere.
    pub fn find(&self, name: &str) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = match &self.bin {
            Some(d) => vec![d.clone()],
            None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect(),
        };
        dirs.into_iter()
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    }

    fn program(&self, name: &str) -> PathBuf {
        match &self.bin {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Run `name args`; a missing program, a timeout or an abort is an error, a non-zero exit
    /// is returned for the caller to judge.
    pub fn run(&self, name: &str, args: &[String]) -> Result<Output> {
        self.run_for(name, args, self.timeout)
    }

    /// Run and require success: the error quotes the command and what the scheduler said.
    pub fn check(&self, name: &str, args: &[String]) -> Result<Output> {
        let out = self.run(name, args)?;
        if out.ok {
            Ok(out)
        } else {
            Err(self.failed(name, args, &out.message()))
        }
    }

    /// The error of a failed call, in the one format every backend uses.
    pub fn failed(&self, name: &str, args: &[String], message: &str) -> SchedError {
        SchedError::Command {
            command: self.shown(name, args),
            message: message.to_string(),
        }
    }

    fn shown(&self, name: &str, args: &[String]) -> String {
        let mut parts = vec![name.to_string()];
        parts.extend(self.prefix.iter().cloned());
        parts.extend(args.iter().cloned());
        let mut s = parts.join(" ");
        // Long id lists make unreadable errors; the start says enough.
        if s.len() > 300 {
            s.truncate(floor_boundary(&s, 300));
            s.push_str(" ...");
        }
        s
    }

    pub fn run_for(&self, name: &str, args: &[String], timeout: Duration) -> Result<Output> {
        if self.abort.is_aborted() {
            return Err(self.failed(name, args, ABORTED));
        }
        let start = Instant::now();
        let result = self.spawn_and_wait(name, args, timeout);
        let took = start.elapsed();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(name.to_string()).or_default();
        s.calls += 1;
        s.total += took;
        s.max = s.max.max(took);
        match &result {
            Ok(out) if out.ok => {}
            Ok(_) => s.failures += 1,
            Err(SchedError::Command { message, .. }) if message.starts_with(TIMED_OUT) => {
                s.failures += 1;
                s.timeouts += 1;
            }
            Err(_) => s.failures += 1,
        }
        result
    }

    fn spawn_and_wait(&self, name: &str, args: &[String], timeout: Duration) -> Result<Output> {
        use std::os::unix::process::CommandExt;
        let mut all = self.prefix.clone();
        all.extend_from_slice(args);
        let child = Command::new(self.program(name))
            .args(&all)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    SchedError::Missing {
                        what: name.to_string(),
                        detail: "not on PATH".into(),
                        hint: self.missing_hint.clone(),
                    }
                } else {
                    self.failed(name, args, &e.to_string())
                }
            })?;
        let key = self.abort.next.fetch_add(1, Ordering::Relaxed);
        let (stdout, stderr) = {
            let mut children = self
                .abort
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut child = child;
            let pipes = (child.stdout.take(), child.stderr.take());
            children.insert(key, child);
            pipes
        };
        // Readers on threads: a large listing must not block the child on a full pipe.
        let out = reader(stdout);
        let err = reader(stderr);
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_micros(200);
        let status = loop {
            let mut children = self
                .abort
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let child = children
                .get_mut(&key)
                .expect("a child is removed only here");
            match child.try_wait() {
                Ok(Some(status)) => {
                    children.remove(&key);
                    break Ok(status);
                }
                Ok(None) if Instant::now() >= deadline => {
                    kill_group(child);
                    let _ = child.wait();
                    children.remove(&key);
                    break Err(format!("{TIMED_OUT} {} s (timed out)", timeout.as_secs()));
                }
                Ok(None) => {}
                Err(e) => {
                    kill_group(child);
                    let _ = child.wait();
                    children.remove(&key);
                    break Err(e.to_string());
                }
            }
            drop(children);
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        match status {
            Ok(_) if self.abort.is_aborted() => Err(self.failed(name, args, ABORTED)),
            Ok(status) => Ok(Output {
                ok: status.success(),
                stdout,
                stderr,
            }),
            Err(message) => Err(self.failed(name, args, &message)),
        }
    }

    /// Calls made so far, per program.
    pub fn stats(&self) -> BTreeMap<String, CallStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One line for people: `squeue 12x 18.2 ms avg (max 40.1 ms), ...`.
pub fn stats_line(calls: &BTreeMap<String, CallStats>) -> String {
    calls
        .iter()
        .map(|(name, s)| {
            let avg = s.total.as_secs_f64() * 1000.0 / s.calls.max(1) as f64;
            let mut line = format!(
                "{name} {}x {avg:.1} ms avg (max {:.1} ms)",
                s.calls,
                s.max.as_secs_f64() * 1000.0
            );
            if s.failures > 0 {
                line.push_str(&format!(", {} failed", s.failures));
            }
            if s.timeouts > 0 {
                line.push_str(&format!(", {} timed out", s.timeouts));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The largest char boundary at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// SIGKILL the child's process group (it leads its own group: `process_group(0)`). The child
/// is not yet reaped when this runs, so its pid cannot have been reused.
fn kill_group(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn output_errors_and_stats() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "ok", "echo out; echo err >&2");
        fake(
            t.path(),
            "bad",
            "echo 'sbatch: error: Invalid account' >&2; exit 1",
        );
        let r = Runner::new("load the module").in_dir(t.path());
        let o = r.run("ok", &[]).unwrap();
        assert!(o.ok && o.stdout == "out\n" && o.stderr == "err\n");
        let e = r.check("bad", &["-A".into(), "x".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad -A x failed: sbatch: error: Invalid account"
        );
        let e = r.run("nope", &[]).unwrap_err().to_string();
        assert!(
            e.contains("nope not found") && e.contains("load the module"),
            "{e}"
        );
        let s = r.stats();
        assert_eq!((s["ok"].calls, s["ok"].failures), (1, 0));
        assert_eq!((s["bad"].calls, s["bad"].failures), (1, 1));
        assert!(
            stats_line(&r.stats()).contains("bad 1x"),
            "{}",
            stats_line(&r.stats())
        );
    }

    #[test]
    fn a_hung_call_times_out_and_its_children_die() {
        let t = tempfile::tempdir().unwrap();
        let pidfile = t.path().join("pid");
        // A wrapper whose child holds the pipes: killing only the wrapper would hang us.
        fake(
            t.path(),
            "hang",
            &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
        );
        let r = Runner::default()
            .in_dir(t.path())
            .with_timeout(Duration::from_millis(300));
        let start = Instant::now();
        let e = r.run("hang", &[]).unwrap_err().to_string();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(e.contains(TIMED_OUT), "{e}");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Dead or a zombie (nothing reaps orphans here): either way not running.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        assert!(
            matches!(state, None | Some("Z") | Some("X")),
            "the hung call's child lives on: {stat}"
        );
        assert_eq!(r.stats()["hang"].timeouts, 1);
    }

    #[test]
    fn abort_kills_calls_in_flight_and_refuses_new_ones() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "hang", "sleep 30");
        fake(t.path(), "ok", "true");
        let r = Runner::default().in_dir(t.path());
        let abort = r.abort_handle();
        let r2 = r.clone();
        let call = std::thread::spawn(move || r2.run("hang", &[]));
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        abort.abort();
        let e = call.join().unwrap().unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(e.contains(ABORTED), "{e}");
        assert!(r.run("ok", &[]).unwrap_err().to_string().contains(ABORTED));
        abort.resume();
        assert!(r.run("ok", &[]).unwrap().ok);
    }
}
