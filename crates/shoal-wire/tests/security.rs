//! Authentication: a wrong token and a wrong certificate are refused; nothing an unauthenticated
//! peer sends reaches the engine; handshakes cannot be held open or flooded.

mod common;

use common::*;
use shoal_wire::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rejected(server: &Server) -> Rejection {
    match next(server) {
        Event::Rejected(r) => r,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[test]
fn a_wrong_token_is_refused_on_both_sides() {
    let (server, secrets) = start(server_options());
    let forged = Credentials {
        fingerprint: secrets.fingerprint(),
        token: Token::random(),
    };
    let addr = server.advertised_addr().to_string();
    let err = connect(&addr, &forged, &hello("w1"), &client_options()).unwrap_err();
    assert!(
        matches!(&err, ConnectError::Refused { reason, .. } if reason.contains("token")),
        "{err}"
    );
    let r = rejected(&server);
    assert!(r.reason.contains("invalid session token"), "{r}");
    assert_eq!(r.addr.ip(), server.advertised_addr().ip());
    quiet(&server, Duration::from_millis(200));
    assert_eq!(server.stats().rejected, 1);
    assert_eq!(server.stats().peers, 0);
}

#[test]
fn a_wrong_certificate_is_refused_by_the_worker() {
    let (server, secrets) = start(server_options());
    let other_session = SessionSecrets::generate().unwrap();
    let trusting_other = Credentials {
        fingerprint: other_session.fingerprint(),
        token: secrets.credentials().token.clone(),
    };
    let addr = server.advertised_addr().to_string();
    let err = connect(&addr, &trusting_other, &hello("w1"), &client_options()).unwrap_err();
    match &err {
        ConnectError::WrongCertificate {
            addr: a,
            expected,
            found,
        } => {
            assert_eq!(a, &addr);
            assert_eq!(*expected, other_session.fingerprint());
            assert_eq!(*found, secrets.fingerprint());
        }
        other => panic!("expected WrongCertificate, got {other}"),
    }
    // The worker aborted the handshake: its token never left it, and the driver logs why.
    let r = rejected(&server);
    assert!(r.reason.contains("TLS handshake failed"), "{r}");
    quiet(&server, Duration::from_millis(200));
}

/// The proof that only the fixed-layout Hello is read before authentication: connections that
/// follow a bad Hello (or no Hello) with frames that would be valid messages produce nothing
/// but `Rejected`, never a peer, a message, or a buffered byte.
#[test]
fn nothing_from_an_unauthenticated_peer_reaches_the_engine() {
    let (server, secrets) = start(server_options());
    let addr = server.advertised_addr();
    let good = token_bytes(secrets.credentials());
    let mut wrong = good;
    wrong[31] ^= 1;

    // 1. A Hello whose token differs in one bit, then a well-formed result frame.
    let mut raw = Raw::connect(addr);
    raw.send(&hello_frame(&wrong, "w1")).unwrap();
    let _ = raw.send(&part_frame());
    let (kind, header) = raw.read_frame().unwrap();
    assert_eq!(
        (kind, header.contains("invalid session token")),
        (REFUSED, true)
    );
    assert!(rejected(&server).reason.contains("invalid session token"));

    // 2. A result frame instead of a Hello, even with the right token inside its payload.
    let mut raw = Raw::connect(addr);
    let mut forged = part_frame();
    forged.extend_from_slice(&good);
    let _ = raw.send(&forged);
    let r = rejected(&server);
    assert!(r.reason.contains("first frame is not a Hello"), "{r}");

    // 3. A Hello declaring a body far larger than any Hello (nothing is allocated for it).
    let mut raw = Raw::connect(addr);
    let mut big = hello_frame(&good, "w1");
    big[10..18].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let _ = raw.send(&big[..18]);
    let r = rejected(&server);
    assert!(r.reason.contains("exceeds the limit"), "{r}");

    // 4. Not TLS at all.
    let mut tcp = TcpStream::connect(addr).unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: driver\r\n\r\n");
    let r = rejected(&server);
    assert!(r.reason.contains("TLS handshake failed"), "{r}");

    // 5. A valid token with a malformed rest: refused, still not a peer.
    let mut raw = Raw::connect(addr);
    let mut bad_utf8 = hello_frame(&good, "w1");
    let at = bad_utf8.len() - 2; // inside the host name
    bad_utf8[at] = 0xff;
    let _ = raw.send(&bad_utf8);
    let r = rejected(&server);
    assert!(r.reason.contains("UTF-8"), "{r}");

    quiet(&server, Duration::from_millis(300));
    let stats = server.stats();
    assert_eq!((stats.peers, stats.rejected, stats.buffered), (0, 5, 0));
}

#[test]
fn a_silent_or_slow_handshake_is_cut_at_the_deadline() {
    let handshake = Duration::from_millis(400);
    let (server, _secrets) = start(ServerOptions {
        timeouts: Timeouts {
            handshake,
            ..timeouts()
        },
        ..server_options()
    });
    let addr = server.advertised_addr();
    let began = Instant::now();
    let _silent = TcpStream::connect(addr).unwrap();
    let r = rejected(&server);
    assert!(r.reason.contains("timed out"), "{r}");
    assert!(began.elapsed() >= handshake);

    // One byte at a time, each well inside the per-read limit: still bounded by the deadline.
    let mut slow = TcpStream::connect(addr).unwrap();
    let began = Instant::now();
    let drip = std::thread::spawn(move || {
        for b in [0x16u8, 0x03, 0x01, 0x02, 0x00].iter().cycle().take(40) {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let r = rejected(&server);
    assert!(r.reason.contains("timed out"), "{r}");
    assert!(began.elapsed() < handshake * 3, "{:?}", began.elapsed());
    drip.join().unwrap();
}

#[test]
fn a_connection_flood_is_capped_while_authenticating() {
    let (server, secrets) = start(ServerOptions {
        max_authenticating: 4,
        ..server_options()
    });
    let addr = server.advertised_addr();
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("four connections authenticating", || {
        server.stats().authenticating == 4
    });
    let _fifth = TcpStream::connect(addr).unwrap();
    let r = rejected(&server);
    assert!(r.reason.contains("more than 4 connections"), "{r}");
    drop(idle);
    wait_until("the slots to free up", || {
        server.stats().authenticating == 0
    });
    for _ in 0..4 {
        assert!(matches!(next(&server), Event::Rejected(_)));
    }
    // A real worker gets in once the flood is gone.
    let (_link, _peer) = connect_admitted(&server, &secrets, client_options());
}
