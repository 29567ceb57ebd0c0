//! A byte budget shared by every link of one side: payloads received but not yet dropped by the
//! application hold a lease on it, and a reader that cannot get one stops reading its socket
//! (TCP flow control then slows the sender), so a slow consumer bounds the memory of both sides.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Budget {
    total: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes taken from a receive budget (`ServerOptions::receive_budget`), given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    bytes: u64,
}

/// How often a waiting reader checks whether its link was closed meanwhile.
const RECHECK: Duration = Duration::from_millis(200);

impl Budget {
    pub(crate) fn new(total: u64) -> Arc<Budget> {
        Arc::new(Budget {
            total: total.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// Take `bytes` (at most the whole budget, so one frame larger than the budget still goes
    /// through once everything else is released). Waits while the budget is spent; gives up and
    /// returns `None` once `cancelled()` says the link is gone.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        bytes: u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Option<Lease> {
        let bytes = bytes.min(self.total);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used + bytes > self.total {
            if cancelled() {
                return None;
            }
            used = self
                .freed
                .wait_timeout(used, RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += bytes;
        Some(Lease {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Bytes currently leased (for tests and statistics).
    pub(crate) fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_spent_budget_blocks_until_a_lease_is_dropped() {
        let budget = Budget::new(100);
        let first = budget.acquire(80, &|| false).unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.acquire(50, &|| false).map(|l| l.bytes))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.join().unwrap(), Some(50));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_oversized_request_takes_the_whole_budget_and_cancel_wakes_a_waiter() {
        let budget = Budget::new(100);
        let all = budget.acquire(1000, &|| false).unwrap();
        assert_eq!(budget.used(), 100);
        let gone = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (budget, gone) = (Arc::clone(&budget), Arc::clone(&gone));
            std::thread::spawn(move || budget.acquire(1, &|| gone.load(Ordering::SeqCst)).is_none())
        };
        gone.store(true, Ordering::SeqCst);
        assert!(waiter.join().unwrap());
        drop(all);
    }
}
