//! What kind of filesystem a path is on: local disk, a network filesystem that other nodes
//! may share (NFS, Lustre, GPFS, BeeGFS, GlusterFS, CephFS, ...), or an object store behind
//! FUSE (s3fs, gcsfuse, blobfuse) whose `rename` is a copy and a delete — which the chunk
//! protocol cannot use, because a claim by rename must be atomic.
//!
//! `statfs` gives the filesystem magic; FUSE mounts are told apart by their subtype in
//! `/proc/self/mountinfo` (`fuse.glusterfs`, `fuse.s3fs`, ...).

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    /// Only this host sees it (ext4, xfs, btrfs, tmpfs, overlay, ...).
    Local(String),
    /// Other hosts may mount it too; no inotify across hosts, attribute caches, metadata
    /// servers to be gentle with.
    Network(String),
    /// Renames are not atomic: the protocol refuses to run on it.
    ObjectStore(String),
}

impl FsKind {
    pub fn name(&self) -> &str {
        match self {
            FsKind::Local(n) | FsKind::Network(n) | FsKind::ObjectStore(n) => n,
        }
    }

    pub fn is_network(&self) -> bool {
        matches!(self, FsKind::Network(_))
    }
}

// Magic numbers from statfs(2) and the filesystems' own headers.
const NETWORK_MAGICS: &[(i64, &str)] = &[
    (0x6969, "nfs"),
    (0x0BD0_0BD0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0x1983_0326, "beegfs"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x517B, "smb"),
    (0x00C3_6400, "ceph"),
    (0x5346_414F, "afs"),
    (0x6B41_4653, "afs"),
    (0xAAD7_AAEA, "panfs"),
    (0x2003_0528, "pvfs2"),
    (0x0102_1997, "9p"),
    (0x7461_636F, "ocfs2"),
];
const FUSE_MAGIC: i64 = 0x6573_5546;

/// FUSE subtypes whose `rename` is not atomic (object stores).
const OBJECT_STORES: &[&str] = &[
    "s3fs",
    "gcsfuse",
    "blobfuse",
    "blobfuse2",
    "goofys",
    "rclone",
    "mountpoint-s3",
    "s3backer",
];

/// Classify the filesystem holding `path` (or its nearest existing ancestor).
pub fn detect(path: &Path) -> FsKind {
    let mut probe = path.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return FsKind::Local("unknown".into());
        }
    }
    let magic = match nix::sys::statfs::statfs(&probe) {
        Ok(s) => s.filesystem_type().0,
        Err(_) => return FsKind::Local("unknown".into()),
    };
    if let Some((_, name)) = NETWORK_MAGICS.iter().find(|(m, _)| *m == magic) {
        return FsKind::Network((*name).to_string());
    }
    if magic == FUSE_MAGIC {
        let fstype = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|info| mount_fstype(&info, &probe))
            .unwrap_or_else(|| "fuse".into());
        return classify_fuse(&fstype);
    }
    FsKind::Local(format!("0x{magic:x}"))
}

fn classify_fuse(fstype: &str) -> FsKind {
    let sub = fstype
        .strip_prefix("fuse.")
        .or_else(|| fstype.strip_prefix("fuseblk."))
        .unwrap_or(fstype);
    if OBJECT_STORES.contains(&sub) {
        FsKind::ObjectStore(sub.to_string())
    } else if sub == "fuse" || sub == "fuseblk" || sub == "sshfs" {
        // An unnamed FUSE filesystem may be anything; treat it as shared so that shoal polls
        // gently and never relies on inotify.
        FsKind::Network(sub.to_string())
    } else {
        FsKind::Network(sub.to_string())
    }
}

/// The fstype of the mount that holds `path` (the longest mount point that is a prefix).
fn mount_fstype(mountinfo: &str, path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source super
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        let (_, after) = line.split_once(" - ")?;
        let fstype = after.split(' ').next()?;
        let mp = unescape(mount_point);
        if path.starts_with(&mp) && best.as_ref().is_none_or(|(len, _)| mp.len() >= *len) {
            best = Some((mp.len(), fstype.to_string()));
        }
    }
    best.map(|(_, t)| t)
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() + 1 && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_subtypes() {
        assert_eq!(
            classify_fuse("fuse.glusterfs"),
            FsKind::Network("glusterfs".into())
        );
        assert_eq!(
            classify_fuse("fuse.s3fs"),
            FsKind::ObjectStore("s3fs".into())
        );
        assert_eq!(
            classify_fuse("fuse.gcsfuse"),
            FsKind::ObjectStore("gcsfuse".into())
        );
        assert!(classify_fuse("fuse").is_network());
    }

    #[test]
    fn mountinfo_longest_prefix_wins() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /mnt/gv0 rw,relatime - fuse.glusterfs srv:/gv0 rw
31 22 0:41 / /mnt/my\\040bucket rw - fuse.s3fs s3fs rw
";
        assert_eq!(
            mount_fstype(info, Path::new("/mnt/gv0/x/y")).as_deref(),
            Some("fuse.glusterfs")
        );
        assert_eq!(
            mount_fstype(info, Path::new("/mnt/my bucket/k")).as_deref(),
            Some("fuse.s3fs")
        );
        assert_eq!(
            mount_fstype(info, Path::new("/home/u")).as_deref(),
            Some("ext4")
        );
    }

    #[test]
    fn local_disk_is_local() {
        let d = tempfile::tempdir().unwrap();
        assert!(!detect(d.path()).is_network());
    }
}
