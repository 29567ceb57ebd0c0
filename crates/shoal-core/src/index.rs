//! The session's log index: one JSON line per delivered result part, appended by the driver.
//! Delivered payloads are deleted at once; this is what stays behind so that `shoal logs`
//! finds any task's worker, output range and traceback (a few hundred bytes per part, not a
//! file per task).

use crate::error::{CoreError, Result};
use crate::layout::{key_id, SessionDir, Stream};
use crate::protocol::{FailedTask, ResultHeader};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, Write};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexEntry {
    pub chunk: u64,
    pub attempt: u32,
    /// Session number of the part's first task.
    pub first: u64,
    pub count: u32,
    /// Worker id (its logs are `logs/ID.out|err`).
    pub worker: String,
    pub start: (u64, u64),
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<(u32, u64, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_error: Option<String>,
}

impl IndexEntry {
    /// The entry for a delivered part (of which `skip` leading tasks were delivered before).
    pub fn of(h: &ResultHeader) -> IndexEntry {
        IndexEntry {
            chunk: h.chunk,
            attempt: h.attempt,
            first: h.first(),
            count: h.count,
            worker: key_id(&h.worker).to_string(),
            start: h.start,
            marks: h.marks.clone(),
            failed: h.failed.clone(),
            chunk_error: h.chunk_error.clone(),
        }
    }

    pub fn contains(&self, task: u64) -> bool {
        (self.first..self.first + u64::from(self.count)).contains(&task)
    }

    /// Output range of session task `task` on `stream`.
    pub fn range(&self, task: u64, stream: Stream) -> Option<(u64, u64)> {
        let h = ResultHeader {
            count: self.count,
            start: self.start,
            marks: self.marks.clone(),
            ..Default::default()
        };
        h.range(task.checked_sub(self.first)? as usize, stream)
    }

    pub fn failure(&self, task: u64) -> Option<&str> {
        let i = task.checked_sub(self.first)? as u32;
        if let Some(e) = &self.chunk_error {
            return (i < self.count).then_some(e.as_str());
        }
        self.failed
            .iter()
            .find(|f| f.index == i)
            .map(|f| f.traceback.as_str())
    }
}

/// Appends entries; one `write` per entry on a file opened for appending.
pub struct IndexWriter {
    file: Option<fs::File>,
    dir: SessionDir,
}

impl IndexWriter {
    pub fn new(dir: &SessionDir) -> Self {
        IndexWriter {
            file: None,
            dir: dir.clone(),
        }
    }

    pub fn append(&mut self, entry: &IndexEntry) -> Result<()> {
        let path = self.dir.index_file();
        if self.file.is_none() {
            self.file = Some(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| CoreError::io(&path, e))?,
            );
        }
        let mut line = serde_json::to_vec(entry).expect("plain data");
        line.push(b'\n');
        self.file
            .as_mut()
            .expect("opened above")
            .write_all(&line)
            .map_err(|e| CoreError::io(&path, e))
    }
}

impl SessionDir {
    /// Every readable index entry (a torn last line from a crash is skipped).
    pub fn index_entries(&self) -> Vec<IndexEntry> {
        let Ok(f) = fs::File::open(self.index_file()) else {
            return Vec::new();
        };
        std::io::BufReader::new(f)
            .lines()
            .map_while(|l| l.ok())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// The entry that delivered session task `task`, if any.
    pub fn index_entry(&self, task: u64) -> Option<IndexEntry> {
        self.index_entries().into_iter().find(|e| e.contains(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_find_tasks_ranges_and_failures() {
        let t = tempfile::tempdir().unwrap();
        let d = SessionDir::create(t.path().join("s")).unwrap();
        let mut w = IndexWriter::new(&d);
        let h = ResultHeader {
            chunk: 2,
            attempt: 1,
            first_task: 100,
            ntasks: 10,
            from: 4,
            count: 3,
            worker: "77_3+00000000000000aa".into(),
            start: (10, 0),
            marks: vec![(1, 15, 4)],
            failed: vec![FailedTask {
                index: 1,
                traceback: "Traceback\nValueError: x\n".into(),
            }],
            ..Default::default()
        };
        w.append(&IndexEntry::of(&h)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.index_file())
            .unwrap()
            .write_all(b"{\"torn")
            .unwrap();
        let e = d.index_entry(105).unwrap();
        assert_eq!((e.worker.as_str(), e.first), ("77_3", 104));
        assert_eq!(e.range(105, Stream::Stdout), Some((10, 15)));
        assert!(e.failure(105).unwrap().contains("ValueError"));
        assert!(e.failure(104).is_none());
        assert!(d.index_entry(103).is_none() && d.index_entry(107).is_none());
        assert_eq!(d.index_entries().len(), 1);
    }
}
