//! Misbehaving authenticated peers and slow consumers: oversized, truncated and random frames,
//! silent peers, and backpressure both ways with memory bounded by the configured budgets.

mod common;

use common::*;
use shoal_wire::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A raw peer with the right token, admitted by the engine.
fn admitted_raw(server: &Server, secrets: &SessionSecrets) -> (Raw, PeerId) {
    let mut raw = Raw::connect(server.advertised_addr());
    raw.send(&hello_frame(&token_bytes(secrets.credentials()), "raw"))
        .unwrap();
    let Event::Connected { peer, .. } = next(server) else {
        panic!("expected Connected")
    };
    assert!(server.admit(peer, config()));
    assert_eq!(raw.read_frame().unwrap().0, WELCOME);
    (raw, peer)
}

fn disconnected(server: &Server, peer: PeerId) -> Disconnect {
    match next(server) {
        Event::Disconnected(p, reason) => {
            assert_eq!(p, peer);
            reason
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[test]
fn an_oversized_frame_drops_the_peer_before_allocating() {
    let (server, secrets) = start(ServerOptions {
        limits: Limits {
            max_header: 1024,
            max_payload: 1 << 20,
        },
        ..server_options()
    });
    let (mut raw, peer) = admitted_raw(&server, &secrets);
    // Only the prefix: the server must decide from it alone.
    let head = frame(PART, b"{}", &[]);
    let mut prefix = head[..PREFIX_LEN].to_vec();
    prefix[10..18].copy_from_slice(&(1u64 << 30).to_le_bytes());
    raw.send(&prefix).unwrap();
    let reason = disconnected(&server, peer);
    assert_eq!(
        reason,
        Disconnect::Protocol(FrameError::PayloadTooLarge {
            len: 1 << 30,
            max: 1 << 20
        })
    );
    assert!(reason.to_string().contains("exceeds the limit"), "{reason}");
    assert_eq!(server.stats().buffered, 0);

    let (mut raw, peer) = admitted_raw(&server, &secrets);
    raw.send(&frame(PART, &vec![b' '; 1025], b"")[..PREFIX_LEN])
        .unwrap();
    assert_eq!(
        disconnected(&server, peer),
        Disconnect::Protocol(FrameError::HeaderTooLarge {
            len: 1025,
            max: 1024
        })
    );
}

#[test]
fn a_peer_that_dies_mid_frame_is_reported_as_truncated() {
    let (server, secrets) = start(server_options());
    let (mut raw, peer) = admitted_raw(&server, &secrets);
    let whole = frame(PART, br#"{"chunk":1}"#, &[7u8; 1000]);
    raw.send(&whole[..100]).unwrap();
    raw.kill();
    assert_eq!(
        disconnected(&server, peer),
        Disconnect::Truncated {
            received: 100,
            total: whole.len() as u64
        }
    );
    assert_eq!(server.stats().buffered, 0, "the partial payload was freed");
}

#[test]
fn a_peer_killed_between_frames_is_not_a_clean_close() {
    let (server, secrets) = start(server_options());
    let (mut raw, peer) = admitted_raw(&server, &secrets);
    raw.send(&frame(PART, b"{}", b"x")).unwrap();
    assert!(matches!(
        next(&server),
        Event::Message(_, ToDriver::Part { .. })
    ));
    raw.kill();
    assert_eq!(disconnected(&server, peer), Disconnect::Eof);
}

#[test]
fn random_bytes_from_an_admitted_peer_end_its_link_only() {
    let (server, secrets) = start(server_options());
    let (_good, good_peer) = connect_admitted(&server, &secrets, client_options());
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..8 {
        let (mut raw, peer) = admitted_raw(&server, &secrets);
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = raw.send(&noise);
        let reason = disconnected(&server, peer);
        assert!(
            matches!(reason, Disconnect::Protocol(_)),
            "round {round}: {reason}"
        );
    }
    server.send(good_peer, ToWorker::Beat { seq: 1 }).unwrap();
    assert_eq!(server.stats().peers, 1, "the good worker is unaffected");
}

#[test]
fn a_silent_peer_is_dropped_and_keepalives_keep_a_quiet_link_open() {
    let idle = Duration::from_millis(300);
    let (server, secrets) = start(ServerOptions {
        timeouts: Timeouts { idle, ..timeouts() },
        ..server_options()
    });
    let options = ClientOptions {
        timeouts: Timeouts { idle, ..timeouts() },
        ..client_options()
    };
    let (link, _) = connect_admitted(&server, &secrets, options);
    // The raw peer sends no keep-alives: it is cut after `idle`.
    let (_raw, peer) = admitted_raw(&server, &secrets);
    assert_eq!(disconnected(&server, peer), Disconnect::Idle(idle));
    // The real worker, with nothing to say for several idle periods, stays connected.
    quiet(&server, idle * 4);
    link.send(ToDriver::NeedBlob { id: 1 }).unwrap();
    assert!(matches!(
        next(&server),
        Event::Message(_, ToDriver::NeedBlob { id: 1 })
    ));
}

#[test]
fn a_driver_that_does_not_drain_throttles_a_flooding_worker() {
    const MIB: usize = 1 << 20;
    const PARTS: usize = 96;
    let budget = 4 * MIB as u64;
    let (server, secrets) = start(ServerOptions {
        events: 4,
        receive_budget: budget,
        ..server_options()
    });
    let (link, peer) = connect_admitted(&server, &secrets, client_options());
    let link = Arc::new(link);
    let sent = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (link, sent) = (Arc::clone(&link), Arc::clone(&sent));
        std::thread::spawn(move || {
            for i in 0..PARTS {
                let part = ToDriver::Part {
                    header: Json::new(&i).unwrap(),
                    payload: Bytes::from(vec![i as u8; MIB]),
                };
                link.send(part).unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Let the worker run into the wall, then look: it stopped, and the driver holds at most
    // its budget.
    let mut last = usize::MAX;
    wait_until("the worker to stall", || {
        let now = sent.load(Ordering::SeqCst);
        let stalled = now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        stalled
    });
    let stalled_at = sent.load(Ordering::SeqCst);
    assert!(
        stalled_at < PARTS / 2,
        "sent {stalled_at} of {PARTS} without being read"
    );
    assert!(server.stats().buffered <= budget, "{:?}", server.stats());
    // Drain: everything arrives, in order, and the worker finishes.
    for i in 0..PARTS {
        match next(&server) {
            Event::Message(p, ToDriver::Part { header, payload }) => {
                assert_eq!(p, peer);
                assert_eq!(header.parse::<usize>().unwrap(), i);
                assert_eq!(payload.len(), MIB);
                assert!(payload.iter().all(|&b| b == i as u8));
                assert!(server.stats().buffered <= budget);
            }
            other => panic!("expected part {i}, got {other:?}"),
        }
    }
    flood.join().unwrap();
    assert_eq!(
        server.stats().buffered,
        0,
        "dropped payloads return their budget"
    );
}

#[test]
fn a_worker_that_does_not_read_fills_its_queue_and_then_is_writable() {
    const MIB: usize = 1 << 20;
    let (server, secrets) = start(ServerOptions {
        peer_queue: QueueLimits {
            messages: 8,
            bytes: 4 * MIB as u64,
        },
        ..server_options()
    });
    let (link, peer) = connect_admitted(
        &server,
        &secrets,
        ClientOptions {
            inbox: 2,
            receive_budget: 2 * MIB as u64,
            ..client_options()
        },
    );
    // Keep offering until the queue has stayed full for a while: the worker reads nothing.
    let mut accepted = 0u64;
    let mut full_since = None;
    let payload = Bytes::from(vec![3u8; MIB]);
    loop {
        let msg = ToWorker::Blob {
            id: accepted,
            payload: payload.clone(),
        };
        match server.send(peer, msg) {
            Ok(()) => {
                accepted += 1;
                full_since = None;
            }
            Err(SendError::Full(ToWorker::Blob { id, .. })) => {
                assert_eq!(id, accepted, "the refused message comes back");
                let since = *full_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 1000, "send never stayed Full");
    }
    // Bounded by the queue (4 MiB), the worker's inbox and budget, and socket buffers.
    assert!(accepted > 4, "the writer drained nothing into the socket");
    assert!(
        accepted < 48,
        "accepted {accepted} MiB for a worker that reads nothing"
    );
    for id in 0..accepted {
        match link.recv(WAIT).unwrap() {
            Some(ToWorker::Blob { id: got, payload }) => {
                assert_eq!(got, id);
                assert_eq!(payload.len(), MIB);
            }
            other => panic!("expected blob {id}, got {other:?}"),
        }
    }
    match next(&server) {
        Event::Writable(p) => assert_eq!(p, peer),
        other => panic!("expected Writable, got {other:?}"),
    }
    server.send(peer, ToWorker::Beat { seq: 1 }).unwrap();
}

#[test]
fn a_peer_that_stops_reading_is_dropped_after_the_stall_limit() {
    let write_stall = Duration::from_millis(300);
    let (server, secrets) = start(ServerOptions {
        timeouts: Timeouts {
            write_stall,
            ..timeouts()
        },
        ..server_options()
    });
    let (_raw, peer) = admitted_raw(&server, &secrets);
    // The raw peer reads nothing more: the socket buffers fill, then the writer makes no
    // progress for `write_stall`.
    let blob = Bytes::from(vec![0u8; 8 << 20]);
    for id in 0.. {
        let msg = ToWorker::Blob {
            id,
            payload: blob.clone(),
        };
        match server.send(peer, msg) {
            Ok(()) => {}
            Err(SendError::Full(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        disconnected(&server, peer),
        Disconnect::WriteStalled(write_stall)
    );
}
