//! Properties of the frame decoder over malformed, truncated, oversized and random input: it
//! never panics, never holds more than the declared-and-allowed sizes, never returns a frame it
//! did not get whole, and always either makes progress or stops with an error (no hang).

mod common;

use common::frame as encode;
use proptest::prelude::*;
use shoal_wire::{Decoder, Frame, FrameError, Limits, PREFIX_LEN};

const LIMITS: Limits = Limits {
    max_header: 64,
    max_payload: 512,
};

fn any_kind(_: u8) -> bool {
    true
}

type Spec = (u8, Vec<u8>, Vec<u8>);

fn frames() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(
        (
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..=64),
            prop::collection::vec(any::<u8>(), 0..=512),
        ),
        0..8,
    )
}

/// Feed `bytes` in pieces of the given sizes, checking the decoder's invariants at every step.
/// Returns the frames decoded and the error that stopped it, if any.
fn run(bytes: &[u8], cuts: &[usize]) -> (Vec<Frame>, Option<FrameError>) {
    let mut dec = Decoder::new(LIMITS, any_kind);
    let most = (LIMITS.max_header as u64 + LIMITS.max_payload) as usize;
    let mut frames = vec![];
    let mut at = 0;
    let mut cut = cuts.iter().cycle();
    while at < bytes.len() {
        let step = (*cut.next().unwrap_or(&1)).max(1);
        let piece = &bytes[at..bytes.len().min(at + step)];
        let mut used_here = 0;
        while used_here < piece.len() {
            match dec.feed(&piece[used_here..]) {
                Ok((used, frame)) => {
                    assert!(
                        used > 0 || frame.is_some(),
                        "no progress: the decoder would hang"
                    );
                    used_here += used;
                    frames.extend(frame);
                }
                Err(e) => return (frames, Some(e)),
            }
            assert!(dec.allocated() <= most, "holds {} bytes", dec.allocated());
            assert!(dec.buf().len() <= most.max(PREFIX_LEN));
        }
        at += piece.len();
    }
    (frames, None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_survive_any_split(specs in frames(), cuts in prop::collection::vec(1usize..700, 1..16)) {
        let bytes: Vec<u8> = specs.iter().flat_map(|(k, h, p)| encode(*k, h, p)).collect();
        let (got, err) = run(&bytes, &cuts);
        prop_assert!(err.is_none());
        prop_assert_eq!(got.len(), specs.len());
        for (f, (k, h, p)) in got.iter().zip(&specs) {
            prop_assert_eq!(f.kind, *k);
            prop_assert_eq!(&f.header, h);
            prop_assert_eq!(&f.payload[..], &p[..]);
        }
    }

    #[test]
    fn a_truncated_stream_yields_only_whole_frames(specs in frames(), keep in any::<prop::sample::Index>()) {
        let bytes: Vec<u8> = specs.iter().flat_map(|(k, h, p)| encode(*k, h, p)).collect();
        let cut = if bytes.is_empty() { 0 } else { keep.index(bytes.len()) };
        let mut whole = 0;
        let mut end = 0;
        for (k, h, p) in &specs {
            end += encode(*k, h, p).len();
            if end <= cut { whole += 1 }
        }
        let (got, err) = run(&bytes[..cut], &[97]);
        prop_assert!(err.is_none());
        prop_assert_eq!(got.len(), whole);
    }

    #[test]
    fn random_bytes_never_crash_or_overallocate(bytes in prop::collection::vec(any::<u8>(), 0..2048), cuts in prop::collection::vec(1usize..300, 1..8)) {
        run(&bytes, &cuts);
    }

    #[test]
    fn random_prefixes_are_checked_before_allocation(kind in any::<u8>(), header_len in any::<u32>(), payload_len in any::<u64>(), tail in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut bytes = b"SHWL\x01".to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&header_len.to_le_bytes());
        bytes.extend_from_slice(&payload_len.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let (got, err) = run(&bytes, &[bytes.len()]);
        let allowed = header_len <= LIMITS.max_header && payload_len <= LIMITS.max_payload;
        if !allowed {
            prop_assert!(got.is_empty());
            let oversized = matches!(err, Some(FrameError::HeaderTooLarge { .. }) | Some(FrameError::PayloadTooLarge { .. }));
            prop_assert!(oversized, "{:?}", err);
        }
    }

    #[test]
    fn a_corrupted_byte_never_corrupts_the_frames_before_it(specs in frames(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes: Vec<u8> = specs.iter().flat_map(|(k, h, p)| encode(*k, h, p)).collect();
        prop_assume!(!bytes.is_empty());
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        let (got, _) = run(&bytes, &[333]);
        let mut end = 0;
        for (f, (k, h, p)) in got.iter().zip(&specs) {
            end += encode(*k, h, p).len();
            if end <= at {
                prop_assert_eq!(f.kind, *k);
                prop_assert_eq!(&f.header, h);
                prop_assert_eq!(&f.payload[..], &p[..]);
            }
        }
    }
}

/// A byte-level fuzz loop with structure-aware mutations (valid frames with bytes flipped,
/// inserted, removed, lengths rewritten), deterministic and bounded: 20,000 inputs.
#[test]
fn fuzz_loop_over_mutated_frames() {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move |n: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n.max(1) as u64) as usize
    };
    for _ in 0..20_000 {
        let mut bytes = Vec::new();
        for _ in 0..rnd(4) + 1 {
            let header: Vec<u8> = (0..rnd(80)).map(|_| rnd(256) as u8).collect();
            let payload: Vec<u8> = (0..rnd(600)).map(|_| rnd(256) as u8).collect();
            bytes.extend(encode(rnd(256) as u8, &header, &payload));
        }
        for _ in 0..rnd(4) {
            let at = rnd(bytes.len());
            match rnd(4) {
                0 => bytes[at] ^= 1 << rnd(8),
                1 => bytes.insert(at, rnd(256) as u8),
                2 => {
                    bytes.remove(at);
                }
                _ => {
                    let len = (rnd(3) as u64) << (rnd(40) as u64);
                    let end = (at + 8).min(bytes.len());
                    bytes[at..end].copy_from_slice(&len.to_le_bytes()[..end - at]);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        let cuts = [rnd(200) + 1, rnd(50) + 1, rnd(1000) + 1];
        run(&bytes, &cuts);
    }
}
