//! The backend registry for Python: `shoal._native.backends_json()` returns it as JSON, which
//! `shoal._backends` reads once (option names, defaults, worker-id rules), and the registry's
//! warnings about options. Conversion only.

use pyo3::prelude::*;

#[pyfunction]
fn backends_json() -> String {
    shoal_sched::registry::to_json().to_string()
}

/// `bare_sizes(name, options_json)`: the registry's warnings for sizes given as bare numbers.
#[pyfunction]
fn bare_sizes(name: &str, options: &str) -> PyResult<Vec<String>> {
    let options: serde_json::Map<String, serde_json::Value> = serde_json::from_str(options)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(shoal_sched::registry::bare_sizes(name, &options))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(backends_json, m)?)?;
    m.add_function(wrap_pyfunction!(bare_sizes, m)?)
}
