//! Small filesystem helpers the protocol relies on: private directories, atomic writes (a
//! random temporary name in the same directory, closed with its error checked, then renamed
//! into place) and exclusive creation.
//!
//! On network filesystems a write error may only surface at `close()` (quota, EIO, a full
//! brick): `std::fs::File`'s drop ignores it, so every publishing write closes explicitly and
//! a file whose close failed is removed while it is still private — never renamed into place.

use crate::error::{CoreError, IoContext, Result};
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Create `path` (and parents) with mode 0700 so other users cannot read task payloads.
pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .at(path)
}

/// Create the leaf dir `path` (mode 0700, its parent must exist) whole: made under a hidden
/// temporary name and renamed into place, so another host never looks it up half made. On
/// GlusterFS a lookup from another client while a directory is being made can leave that
/// directory unusable for seconds, for its maker too (EACCES creating or reading inside
/// it): a worker polling for its inbox made it so about once in a few hundred welcomes on
/// slurm-multinode; renamed into place, never. Nothing to do if it exists.
pub fn create_dir_whole(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    let tmp = temp_beside(path);
    fs::DirBuilder::new().mode(0o700).create(&tmp).at(path)?;
    match fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_dir(&tmp);
            if path.is_dir() {
                Ok(()) // made meanwhile (or a lost reply on NFS: the rename happened)
            } else {
                Err(CoreError::io(path, e))
            }
        }
    }
}

/// Create the leaf dir `path` (mode 0700) exclusively: false if it already exists. Its parent
/// must exist. Two drivers racing for one name get one `true` between them.
pub fn create_dir_exclusive(path: &Path) -> Result<bool> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CoreError::io(path, e)),
    }
}

/// `n` random bytes as lower-case hex (from the OS's generator).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // getrandom only fails when the OS has no entropy source at all; the time and pid are a
    // weaker but still unique-enough fallback for names.
    if getrandom::fill(&mut buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = t ^ (u128::from(std::process::id()) << 64);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random 64-bit number (incarnation nonces).
pub fn random_u64() -> u64 {
    u64::from_str_radix(&random_hex(8), 16).unwrap_or(0)
}

/// Write `parts` to `path` so that readers see either nothing or the whole file. The
/// temporary name is random (unique across hosts sharing the directory), the file is closed
/// with its error checked, and a failed write leaves nothing behind.
pub fn write_atomic(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let tmp = write_private(path, parts)?;
    fs::rename(&tmp, path).at(path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Write `parts` to `path`, which must not exist yet (O_EXCL, then close checked). False if it
/// already existed. A partial file is removed.
pub fn write_exclusive(path: &Path, parts: &[&[u8]]) -> Result<bool> {
    let f = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(CoreError::io(path, e)),
    };
    fill_and_close(f, path, parts).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })?;
    Ok(true)
}

/// A hidden name beside `path` for it to be made under and renamed from: `.NAME.RANDOM.tmp`,
/// its 64 random bits unique across hosts.
fn temp_beside(path: &Path) -> std::path::PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("f");
    dir.join(format!(".{name}.{}.tmp", random_hex(8)))
}

/// Write a private temporary file beside `path` and return its name.
fn write_private(path: &Path, parts: &[&[u8]]) -> Result<std::path::PathBuf> {
    let tmp = temp_beside(path);
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .at(&tmp)?;
    fill_and_close(f, &tmp, parts).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(tmp)
}

fn fill_and_close(mut f: fs::File, path: &Path, parts: &[&[u8]]) -> Result<()> {
    for p in parts {
        f.write_all(p).at(path)?;
    }
    // close(2) is where NFS and FUSE clients report deferred write errors.
    nix::unistd::close(f).map_err(|e| CoreError::io(path, std::io::Error::from(e)))
}

/// Write `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("plain data");
    write_atomic(path, &[&bytes])
}

/// Read a JSON file; a parse error is reported as a corrupt file naming the path.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).at(path)?;
    serde_json::from_slice(&bytes).map_err(|e| crate::CoreError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Names of the entries of `dir` that do not start with '.', sorted.
pub fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if let Some(name) = entry.file_name().to_str() {
            if !name.starts_with('.') {
                out.push(name.to_string());
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Like `list_names`, but a missing directory is empty.
pub fn list_names_or_empty(dir: &Path) -> Result<Vec<String>> {
    match list_names(dir) {
        Err(CoreError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Ok(vec![]),
        other => other,
    }
}

/// Remove a file; a file that is already gone is not an error.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CoreError::io(path, e)),
    }
}

/// Seconds since the epoch, as a float, for timestamps in records (never for liveness).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Local calendar time of `secs` since the epoch: (year, month, day, hour, minute, second).
pub fn local_time(secs: i64) -> (i32, i32, i32, i32, i32, i32) {
    let t = secs as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&t, &mut tm) };
    (
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
    )
}

/// Whether a process with this pid exists on this host (zombies count as gone).
pub fn pid_alive(pid: u32) -> bool {
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let Ok(pid_t) = i32::try_from(pid) else {
        return false;
    };
    // kill(pid, 0) checks existence without sending anything; EPERM still means it exists.
    match kill(Pid::from_raw(pid_t), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z"),
        Err(_) => true,
    }
}

/// Short host name, used to tell whether a pid in a session file is ours to check.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .and_then(|h| h.split('.').next().map(str::to_string))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        write_atomic(&p, &[b"ab", b"cd"]).unwrap();
        write_atomic(&p, &[b"ef"]).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"ef");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_dir_made_whole_is_private_appears_once_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("inbox-key");
        create_dir_whole(&d).unwrap();
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(d.join("ticket"), b"x").unwrap();
        // Again: nothing happens to it or to what it holds.
        create_dir_whole(&d).unwrap();
        assert!(d.join("ticket").exists());
        let names: Vec<String> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["inbox-key"]);
        // No parent: an error naming the path.
        let e = create_dir_whole(&t.path().join("no/such")).unwrap_err();
        assert!(e.to_string().contains("no/such"), "{e}");
    }

    #[test]
    fn exclusive_write_and_dir() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        assert!(write_exclusive(&p, &[b"1"]).unwrap());
        assert!(!write_exclusive(&p, &[b"2"]).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"1");
        let s = d.path().join("s");
        assert!(create_dir_exclusive(&s).unwrap());
        assert!(!create_dir_exclusive(&s).unwrap());
    }

    #[test]
    fn temporary_names_are_random_not_pid_based() {
        let names: std::collections::HashSet<String> = (0..1000).map(|_| random_hex(8)).collect();
        assert_eq!(names.len(), 1000);
        assert!(names.iter().all(|n| n.len() == 16));
    }

    #[test]
    fn private_dir_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        create_private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
