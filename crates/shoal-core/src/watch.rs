//! Wake-ups for directory changes: inotify where the kernel offers it, plain sleeping where
//! it does not. Inotify only sees changes made on this host, so callers still poll with a
//! bounded interval — it makes local hand-offs immediate, and cross-host ones no slower.

use std::path::Path;
use std::time::Duration;

pub struct DirWatch {
    fd: Option<libc::c_int>,
}

impl DirWatch {
    /// Watch `dirs` for files created or moved in. Never fails: without inotify, `wait` sleeps.
    pub fn new(dirs: &[&Path]) -> Self {
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return DirWatch { fd: None };
        }
        let mask = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        for dir in dirs {
            let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
        }
        DirWatch { fd: Some(fd) }
    }

    /// Block until something changed in a watched dir or `timeout` passed. Returns whether a
    /// change was seen (false also without inotify).
    pub fn wait(&self, timeout: Duration) -> bool {
        let Some(fd) = self.fd else {
            std::thread::sleep(timeout);
            return false;
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        let ready =
            unsafe { libc::poll(&mut pfd, 1, ms.max(if timeout.is_zero() { 0 } else { 1 })) };
        if ready <= 0 {
            return false;
        }
        self.drain();
        true
    }

    fn drain(&self) {
        let Some(fd) = self.fd else { return };
        let mut buf = [0u8; 4096];
        loop {
            let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        if let Some(fd) = self.fd {
            // Closing an inotify fd waits for the kernel to retire its watches (~20 ms, an RCU
            // grace period): off the caller's path, or every pool's shutdown pays it.
            let closed = std::thread::Builder::new()
                .name("shoal-watch-close".into())
                .spawn(move || unsafe { libc::close(fd) });
            if closed.is_err() {
                unsafe { libc::close(fd) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wakes_on_new_file_and_times_out_otherwise() {
        let d = tempfile::tempdir().unwrap();
        let w = DirWatch::new(&[d.path()]);
        let t = Instant::now();
        assert!(!w.wait(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(25));
        let p = d.path().join("x");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(p, b"1").unwrap();
        });
        let t = Instant::now();
        assert!(w.wait(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(2));
        writer.join().unwrap();
    }
}
