//! Which filesystem holds the run registry, and how the registry is stored there.
//!
//! SQLite is correct only where every process sees one coherent file and working locks: a
//! local disk. There the registry is one database in WAL mode. On NFS, Lustre, GPFS,
//! GlusterFS (FUSE), BeeGFS or CIFS, client-side caches need not honour lock boundaries
//! (GlusterFS's write-behind and io-cache do not, and two writers on two nodes corrupt a
//! DELETE-mode database within seconds), so there the registry is a record store (see
//! `records`), whose correctness needs only atomic rename and exclusive create.

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

/// How the registry is stored: one SQLite database in one of its journal modes (local
/// filesystems), or a record store (any filesystem; the default on a network one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalMode {
    /// Write-ahead log: readers never block the writer.
    Wal,
    /// Rollback journal deleted at each commit.
    Delete,
    /// Rollback journal truncated at each commit (fewer metadata operations than DELETE).
    Truncate,
    /// Immutable per-write records in `runs.d`, merged into a node-local cache.
    Records,
}

impl JournalMode {
    /// The name SHOAL_REGISTRY_JOURNAL takes (and SQLite's journal_mode, for its modes).
    pub fn pragma(self) -> &'static str {
        match self {
            JournalMode::Wal => "WAL",
            JournalMode::Delete => "DELETE",
            JournalMode::Truncate => "TRUNCATE",
            JournalMode::Records => "RECORDS",
        }
    }
}

/// Overrides the choice: `records` for a registry served from a host that sees it as local
/// while other hosts reach it over the network (the one case statfs cannot tell).
pub const JOURNAL_ENV: &str = "SHOAL_REGISTRY_JOURNAL";

/// The store for a registry on `kind`, unless `requested` (the value of
/// SHOAL_REGISTRY_JOURNAL) names one. SQLite is refused on a network filesystem.
pub fn choose(kind: FsKind, requested: Option<&str>) -> Result<JournalMode> {
    let requested = requested.map(str::trim).filter(|s| !s.is_empty());
    let mode = match requested.map(str::to_ascii_lowercase).as_deref() {
        None => {
            return Ok(match kind {
                FsKind::Local => JournalMode::Wal,
                FsKind::Network(_) => JournalMode::Records,
            })
        }
        Some("wal") => JournalMode::Wal,
        Some("delete") => JournalMode::Delete,
        Some("truncate") => JournalMode::Truncate,
        Some("records") => JournalMode::Records,
        Some(other) => {
            return Err(RunError::Command(format!(
                "{JOURNAL_ENV}={other:?} is not a journal mode\nhint: use records (any \
                 filesystem), or wal, delete or truncate (SQLite, local filesystems only), or \
                 unset it"
            )))
        }
    };
    if let (false, FsKind::Network(name)) = (mode == JournalMode::Records, kind) {
        return Err(RunError::Command(format!(
            "{JOURNAL_ENV}={}, but the run registry is on {name}: SQLite is not safe on a \
             network filesystem (client caches do not honour its locks, and writers on two \
             nodes corrupt the database)\nhint: unset {JOURNAL_ENV} (shoal then keeps the \
             registry as records there), or set SHOAL_HOME to a local directory",
            mode.pragma().to_ascii_lowercase()
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
        assert_eq!(choose(nfs, None).unwrap(), JournalMode::Records);
        assert_eq!(choose(nfs, Some("")).unwrap(), JournalMode::Records);
        assert_eq!(
            choose(FsKind::Local, Some("Truncate")).unwrap(),
            JournalMode::Truncate
        );
        assert_eq!(
            choose(FsKind::Local, Some("records")).unwrap(),
            JournalMode::Records
        );
        for sqlite in ["wal", "delete", "truncate"] {
            let e = choose(nfs, Some(sqlite)).unwrap_err().to_string();
            assert!(e.contains("on NFS") && e.contains("hint:"), "{e}");
        }
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
