//! The driver-side sink for worker output: every transport puts what a worker writes to its
//! stdout/stderr into the session's log store, `logs/ID.out|.err` (on a shared work dir the
//! worker writes there itself; the TCP transport appends what arrives with [`append`]). Marks
//! in result parts are offsets into these files, `shoal logs` reads them, and the Python
//! driver forwards them to its own terminal as they grow (`shoal._output`).

use crate::error::{CoreError, IoContext, Result};
use crate::layout::{SessionDir, Stream};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Append `data` that worker `worker` (its id, not key) wrote to `stream`, in the order it was
/// written; returns the log's length after it, which is the offset the worker's next marks
/// refer to.
pub fn append(dir: &SessionDir, worker: &str, stream: Stream, data: &[u8]) -> Result<u64> {
    let path = dir.log(worker, stream);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| CoreError::io(&path, e))?;
    f.write_all(data).at(&path)?;
    Ok(f.metadata().at(&path)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_in_order_and_reads_back_by_offset() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        assert_eq!(append(&d, "b1-0", Stream::Stdout, b"one\n").unwrap(), 4);
        assert_eq!(append(&d, "b1-0", Stream::Stdout, b"two\n").unwrap(), 8);
        assert_eq!(
            d.read_log("b1-0", Stream::Stdout, 4, 8, 100).unwrap(),
            b"two\n"
        );
        assert_eq!(d.log_len("b1-0", Stream::Stderr), 0);
    }
}
