//! Which filesystem holds the run registry, and the SQLite journal mode that is safe on it.
//!
//! WAL needs shared memory (`runs.db-shm`, mmap'ed) that every process sees coherently, which
//! only a local filesystem gives: on NFS, Lustre, GPFS, GlusterFS (FUSE), BeeGFS or CIFS, a
//! `shoal runs` on another node would read a stale or torn index and can corrupt the database.
//! There the registry uses the rollback journal (DELETE), whose only requirement is working
//! POSIX locks, and a busy timeout so writers from several nodes wait for each other.

use crate::error::{Result, RunError};
use std::path::Path;

/// `statfs(2)` f_type values of filesystems shared between hosts (linux/magic.h and the
/// vendors' headers for Lustre, GPFS, BeeGFS, PanFS). FUSE is counted as shared: GlusterFS,
/// CephFS-fuse, sshfs and the object-store mounts all come through it.
const NETWORK: [(i64, &str); 17] = [
    (0x6969, "NFS"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
    (0x6573_5546, "FUSE (e.g. GlusterFS)"),
    (0x1983_0326, "BeeGFS"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x517B, "SMB"),
    (0x00C3_6400, "CephFS"),
    (0x5346_414F, "AFS"),
    (0x6B41_4653, "AFS"),
    (0x7375_7245, "Coda"),
    (0x0116_1970, "GFS2"),
    (0x7461_636F, "OCFS2"),
    (0x0102_1997, "9P"),
    (0xAAD7_AAEA, "PanFS"),
    (0x2003_0528, "OrangeFS"),
];

/// The kind of filesystem a path is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Local,
    /// Shared between hosts; the name is for messages.
    Network(&'static str),
}

/// Classify a `statfs` f_type. Magic numbers are 32-bit; some platforms sign-extend them.
pub fn classify(f_type: i64) -> FsKind {
    let t = f_type & 0xFFFF_FFFF;
    NETWORK
        .iter()
        .find(|(magic, _)| *magic == t)
        .map_or(FsKind::Local, |(_, name)| FsKind::Network(name))
}

/// The filesystem of `dir` (which must exist).
pub fn kind_of(dir: &Path) -> std::io::Result<FsKind> {
    let st = rustix::fs::statfs(dir)?;
    #[allow(clippy::unnecessary_cast)] // f_type is i64 on some targets, u32 or i32 on others
    Ok(classify(st.f_type as i64))
}

/// SQLite journal modes the registry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// Write-ahead log: readers never block the writer. Local filesystems only.
    Wal,
    /// Rollback journal deleted at each commit: needs only POSIX locks.
    Delete,
    /// Rollback journal truncated at each commit (fewer metadata operations than DELETE).
    Truncate,
}

impl JournalMode {
    pub fn pragma(self) -> &'static str {
        match self {
            JournalMode::Wal => "WAL",
            JournalMode::Delete => "DELETE",
            JournalMode::Truncate => "TRUNCATE",
        }
    }
}

/// Overrides the choice, for a registry served from a host that sees it as local while other
/// hosts reach it over the network (the one case statfs cannot tell).
pub const JOURNAL_ENV: &str = "SHOAL_REGISTRY_JOURNAL";

/// The journal mode for a registry on `kind`, unless `requested` (the value of
/// SHOAL_REGISTRY_JOURNAL) names one. WAL is refused on a network filesystem.
pub fn choose(kind: FsKind, requested: Option<&str>) -> Result<JournalMode> {
    let requested = requested.map(str::trim).filter(|s| !s.is_empty());
    let mode = match requested.map(str::to_ascii_lowercase).as_deref() {
        None => {
            return Ok(match kind {
                FsKind::Local => JournalMode::Wal,
                FsKind::Network(_) => JournalMode::Delete,
            })
        }
        Some("wal") => JournalMode::Wal,
        Some("delete") => JournalMode::Delete,
        Some("truncate") => JournalMode::Truncate,
        Some(other) => {
            return Err(RunError::Command(format!(
                "{JOURNAL_ENV}={other:?} is not a journal mode\nhint: use wal (local \
                 filesystems), delete or truncate (network filesystems), or unset it"
            )))
        }
    };
    if let (JournalMode::Wal, FsKind::Network(name)) = (mode, kind) {
        return Err(RunError::Command(format!(
            "{JOURNAL_ENV}=wal, but the run registry is on {name}: SQLite's WAL mode does not \
             work on a network filesystem\nhint: unset {JOURNAL_ENV} (shoal then uses delete \
             there), or set SHOAL_HOME to a local directory"
        )));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_recognised() {
        assert_eq!(classify(0x6969), FsKind::Network("NFS"));
        assert_eq!(
            classify(0x6573_5546),
            FsKind::Network("FUSE (e.g. GlusterFS)")
        );
        assert_eq!(classify(0x0BD0_0BD0), FsKind::Network("Lustre"));
        assert_eq!(classify(0x4750_4653), FsKind::Network("GPFS"));
        assert_eq!(classify(0x1983_0326), FsKind::Network("BeeGFS"));
        // CIFS's magic has the top bit set: a sign-extended f_type still matches.
        assert_eq!(
            classify(0xFF53_4D42_u32 as i32 as i64),
            FsKind::Network("CIFS")
        );
        for local in [
            0xEF53,      /* ext4 */
            0x5846_5342, /* xfs */
            0x0102_1994, /* tmpfs */
        ] {
            assert_eq!(classify(local), FsKind::Local, "{local:#x}");
        }
    }

    #[test]
    fn journal_mode_follows_the_filesystem() {
        let nfs = FsKind::Network("NFS");
        assert_eq!(choose(FsKind::Local, None).unwrap(), JournalMode::Wal);
        assert_eq!(choose(nfs, None).unwrap(), JournalMode::Delete);
        assert_eq!(choose(nfs, Some("")).unwrap(), JournalMode::Delete);
        assert_eq!(
            choose(nfs, Some("Truncate")).unwrap(),
            JournalMode::Truncate
        );
        assert_eq!(
            choose(FsKind::Local, Some("delete")).unwrap(),
            JournalMode::Delete
        );
        let e = choose(nfs, Some("wal")).unwrap_err().to_string();
        assert!(e.contains("on NFS") && e.contains("hint:"), "{e}");
        let e = choose(FsKind::Local, Some("memory"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a journal mode"), "{e}");
    }

    #[test]
    fn statfs_reads_the_real_filesystem() {
        // procfs is local on every Linux host.
        assert_eq!(kind_of(Path::new("/proc")).unwrap(), FsKind::Local);
        assert!(kind_of(Path::new("/no/such/dir")).is_err());
    }
}
