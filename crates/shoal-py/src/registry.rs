//! `shoal._native.Registry`: the run registry for the Python run driver (`shoal.runner`).
//! Converts rows to dicts and outcomes from tuples; the schema lives in shoal-runs.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use shoal_runs::registry::{params_json, Outcome, TaskRow};
use shoal_runs::{Registry as Inner, RunError};
use std::path::PathBuf;
use std::sync::Mutex;

fn err(py: Python<'_>, e: RunError) -> PyErr {
    let class = match e {
        RunError::NoSuchRun(_) | RunError::Config { .. } | RunError::Param { .. } => "ConfigError",
        _ => "ShoalError",
    };
    crate::raise(py, class, e.to_string())
}

/// JSON to Python objects (dict, list, str, int, float, bool, None).
fn to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => py.None().into_bound(py),
        J::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        J::Number(n) => match n.as_i64() {
            Some(i) => i.into_pyobject(py)?.into_any(),
            None => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        J::String(s) => s.into_pyobject(py)?.into_any(),
        J::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py(py, x)?)?;
            }
            l.into_any()
        }
        J::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// A task as the driver gets it, with its resources (`shoal run -R`) filled in from its
/// parameters by the run's templates.
fn task_dict<'py>(
    py: Python<'py>,
    t: &TaskRow,
    templates: &serde_json::Map<String, serde_json::Value>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    v["params"] = params_json(&t.params);
    v["resources"] =
        serde_json::Value::Object(shoal_runs::resources::for_task(templates, &t.params));
    to_py(py, &v)
}

/// A connection to the run registry (SQLite). Methods release the GIL while they wait.
#[pyclass(module = "shoal._native")]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Inner) -> shoal_runs::Result<R> + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let reg = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            f(&reg)
        })
        .map_err(|e| err(py, e))
    }
}

#[pymethods]
impl Registry {
    /// Open `path` (default `$SHOAL_HOME/runs.db`), creating it if needed.
    #[new]
    #[pyo3(signature = (path=None))]
    fn new(py: Python<'_>, path: Option<PathBuf>) -> PyResult<Self> {
        let path = path.unwrap_or_else(shoal_runs::registry::default_path);
        let inner = py.detach(|| Inner::open(&path)).map_err(|e| err(py, e))?;
        Ok(Registry {
            inner: Mutex::new(inner),
        })
    }

    /// The run as a dict (plus "display_status" and "counts").
    fn run<'py>(&self, py: Python<'py>, run_id: i64) -> PyResult<Bound<'py, PyAny>> {
        let (row, counts) = self.with(py, |r| Ok((r.get(run_id)?, r.counts(run_id)?)))?;
        let mut v = serde_json::to_value(&row).unwrap_or_default();
        v["display_status"] = row.display_status().into();
        v["counts"] = serde_json::to_value(&counts).unwrap_or_default();
        to_py(py, &v)
    }

    /// Tasks as dicts, in index order; only those in `states` when given.
    #[pyo3(signature = (run_id, states=None))]
    fn tasks<'py>(
        &self,
        py: Python<'py>,
        run_id: i64,
        states: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (rows, templates) = self.with(py, |r| {
            let s: Option<Vec<&str>> = states
                .as_ref()
                .map(|v| v.iter().map(String::as_str).collect());
            let templates = r
                .get(run_id)?
                .options
                .get(shoal_runs::resources::KEY)
                .and_then(|t| t.as_object().cloned())
                .unwrap_or_default();
            Ok((r.tasks(run_id, s.as_deref())?, templates))
        })?;
        let l = PyList::empty(py);
        for t in &rows {
            l.append(task_dict(py, t, &templates)?)?;
        }
        Ok(l)
    }

    fn start_driver(&self, py: Python<'_>, run_id: i64, pid: u32, host: String) -> PyResult<()> {
        self.with(py, |r| r.start_driver(run_id, pid, &host))
    }

    fn set_session(
        &self,
        py: Python<'_>,
        run_id: i64,
        session: String,
        path: String,
    ) -> PyResult<()> {
        self.with(py, |r| r.set_session(run_id, &session, &path))
    }

    fn mark_running(&self, py: Python<'_>, run_id: i64, idxs: Vec<i64>) -> PyResult<usize> {
        self.with(py, |r| r.mark_running(run_id, &idxs))
    }

    /// The run's launches as dicts, oldest first.
    fn launches<'py>(&self, py: Python<'py>, run_id: i64) -> PyResult<Bound<'py, PyAny>> {
        let rows = self.with(py, |r| r.launches(run_id))?;
        to_py(py, &serde_json::to_value(&rows).unwrap_or_default())
    }

    /// Record task ends: tuples (idx, attempt, state, exit_code, duration, started, ended,
    /// host, worker, session, launch). Returns how many applied (stale attempts are ignored);
    /// a launch of None means the run's current one.
    #[allow(clippy::type_complexity)]
    fn record(
        &self,
        py: Python<'_>,
        run_id: i64,
        outcomes: Vec<(
            i64,
            i64,
            String,
            Option<i64>,
            Option<f64>,
            Option<f64>,
            Option<f64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
        )>,
    ) -> PyResult<usize> {
        let outs: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| Outcome {
                idx: o.0,
                attempt: o.1,
                state: o.2,
                exit_code: o.3,
                duration: o.4,
                started: o.5,
                ended: o.6,
                host: o.7,
                worker: o.8,
                session: o.9,
                launch: o.10,
            })
            .collect();
        self.with(py, |r| r.record(run_id, &outs))
    }

    fn set_states(
        &self,
        py: Python<'_>,
        run_id: i64,
        from_states: Vec<String>,
        to: String,
    ) -> PyResult<usize> {
        self.with(py, |r| {
            let f: Vec<&str> = from_states.iter().map(String::as_str).collect();
            r.set_states(run_id, &f, &to)
        })
    }

    #[pyo3(signature = (run_id, status, message=None))]
    fn set_status(
        &self,
        py: Python<'_>,
        run_id: i64,
        status: String,
        message: Option<String>,
    ) -> PyResult<()> {
        self.with(py, |r| r.set_status(run_id, &status, message.as_deref()))
    }

    /// Set the final status from the task states; returns it.
    fn settle(&self, py: Python<'_>, run_id: i64) -> PyResult<String> {
        self.with(py, |r| r.settle(run_id))
    }
}
