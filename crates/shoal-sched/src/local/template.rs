//! The template process: one `python -m shoal._template` per driver process and interpreter,
//! started at the first pool that can use it and kept while the driver lives, so every later
//! pool's workers are forked from a process that has already imported shoal (a worker ready in
//! ~1 ms instead of a fresh interpreter's ~25 ms of imports). The protocol is described in
//! python/shoal/_template.py.
//!
//! The template's stdin is the *lifeline*, a Unix socket whose other end this process holds
//! until it exits: when the driver ends, however it ends (`kill -9` too), the template reads end
//! of file, kills its workers and exits; should it be killed itself, its workers die with it
//! (PR_SET_PDEATHSIG). Each local backend gets a
//! connection of its own (a socket pair whose far end is passed over the lifeline), and the
//! template kills a connection's workers when it closes.

use crate::LaunchSpec;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set to `0` to spawn every local worker (what the template replaces, e.g. to compare).
pub const DISABLE: &str = "SHOAL_LOCAL_TEMPLATE";
/// Bytes of command line a forked worker can show (its spawned twin's argv, with room to spare).
const TITLE_ROOM: usize = 1024;
/// How long a fork request may wait for the template (its first one waits for its imports).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `cancel` waits for the template to report killed workers' exits.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

struct Template {
    lifeline: UnixStream,
    child: Child,
    /// The variables a fresh interpreter reads at start, as the template started with them.
    start_env: Vec<(String, String)>,
}

/// Templates by interpreter; `None`: it could not start or has died, so that interpreter's
/// workers are spawned.
static TEMPLATES: Mutex<BTreeMap<PathBuf, Option<Template>>> = Mutex::new(BTreeMap::new());

/// Variables that change what an interpreter does before it runs any code (its path, its
/// flags, its libraries, its streams' encoding): a worker that needs other values than the
/// template's is spawned.
fn read_at_start(key: &str) -> bool {
    key.starts_with("PYTHON") || key.starts_with("LD_") || key.starts_with("LC_") || key == "LANG"
}

fn start_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<_> = env
        .iter()
        .filter(|(k, _)| read_at_start(k))
        .cloned()
        .collect();
    out.sort();
    out
}

/// The environment a spawned worker would have: this process's, then the spec's.
pub(super) fn worker_env(spec: &LaunchSpec) -> Option<Vec<(String, String)>> {
    let mut env = BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        env.insert(k.into_string().ok()?, v.into_string().ok()?);
    }
    env.extend(spec.env.iter().cloned());
    env.extend(spec.secret_env());
    Some(env.into_iter().collect())
}

/// Whether `python` is the interpreter this process runs (a pool in a Python driver that
/// kept the default `python_path`, or named its own interpreter).
fn is_this_interpreter(python: &Path) -> bool {
    match (std::fs::canonicalize(python), std::env::current_exe()) {
        (Ok(a), Ok(b)) => std::fs::canonicalize(b).is_ok_and(|b| a == b),
        _ => false,
    }
}

fn start(spec: &LaunchSpec) -> io::Result<Template> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = Command::new(&spec.python);
    // Blank room the forked workers write their own command lines over (ps shows theirs).
    cmd.args(["-m", "shoal._template", &" ".repeat(TITLE_ROOM)])
        .current_dir(&spec.cwd)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .process_group(0);
    let child = cmd.spawn()?;
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    Ok(Template {
        lifeline: ours,
        child,
        start_env: start_env(&env),
    })
}

impl Template {
    /// A new connection for one backend, its far end passed to the template.
    fn connect(&mut self) -> io::Result<UnixStream> {
        if self.child.try_wait()?.is_some() {
            return Err(io::Error::other("the template process has ended"));
        }
        let (ours, theirs) = UnixStream::pair()?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [theirs.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        sendmsg(
            &self.lifeline,
            &[IoSlice::new(b"c")],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        Ok(ours)
    }
}

/// The one rule for how a local worker starts: forked by the template when `spec` runs this
/// process's interpreter with the interpreter-start variables the template has (and
/// [`DISABLE`] is not `0`), spawned otherwise. A TCP session's workers are spawned too: their
/// token must be in their environment as the kernel shows it (/proc/PID/environ), as on a
/// cluster, which a fork cannot give. When forking applies, returns the workers' environment,
/// with `conn` (the backend's connection) made if it was not yet.
pub(super) fn forks(spec: &LaunchSpec, conn: &mut Option<Conn>) -> Option<Vec<(String, String)>> {
    if std::env::var(DISABLE).is_ok_and(|v| v == "0")
        || spec.connect.is_some()
        || !is_this_interpreter(&spec.python)
    {
        return None;
    }
    let env = worker_env(spec)?;
    let mut templates = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    let slot = templates
        .entry(spec.python.clone())
        .or_insert_with(|| start(spec).ok());
    let template = slot.as_mut()?;
    if template.start_env != start_env(&env) {
        return None;
    }
    match conn {
        // This backend's template ended or hung: its later workers are spawned.
        Some(c) if c.closed || c.gave_up => return None,
        Some(_) => return Some(env),
        None => {}
    }
    match template.connect() {
        Ok(sock) => {
            *conn = Some(Conn::new(sock));
            Some(env)
        }
        Err(_) => {
            *slot = None;
            None
        }
    }
}

#[derive(Serialize)]
struct Request<'a> {
    id: &'a str,
    argv: &'a [String],
    env: &'a [(String, String)],
    cwd: &'a Path,
    stdout: &'a Path,
    stderr: &'a Path,
}

#[derive(Deserialize)]
struct Reply {
    id: String,
    pid: Option<u32>,
    code: Option<i32>,
    signal: Option<i32>,
    error: Option<String>,
}

/// How a forked worker ended, as its parent (the template) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Code(i32),
    Signal(i32),
    /// The template is gone (its workers died with it).
    TemplateGone,
}

/// One backend's connection to the template.
pub(super) struct Conn {
    sock: UnixStream,
    buf: Vec<u8>,
    ended: BTreeMap<String, Ended>,
    /// Workers forked on this connection and not yet reported ended.
    live: BTreeSet<String>,
    closed: bool,
    /// It did not answer a fork request in time.
    gave_up: bool,
}

/// What the backend asks for one worker.
pub(super) struct Fork<'a> {
    pub id: &'a str,
    pub argv: &'a [String],
    pub stdout: &'a Path,
    pub stderr: &'a Path,
}

impl Conn {
    fn new(sock: UnixStream) -> Self {
        Conn {
            sock,
            buf: Vec::new(),
            ended: BTreeMap::new(),
            live: BTreeSet::new(),
            closed: false,
            gave_up: false,
        }
    }

    /// Fork these workers; their pids in order, or why the template could not.
    pub(super) fn fork(
        &mut self,
        workers: &[Fork<'_>],
        env: &[(String, String)],
        cwd: &Path,
    ) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        for w in workers {
            let req = Request {
                id: w.id,
                argv: w.argv,
                env,
                cwd,
                stdout: w.stdout,
                stderr: w.stderr,
            };
            serde_json::to_writer(&mut out, &req)?;
            out.push(b'\n');
        }
        self.sock.write_all(&out)?;
        let mut pids: BTreeMap<String, u32> = BTreeMap::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while pids.len() < workers.len() {
            if Instant::now() > deadline {
                // A template stuck importing: this batch is spawned, and so are later ones.
                self.gave_up = true;
                pids.values().for_each(|pid| super::kill_group(*pid));
                return Err(io::Error::other("the template did not answer"));
            }
            for reply in self.read(true)? {
                if let Some(pid) = reply.pid {
                    self.live.insert(reply.id.clone());
                    pids.insert(reply.id, pid);
                } else if let Some(error) = reply.error {
                    // The batch is spawned instead: none of it may stay forked.
                    for pid in pids.values() {
                        super::kill_group(*pid);
                    }
                    return Err(io::Error::other(format!(
                        "the template cannot fork: {error}"
                    )));
                } else {
                    self.record_end(reply);
                }
            }
            if self.closed {
                return Err(io::Error::other("the template process has ended"));
            }
        }
        Ok(workers.iter().map(|w| pids[w.id]).collect())
    }

    fn record_end(&mut self, reply: Reply) {
        let ended = match (reply.code, reply.signal) {
            (_, Some(sig)) => Ended::Signal(sig),
            (Some(code), None) => Ended::Code(code),
            (None, None) => return,
        };
        self.live.remove(&reply.id);
        self.ended.insert(reply.id, ended);
    }

    /// Read what the template sent: at least one complete line if `block`, else what is
    /// there. End of file marks the connection closed.
    fn read(&mut self, block: bool) -> io::Result<Vec<Reply>> {
        self.sock.set_nonblocking(!block)?;
        let mut chunk = [0u8; 8192];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.ends_with(b"\n") {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let end = self
            .buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let lines: Vec<u8> = self.buf.drain(..end).collect();
        lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).map_err(io::Error::other))
            .collect()
    }

    /// Workers that ended since the last call.
    pub(super) fn ended(&mut self) -> BTreeMap<String, Ended> {
        if !self.closed {
            match self.read(false) {
                Ok(replies) => replies.into_iter().for_each(|r| self.record_end(r)),
                Err(_) => self.closed = true,
            }
        }
        if self.closed {
            for id in std::mem::take(&mut self.live) {
                self.ended.insert(id, Ended::TemplateGone);
            }
        }
        std::mem::take(&mut self.ended)
    }

    /// Have the template kill these workers' process groups (it first takes over their
    /// inotify descriptors, whose teardown would slow each exit by ~10 ms). False if it
    /// cannot be asked.
    pub(super) fn kill(&mut self, workers: &BTreeSet<String>) -> bool {
        let mut out = Vec::new();
        for id in workers {
            let _ = serde_json::to_writer(&mut out, &serde_json::json!({ "kill": id }));
            out.push(b'\n');
        }
        !self.closed && self.sock.write_all(&out).is_ok()
    }

    /// Wait until these (killed) workers have been reaped by the template.
    pub(super) fn wait(&mut self, workers: &BTreeSet<String>) {
        let deadline = Instant::now() + REAP_TIMEOUT;
        while !self.closed
            && workers.iter().any(|w| self.live.contains(w))
            && Instant::now() < deadline
        {
            let _ = self.sock.set_read_timeout(Some(Duration::from_millis(100)));
            match self.read(true) {
                Ok(replies) => replies.into_iter().for_each(|r| self.record_end(r)),
                Err(_) => self.closed = true,
            }
        }
        for w in workers {
            self.ended.remove(w);
        }
    }
}
