//! Which blobs (payloads shared by many chunks, such as a mapped function) are still needed.
//! A blob is removed from the work dir once its owner released it (the map that made it has
//! sent all its chunks) and no outstanding chunk refers to it. Pure bookkeeping.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct BlobRefs {
    /// blob -> (outstanding chunks referring to it, still held by its owner)
    refs: HashMap<u64, (usize, bool)>,
}

impl BlobRefs {
    /// A new blob, held by its owner until `release`.
    pub fn add(&mut self, blob: u64) {
        self.refs.insert(blob, (0, true));
    }

    /// A chunk referring to `blobs` was submitted.
    pub fn chunk_submitted(&mut self, blobs: &[u64]) {
        for b in blobs {
            if let Some(r) = self.refs.get_mut(b) {
                r.0 += 1;
            }
        }
    }

    /// A chunk referring to `blobs` ended; returns the blobs no longer needed.
    pub fn chunk_ended(&mut self, blobs: &[u64]) -> Vec<u64> {
        let mut free = Vec::new();
        for b in blobs {
            if let Some(r) = self.refs.get_mut(b) {
                r.0 = r.0.saturating_sub(1);
                if r.0 == 0 && !r.1 {
                    self.refs.remove(b);
                    free.push(*b);
                }
            }
        }
        free
    }

    /// The owner needs the blob no more; true if it can go now.
    pub fn release(&mut self, blob: u64) -> bool {
        match self.refs.get_mut(&blob) {
            Some(r) if r.0 == 0 => {
                self.refs.remove(&blob);
                true
            }
            Some(r) => {
                r.1 = false;
                false
            }
            None => false,
        }
    }

    pub fn live(&self) -> usize {
        self.refs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_when_released_and_unreferenced() {
        let mut b = BlobRefs::default();
        b.add(1);
        b.chunk_submitted(&[1]);
        b.chunk_submitted(&[1]);
        assert!(!b.release(1));
        assert!(b.chunk_ended(&[1]).is_empty());
        assert_eq!(b.chunk_ended(&[1]), vec![1]);
        assert_eq!(b.live(), 0);
        b.add(2);
        assert!(b.release(2), "nothing refers to it");
        b.add(3);
        b.chunk_submitted(&[3]);
        assert!(b.chunk_ended(&[3]).is_empty(), "still held by its owner");
        assert!(b.release(3));
    }
}
