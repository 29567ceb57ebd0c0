//! `shoal._native`: converts between Python and the library crates, maps errors onto the
//! `shoal.errors` hierarchy and releases the GIL whenever Rust waits. No logic lives here.

mod backends;
mod registry;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use shoal_core::layout::Stream;
use shoal_core::protocol::{FailedTask, Release, ReleaseKind, ResultHeader};
use shoal_core::session::{create_node_local, default_base, local_backend_base, SessionState};
use shoal_core::worker::{DriverInfo, WorkerConfig, WorkerSession, WorkerTransport};
use shoal_core::worker_tcp::TcpWorker;
use shoal_core::{CoreError, SessionDir};
use shoal_engine::{Bytes, Cause, Engine, EngineError, EngineOptions, Event};
use shoal_sched::{LaunchSpec, SchedError};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Raise the `shoal.errors` class named `class` with `msg`.
pub(crate) fn raise(py: Python<'_>, class: &str, msg: String) -> PyErr {
    match py
        .import("shoal.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((msg.clone(),)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyValueError::new_err(msg),
    }
}

fn core_err(py: Python<'_>, e: CoreError) -> PyErr {
    let class = match e {
        CoreError::InvalidOption { .. } | CoreError::WorkDirNotWritable { .. } => "ConfigError",
        CoreError::NoSuchSession(_) | CoreError::AmbiguousSession { .. } => "ConfigError",
        CoreError::NoSpace { .. } => "SessionError",
        _ => "ShoalError",
    };
    raise(py, class, e.to_string())
}

fn sched_err(py: Python<'_>, e: SchedError) -> PyErr {
    match e {
        SchedError::Core(c) => core_err(py, c),
        SchedError::Config(_) | SchedError::Missing { .. } => {
            raise(py, "ConfigError", e.to_string())
        }
        SchedError::Command { .. } => raise(py, "SchedulerError", e.to_string()),
    }
}

fn engine_err(py: Python<'_>, e: EngineError) -> PyErr {
    match e {
        EngineError::Core(c) => core_err(py, c),
        EngineError::Sched(s) => sched_err(py, s),
        EngineError::Ended => raise(py, "ShoalError", e.to_string()),
        EngineError::Failed(_) => raise(py, "SessionError", e.to_string()),
        EngineError::Unusable(_) => raise(py, "ConfigError", e.to_string()),
    }
}

/// A driver-side session: its work dir, its backend and its engine thread.
#[pyclass(module = "shoal._native")]
struct Session {
    /// Taken out on `finish`; cloned out of the mutex before any call that may block, so
    /// no thread ever waits on this mutex while holding the GIL for long.
    engine: Mutex<Option<Arc<Engine>>>,
    id: String,
    path: PathBuf,
    /// The record in the sessions dir of a session kept on node-local storage (a symlink).
    link: Option<PathBuf>,
    /// What a worker shape is built from: the backend, the pool size, the pool's options.
    backend: String,
    workers: usize,
    backend_options: serde_json::Value,
}

impl Session {
    fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&Engine) -> PyResult<R>) -> PyResult<R> {
        let engine = self
            .engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match engine {
            Some(e) => f(&e),
            None => Err(raise(py, "ShoalError", "the session has ended".into())),
        }
    }
}

/// A Python bytes object as a chunk's payload, uncopied (a TCP session keeps it until the
/// chunk ends): bytes are immutable, and the reference keeps the buffer alive. It is released
/// whenever it is dropped, the GIL held or not (PyO3 defers the decref).
struct PyPayload {
    _owner: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the buffer is never written (a bytes object is immutable) and lives as long as
// `_owner`; moving the owning reference to another thread is what `Py` allows.
unsafe impl Send for PyPayload {}

impl PyPayload {
    fn new(b: Bound<'_, PyBytes>) -> PyPayload {
        let data = b.as_bytes();
        PyPayload {
            ptr: data.as_ptr(),
            len: data.len(),
            _owner: b.unbind(),
        }
    }
}

impl AsRef<[u8]> for PyPayload {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see `Send` above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// CPython's `PyBUF_READ` (memoryobject.h), which pyo3-ffi does not export.
const PYBUF_READ: std::ffi::c_int = 0x100;

/// A result part's payload as the engine received it, handed to Python uncopied (a copy of
/// every result was a sixth of the driver's memory traffic in benches/transport's numpy run).
/// Read it through `view()`, a memoryview for `pickle.loads`, released before this object
/// goes. (The buffer protocol itself is not in the stable ABI before Python 3.11.)
#[pyclass(frozen, module = "shoal._native")]
struct Payload {
    bytes: Bytes,
}

#[pymethods]
impl Payload {
    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    /// A read-only memoryview of the payload. It does not keep this object alive: release
    /// it (`with payload.view() as data:`) while the payload is still referenced.
    fn view<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: the memory is immutable and lives as long as `self.bytes`; the caller
        // releases the view before dropping this object (the contract above).
        unsafe {
            let ptr = pyo3::ffi::PyMemoryView_FromMemory(
                self.bytes.as_ptr() as *mut std::ffi::c_char,
                self.bytes.len() as pyo3::ffi::Py_ssize_t,
                PYBUF_READ,
            );
            Bound::from_owned_ptr_or_err(py, ptr)
        }
    }
}

#[pymethods]
impl Session {
    #[new]
    #[pyo3(signature = (*, backend, workers, python, cwd, env, worker_config, backend_options,
                        work_dir=None, progress=false, heartbeat_timeout=None, max_attempts=3,
                        metadata="null", transport="auto", listen=""))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend: &str,
        workers: usize,
        python: PathBuf,
        cwd: PathBuf,
        env: Vec<(String, String)>,
        worker_config: &str,
        backend_options: &str,
        work_dir: Option<PathBuf>,
        progress: bool,
        heartbeat_timeout: Option<f64>,
        max_attempts: u32,
        metadata: &str,
        transport: &str,
        listen: &str,
    ) -> PyResult<Self> {
        let json = |what: &str, s: &str| -> PyResult<serde_json::Value> {
            serde_json::from_str(s).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
        };
        let mut worker_config: WorkerConfig =
            serde_json::from_value(json("worker_config", worker_config)?)
                .map_err(|e| PyValueError::new_err(format!("worker_config: {e}")))?;
        let backend_options = json("backend_options", backend_options)?;
        let metadata = json("metadata", metadata)?;
        let scheduler =
            shoal_sched::build(backend, workers, &backend_options).map_err(|e| sched_err(py, e))?;
        let shape_base = (backend.to_string(), workers, backend_options.clone());
        let node_local = (work_dir.is_none() && backend == "local")
            .then(local_backend_base)
            .flatten();
        let base = work_dir.unwrap_or_else(default_base);
        let created = match &node_local {
            Some(local) => create_node_local(local, &base).map(|(d, l)| (d, Some(l))),
            None => SessionDir::create_new(&base).map(|d| (d, None)),
        };
        let (dir, link) = created.map_err(|e| match e {
            CoreError::Io { source, .. } => core_err(
                py,
                CoreError::WorkDirNotWritable {
                    path: base.clone(),
                    reason: source.to_string(),
                },
            ),
            other => core_err(py, other),
        })?;
        let root = dir.root().to_path_buf();
        let id = dir.id();
        if backend == "local" {
            // Local workers are this process's children: they exit as soon as it is gone,
            // even one that started just as the driver exited.
            worker_config.driver = Some(DriverInfo::this_process());
        }
        // On a shared filesystem idle workers poll gently (about once a second, jittered);
        // on a local disk inotify wakes them and the ceiling only bounds a missed event.
        let network = shoal_core::fskind::detect(dir.root()).is_network();
        worker_config.poll_max = if network { 1.0 } else { 0.05 };
        worker_config.claim_ahead = network;
        let heartbeat_interval = Duration::from_secs_f64(worker_config.heartbeat_interval);
        let setup = (|| {
            dir.write_config(&worker_config)
                .map_err(EngineError::from)?;
            let spec = LaunchSpec {
                session: dir.clone(),
                python,
                env,
                cwd,
                connect: None,
            };
            let options = EngineOptions {
                max_attempts: max_attempts.max(1),
                heartbeat_timeout: heartbeat_timeout.map(Duration::from_secs_f64),
                heartbeat_interval,
                progress,
                metadata,
                transport: transport.to_string(),
                listen: listen.to_string(),
                ..EngineOptions::default()
            };
            Engine::start(dir.clone(), scheduler, spec, options)
        })();
        match setup {
            Ok(engine) => Ok(Session {
                engine: Mutex::new(Some(Arc::new(engine))),
                id,
                path: root,
                link,
                backend: shape_base.0,
                workers: shape_base.1,
                backend_options: shape_base.2,
            }),
            Err(e) => {
                // Nothing ran: leave no trace of a session that never started.
                let _ = std::fs::remove_dir_all(&root);
                if let Some(link) = &link {
                    let _ = std::fs::remove_file(link);
                }
                Err(engine_err(py, e))
            }
        }
    }

    #[getter]
    fn id(&self) -> String {
        self.id.clone()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn put_blob(&self, py: Python<'_>, data: &[u8]) -> PyResult<u64> {
        self.with(py, |e| {
            py.detach(|| e.put_blob(data))
                .map_err(|x| engine_err(py, x))
        })
    }

    /// The caller makes no more chunks referring to this blob.
    fn release_blob(&self, py: Python<'_>, blob: u64) -> PyResult<()> {
        self.with(py, |e| {
            py.detach(|| e.release_blob(blob));
            Ok(())
        })
    }

    /// Publish a chunk referring to `blobs`, for workers of `shape`; returns (chunk id,
    /// first task number).
    #[pyo3(signature = (payload, ntasks, blobs=Vec::new(), shape=0))]
    fn submit(
        &self,
        py: Python<'_>,
        payload: Bound<'_, PyBytes>,
        ntasks: u32,
        blobs: Vec<u64>,
        shape: u32,
    ) -> PyResult<(u64, u64)> {
        let payload = Bytes::from_owner(PyPayload::new(payload));
        self.with(py, |e| {
            py.detach(|| e.submit_shaped(payload, ntasks, &blobs, shape))
                .map_err(|x| engine_err(py, x))
        })
    }

    /// The worker shape for a call's `resources` (a JSON object), checked against the
    /// registry and preflighted (docs/resources.md); returns (shape id, label). The same
    /// resources give the same shape.
    fn add_shape(&self, py: Python<'_>, resources: &str) -> PyResult<(u32, String)> {
        let resources: serde_json::Map<String, serde_json::Value> = serde_json::from_str(resources)
            .map_err(|e| PyValueError::new_err(format!("resources: {e}")))?;
        let shape = shoal_sched::shapes::resolve(&self.backend, &self.backend_options, &resources)
            .map_err(|e| sched_err(py, e))?;
        if shape.label.is_empty() {
            return Ok((0, String::new()));
        }
        self.with(py, |e| {
            let id = py
                .detach(|| {
                    e.add_shape(&shape.label, |id| {
                        let workers = shape.workers.unwrap_or(self.workers);
                        shoal_sched::build_shape(&self.backend, workers, &shape.options, id)
                    })
                })
                .map_err(|x| engine_err(py, x))?;
            Ok((id, shape.label.clone()))
        })
    }

    /// Wait while the session has its window of outstanding chunks (feeder threads call
    /// this before they pickle the next chunk).
    fn wait_room(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |e| {
            py.detach(|| e.wait_room());
            Ok(())
        })
    }

    fn withdraw(&self, py: Python<'_>, chunks: Vec<u64>) -> PyResult<usize> {
        self.with(py, |e| {
            py.detach(|| e.withdraw(&chunks))
                .map_err(|x| engine_err(py, x))
        })
    }

    /// Wait up to `timeout` seconds; returns a list of event tuples:
    /// ("result", chunk, first_task, from, count, skip, worker, payload,
    ///  {failed index in the part: (start, end) of its stderr}, chunk_error)
    ///     deliver tasks from..from+count of the chunk: values skip.. of the payload
    /// ("failed", chunk, first_task, from, count, kind, message, worker, stderr_tail)
    ///     kind: "lost", "corrupt", "incomplete" or "vanished"
    /// ("fatal", message)
    /// ("started", chunk)
    /// ("withdrawn", chunk)
    fn events<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyList>> {
        let events = self.with(py, |e| {
            Ok(py.detach(|| e.events(Duration::from_secs_f64(timeout.max(0.0)))))
        })?;
        let out = PyList::empty(py);
        for ev in events {
            match ev {
                Event::Result {
                    header,
                    payload,
                    from,
                    count,
                    skip,
                } => {
                    let err_ranges: std::collections::HashMap<u32, (u64, u64)> = header
                        .failed
                        .iter()
                        .filter_map(|f| {
                            Some((f.index, header.range(f.index as usize, Stream::Stderr)?))
                        })
                        .collect();
                    let worker = shoal_core::layout::key_id(&header.worker).to_string();
                    out.append((
                        "result",
                        header.chunk,
                        header.first_task,
                        from,
                        count,
                        skip,
                        worker,
                        Payload { bytes: payload },
                        err_ranges,
                        header.chunk_error,
                    ))?
                }
                Event::Failed {
                    chunk,
                    from,
                    count,
                    cause,
                    attempts,
                    worker,
                    stderr_tail,
                } => {
                    let kind = match &cause {
                        // Out of time or preempted for good: its workers were lost to it.
                        Cause::Lost(_) | Cause::Walltime(_) | Cause::Preempted(_) => "lost",
                        Cause::Corrupt(_) => "corrupt",
                        Cause::Incomplete(_) => "incomplete",
                        Cause::Vanished(_) => "vanished",
                        Cause::Unstartable(_) => "unstartable",
                    };
                    out.append((
                        "failed",
                        chunk.chunk,
                        chunk.first_task,
                        from,
                        count,
                        kind,
                        shoal_engine::describe(&cause, attempts),
                        worker,
                        stderr_tail,
                    ))?
                }
                Event::Fatal { message } => out.append(("fatal", message))?,
                Event::Started { chunk } => out.append(("started", chunk))?,
                Event::Withdrawn { chunk } => out.append(("withdrawn", chunk))?,
            }
        }
        Ok(out)
    }

    /// Bytes `[start, end)` of a worker's stderr (or stdout), at most the last `tail` bytes.
    #[pyo3(signature = (worker, start, end, tail, stream="stderr"))]
    fn read_log<'py>(
        &self,
        py: Python<'py>,
        worker: &str,
        start: u64,
        end: u64,
        tail: u64,
        stream: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let s = if stream == "stdout" {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        let dir = SessionDir::open(&self.path);
        let bytes = py
            .detach(|| dir.read_log(worker, s, start, end, tail))
            .map_err(|e| core_err(py, e))?;
        Ok(PyBytes::new(py, &bytes))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(py, |e| Ok(e.stats()))?;
        let d = PyDict::new(py);
        d.set_item("tasks_total", s.tasks_total)?;
        d.set_item("tasks_done", s.tasks_done)?;
        d.set_item("tasks_failed", s.tasks_failed)?;
        d.set_item("workers_running", s.workers_running)?;
        d.set_item("workers_pending", s.workers_pending)?;
        d.set_item("workers_started", s.workers_started)?;
        d.set_item("workers_lost", s.workers_lost)?;
        d.set_item("workers_fenced", s.workers_fenced)?;
        d.set_item("chunks_outstanding", s.chunks_outstanding)?;
        Ok(d)
    }

    /// Stop workers: gracefully within `grace` seconds, or at once when `grace` is None.
    #[pyo3(signature = (grace=None))]
    fn shutdown(&self, py: Python<'_>, grace: Option<f64>) {
        let engine = self
            .engine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(e) = engine {
            py.detach(|| e.shutdown(grace.map(Duration::from_secs_f64)));
        }
    }

    /// Record the final state ("finished", "failed", "cancelled", "interrupted"); returns the kept work
    /// dir, or None when it was removed.
    #[pyo3(signature = (state, message=None, keep=false))]
    fn finish(
        &self,
        py: Python<'_>,
        state: &str,
        message: Option<String>,
        keep: bool,
    ) -> PyResult<Option<PathBuf>> {
        let state = match state {
            "finished" => SessionState::Finished,
            "failed" => SessionState::Failed,
            "cancelled" => SessionState::Cancelled,
            "interrupted" => SessionState::Interrupted,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown session state {other:?}"
                )))
            }
        };
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
        match engine {
            Some(e) => {
                let kept = py.detach(|| e.finish(state, message, keep));
                if let (None, Some(link)) = (&kept, &self.link) {
                    // the work dir is gone: so goes its record
                    let _ = std::fs::remove_file(link);
                }
                Ok(kept)
            }
            None => Ok(None),
        }
    }
}

/// The worker side of a session, used by `python -m shoal.worker`: through the work dir, or
/// over TCP when `connect` (the driver's address) and `fingerprint` are given.
#[pyclass(module = "shoal._native")]
struct Worker {
    inner: Mutex<Box<dyn WorkerTransport>>,
    id: String,
    key: String,
    config: String,
}

#[pymethods]
impl Worker {
    #[new]
    #[pyo3(signature = (session_dir, worker_id=None, connect=None, fingerprint=None))]
    fn new(
        py: Python<'_>,
        session_dir: PathBuf,
        worker_id: Option<&str>,
        connect: Option<&str>,
        fingerprint: Option<&str>,
    ) -> PyResult<Self> {
        let inner: Box<dyn WorkerTransport> = match (connect, fingerprint) {
            (Some(addr), Some(fp)) => {
                let session = session_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Box::new(
                    py.detach(|| TcpWorker::connect(&session, worker_id, addr, fp))
                        .map_err(|e| core_err(py, e))?,
                )
            }
            (None, None) => Box::new(
                py.detach(|| WorkerSession::open(session_dir, worker_id))
                    .map_err(|e| core_err(py, e))?,
            ),
            _ => {
                return Err(PyValueError::new_err(
                    "connect and fingerprint go together (a TCP session's worker)",
                ))
            }
        };
        let config =
            serde_json::to_string(&inner.config().python).unwrap_or_else(|_| "null".into());
        Ok(Worker {
            id: inner.id().to_string(),
            key: inner.key().to_string(),
            inner: Mutex::new(inner),
            config,
        })
    }

    /// The worker id (what the scheduler calls the job).
    #[getter]
    fn id(&self) -> String {
        self.id.clone()
    }

    /// This incarnation's key (`ID+NONCE`).
    #[getter]
    fn key(&self) -> String {
        self.key.clone()
    }

    /// The Python-side settings from the driver, as JSON.
    #[getter]
    fn config(&self) -> String {
        self.config.clone()
    }

    fn read_blob<'py>(&self, py: Python<'py>, blob: u64) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| {
                let w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                w.read_blob(blob)
            })
            .map_err(|e| core_err(py, e))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Make a blocked `claim` look at signals as soon as `fd` (the read end of the pipe given
    /// to `signal.set_wakeup_fd`; this takes it over) is written to, rather than after the
    /// rest of its wait: an idle worker's job cancelled by the scheduler (SIGTERM) then
    /// exits at once, and `terminate()` does not wait a second for each.
    fn wake_on(&self, fd: i32) -> PyResult<()> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let interrupt = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .interrupter();
        // SAFETY: the caller hands the descriptor over (the contract above).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        shoal_core::watch::on_readable(fd, move || interrupt())
            .map_err(|e| PyValueError::new_err(format!("wake_on: {e}")))
    }

    /// The running chunk ends with the part about to be published and the worker goes on:
    /// its next claim may start meanwhile (see `WorkerSession::claim_ahead`).
    fn claim_ahead(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .claim_ahead()
    }

    /// The worker is leaving (`reason`: what `claim` returned); a TCP worker says goodbye.
    fn close(&self, py: Python<'_>, reason: &str) {
        py.detach(|| {
            let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            w.close(reason)
        })
    }

    /// Next assignment as (chunk, attempt, first_task, ntasks, from, careful, resume,
    /// payload), or a str saying why to exit: "stopped", "idle", "driver-gone", "timeout",
    /// "fenced", "leaving". The wait is cut in slices with Python's signal handlers run in
    /// between, so an idle worker handles a preemption or walltime signal within a second:
    /// "leaving" when `stop()` then says so (no ticket was claimed).
    #[pyo3(signature = (timeout=None, stop=None))]
    fn claim(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        stop: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        const SLICE: Duration = Duration::from_secs(1);
        let until = timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t));
        let r = loop {
            let slice = match until {
                Some(u) => u
                    .saturating_duration_since(std::time::Instant::now())
                    .min(SLICE),
                None => SLICE,
            };
            let r = py.detach(|| {
                let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                w.next(Some(slice))
            });
            let timed_out = matches!(r, Ok(Err(shoal_core::worker::ExitReason::Timeout)));
            if !timed_out || until.is_some_and(|u| std::time::Instant::now() >= u) {
                break r;
            }
            py.check_signals()?;
            if let Some(f) = &stop {
                if f.call0(py)?.is_truthy(py)? {
                    return Ok("leaving".into_pyobject(py)?.into_any().unbind());
                }
            }
        };
        match r.map_err(|e| core_err(py, e))? {
            Ok(a) => Ok((
                a.header.chunk,
                a.ticket.attempt,
                a.header.first_task,
                a.header.ntasks,
                a.ticket.from,
                a.ticket.careful,
                a.ticket.resume,
                PyBytes::new(py, &a.payload),
            )
                .into_pyobject(py)?
                .into_any()
                .unbind()),
            Err(reason) => Ok(reason.as_str().into_pyobject(py)?.into_any().unbind()),
        }
    }

    /// The checkpoint task `task` of `chunk` left (a resume ticket names it): pickled bytes.
    fn read_checkpoint<'py>(
        &self,
        py: Python<'py>,
        chunk: u64,
        task: u32,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = py
            .detach(|| {
                let w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                w.read_checkpoint(chunk, task)
            })
            .map_err(|e| core_err(py, e))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// When the scheduler ends this worker's job: (epoch seconds, the option that set the
    /// limit, e.g. "Slurm time=1m"), or None when the job has no known limit.
    #[getter]
    fn walltime(&self) -> Option<(f64, String)> {
        shoal_core::worker::Walltime::from_env().map(|w| (w.end, w.option))
    }

    /// Task `task` of the claimed chunk starts now (written out at once in careful mode).
    fn running(&self, py: Python<'_>, chunk: u64, attempt: u32, task: u32) -> PyResult<()> {
        py.detach(|| {
            let w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            w.running(chunk, attempt, task)
        })
        .map_err(|e| core_err(py, e))
    }

    /// Publish the results of tasks `from..from+count` of an attempt. `out`/`err` hold the
    /// log offsets before the part's first task; `marks` are (index in the part, stdout
    /// offset, stderr offset) after the tasks where output may have moved. `last`: the
    /// attempt is done (its claim is retired). `release`: (kind, reason) — the worker gives
    /// the rest of the attempt back ("preempted", "walltime", "yield"), with the interrupted
    /// task's `checkpoint` (pickled bytes), if it made one.
    #[pyo3(signature = (chunk, attempt, first_task, ntasks, from_, count, last, payload, out, err, marks, failed, chunk_error=None, elapsed=0.0, release=None, checkpoint=None))]
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
        chunk: u64,
        attempt: u32,
        first_task: u64,
        ntasks: u32,
        from_: u32,
        count: u32,
        last: bool,
        payload: &[u8],
        out: u64,
        err: u64,
        marks: Vec<(u32, u64, u64)>,
        failed: Vec<(u32, String)>,
        chunk_error: Option<String>,
        elapsed: f64,
        release: Option<(String, String)>,
        checkpoint: Option<&[u8]>,
    ) -> PyResult<()> {
        let release = match release {
            None => None,
            Some((kind, reason)) => Some(Release {
                kind: match kind.as_str() {
                    "preempted" => ReleaseKind::Preempted,
                    "walltime" => ReleaseKind::Walltime,
                    "yield" => ReleaseKind::Yield,
                    other => {
                        return Err(pyo3::exceptions::PyValueError::new_err(format!(
                            "unknown release kind {other:?}"
                        )))
                    }
                },
                reason,
                checkpoint: checkpoint.is_some(),
            }),
        };
        let header = ResultHeader {
            chunk,
            attempt,
            first_task,
            ntasks,
            from: from_,
            count,
            last,
            worker: self.key.clone(),
            start: (out, err),
            marks,
            failed: failed
                .into_iter()
                .map(|(index, traceback)| FailedTask { index, traceback })
                .collect(),
            chunk_error,
            elapsed,
            release,
        };
        py.detach(|| {
            let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            w.publish(&header, payload, checkpoint)
        })
        .map_err(|e| core_err(py, e))
    }
}

/// Run the `shoal` command line with `argv` (including the program name); returns the exit code.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| shoal_cli::run(argv))
}

/// The default directory holding session work dirs.
#[pyfunction]
fn default_work_dir() -> PathBuf {
    default_base()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Session>()?;
    m.add_class::<Payload>()?;
    m.add_class::<Worker>()?;
    m.add_class::<registry::Registry>()?;
    backends::register(m)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(default_work_dir, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
