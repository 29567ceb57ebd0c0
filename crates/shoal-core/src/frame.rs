//! The on-disk frame of chunk and result files: a fixed binary prefix, a JSON header the
//! engine can read, and an opaque payload (Python pickles), all covered by one CRC-32.
//!
//! ```text
//! "SHL1" | header_len: u32 LE | payload_len: u64 LE | crc32(header ++ payload): u32 LE | header | payload
//! ```
//! A reader that finds a short file or a wrong checksum treats it as absent-and-corrupt,
//! never as a result: partial writes on a shared FS cannot turn into wrong answers.

use crate::error::{CoreError, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

const MAGIC: &[u8; 4] = b"SHL1";
const PREFIX: usize = 4 + 4 + 8 + 4;

/// Serialize a header and payload into the frame's prefix+header bytes (payload kept separate
/// so large payloads are not copied).
pub fn encode<H: Serialize>(header: &H, payload: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(header).expect("headers are plain data");
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(payload);
    let mut out = Vec::with_capacity(PREFIX + head.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&head);
    out
}

/// Parse a whole frame; `path` only names the file in errors.
pub fn decode<H: DeserializeOwned>(path: &Path, mut bytes: Vec<u8>) -> Result<(H, Vec<u8>)> {
    let corrupt = |reason: &str| CoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if bytes.len() < PREFIX || &bytes[..4] != MAGIC {
        return Err(corrupt("not a shoal frame (bad magic or too short)"));
    }
    let head_len = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let payload_len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    if bytes.len() != PREFIX + head_len + payload_len {
        return Err(corrupt("length does not match its header (truncated write?)"));
    }
    if crc32fast::hash(&bytes[PREFIX..]) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    let header: H = serde_json::from_slice(&bytes[PREFIX..PREFIX + head_len])
        .map_err(|e| corrupt(&format!("bad header: {e}")))?;
    let payload = bytes.split_off(PREFIX + head_len);
    Ok((header, payload))
}

/// Read only the JSON header of a frame file (for `shoal logs`, which never needs payloads).
pub fn read_header<H: DeserializeOwned>(path: &Path) -> Result<H> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut prefix = [0u8; PREFIX];
    f.read_exact(&mut prefix)
        .map_err(|e| CoreError::io(path, e))?;
    if &prefix[..4] != MAGIC {
        return Err(CoreError::Corrupt {
            path: path.to_path_buf(),
            reason: "not a shoal frame".into(),
        });
    }
    let head_len = u32::from_le_bytes(prefix[4..8].try_into().unwrap()) as usize;
    let mut head = vec![0u8; head_len];
    f.read_exact(&mut head).map_err(|e| CoreError::io(path, e))?;
    serde_json::from_slice(&head).map_err(|e| CoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("bad header: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct H {
        a: u32,
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = encode(&H { a: 7 }, payload);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn roundtrip() {
        let (h, p): (H, Vec<u8>) = decode(Path::new("x"), frame(b"payload")).unwrap();
        assert_eq!(h, H { a: 7 });
        assert_eq!(p, b"payload");
    }

    #[test]
    fn truncation_and_bitflips_are_detected() {
        let f = frame(b"payload");
        let short = f[..f.len() - 1].to_vec();
        assert!(decode::<H>(Path::new("x"), short).is_err());
        let mut flipped = f.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let e = decode::<H>(Path::new("x"), flipped).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        assert!(decode::<H>(Path::new("x"), b"junk".to_vec()).is_err());
    }

    #[test]
    fn header_only_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, frame(b"zzz")).unwrap();
        assert_eq!(read_header::<H>(&p).unwrap(), H { a: 7 });
    }
}
