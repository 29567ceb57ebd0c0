//! The backend registry for Python: `shoal._native.backends_json()` returns it as JSON, which
//! `shoal._backends` reads once (option names, defaults, worker-id rules). Conversion only.

use pyo3::prelude::*;

#[pyfunction]
fn backends_json() -> String {
    shoal_sched::registry::to_json().to_string()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(backends_json, m)?)
}
