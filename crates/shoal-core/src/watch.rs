//! Wake-ups: inotify for directory changes where the kernel offers it, plus a [`Waker`] that
//! another thread of the same process pokes (a new submission, a stop request). Inotify only
//! sees changes made on this host, so callers still poll with a bounded interval — it makes
//! local hand-offs immediate, and cross-host ones no slower.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The sending side of a wake-up: cheap to clone, safe to poke from any thread.
#[derive(Clone)]
pub struct Waker {
    write: Option<Arc<OwnedFd>>,
    /// A waker of something else than a pipe (the TCP broker's channel).
    call: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Waker {
    pub fn wake(&self) {
        if let Some(fd) = &self.write {
            // A full pipe already means "wake up"; nothing to report.
            let _ = nix::unistd::write(fd.as_fd(), &[1u8]);
        }
        if let Some(f) = &self.call {
            f();
        }
    }

    /// A waker that calls `f`.
    pub fn from_fn(f: impl Fn() + Send + Sync + 'static) -> Waker {
        Waker {
            write: None,
            call: Some(Arc::new(f)),
        }
    }
}

pub struct DirWatch {
    inotify: Option<Inotify>,
    wake_read: Option<OwnedFd>,
    waker: Waker,
}

impl DirWatch {
    /// Watch `dirs` for files created or moved in. Never fails: without inotify, `wait`
    /// sleeps (and still returns early when woken).
    pub fn new(dirs: &[&Path]) -> Self {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok();
        if let Some(ino) = &inotify {
            let mask = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CLOSE_WRITE;
            for dir in dirs {
                let _ = ino.add_watch(*dir, mask);
            }
        }
        let (wake_read, waker) = match nix::unistd::pipe2(
            nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        ) {
            Ok((r, w)) => (
                Some(r),
                Waker {
                    write: Some(Arc::new(w)),
                    call: None,
                },
            ),
            Err(_) => (
                None,
                Waker {
                    write: None,
                    call: None,
                },
            ),
        };
        DirWatch {
            inotify,
            wake_read,
            waker,
        }
    }

    /// A handle other threads use to end a `wait` early.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Block until something changed in a watched dir, the waker was poked, or `timeout`
    /// passed. Returns whether anything was seen.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut fds = Vec::with_capacity(2);
        if let Some(ino) = &self.inotify {
            fds.push(PollFd::new(ino.as_fd(), PollFlags::POLLIN));
        }
        if let Some(r) = &self.wake_read {
            fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return false;
        }
        let ms = timeout
            .as_millis()
            .clamp(u128::from(!timeout.is_zero()), 60_000) as i32;
        let ready = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        )
        .unwrap_or(0);
        drop(fds);
        if ready <= 0 {
            return false;
        }
        self.drain();
        true
    }

    fn drain(&self) {
        if let Some(ino) = &self.inotify {
            while matches!(ino.read_events(), Ok(ev) if !ev.is_empty()) {}
        }
        if let Some(r) = &self.wake_read {
            let mut buf = [0u8; 64];
            while matches!(nix::unistd::read(r.as_fd(), &mut buf), Ok(n) if n > 0) {}
        }
    }
}

/// Call `f` each time `fd` (the read end of a pipe) becomes readable, from a thread of its
/// own, reading what was written. For Python's `signal.set_wakeup_fd`: the interpreter
/// writes a byte there as a signal arrives, while its main thread may be blocked in native
/// code that would otherwise look at signals only when its wait ends.
pub fn on_readable(fd: OwnedFd, f: impl Fn() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shoal-signals".into())
        .spawn(move || loop {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(n) if n > 0 => {}
                Err(nix::errno::Errno::EINTR) => continue,
                _ => return,
            }
            let hup = fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
            // One read (the pipe may block): what is left makes the next poll return at once.
            let mut buf = [0u8; 64];
            let _ = nix::unistd::read(fd.as_fd(), &mut buf);
            f();
            if hup {
                return; // the writer is gone: no more signals come this way
            }
        })
        .map(|_| ())
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // Closing an inotify fd waits for the kernel to retire its watches (~20 ms, an RCU
        // grace period): off the caller's path, or every pool's shutdown pays it.
        if let Some(ino) = self.inotify.take() {
            let closing = std::thread::Builder::new()
                .name("shoal-watch-close".into())
                .spawn(move || drop(ino));
            // Without a thread the inotify was moved into the failed closure and is
            // dropped right here.
            let _ = closing;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn on_readable_calls_back_per_wake_up_and_ends_with_the_writer() {
        let (r, w) = nix::unistd::pipe().unwrap(); // a blocking read end, as Python's os.pipe()
        let (tx, rx) = std::sync::mpsc::channel();
        on_readable(r, move || tx.send(()).unwrap()).unwrap();
        nix::unistd::write(&w, &[15u8]).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        nix::unistd::write(&w, &[10u8, 12]).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(w);
        // The hang-up wakes it once more (nothing to drain), then it ends.
        let _ = rx.recv_timeout(Duration::from_secs(5));
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_err());
    }

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

    #[test]
    fn a_waker_ends_the_wait_from_another_thread() {
        let d = tempfile::tempdir().unwrap();
        let w = DirWatch::new(&[d.path()]);
        let k = w.waker();
        let poker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            k.wake();
        });
        let t = Instant::now();
        assert!(w.wait(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(2));
        poker.join().unwrap();
        assert!(!w.wait(Duration::from_millis(1)), "drained");
    }
}
