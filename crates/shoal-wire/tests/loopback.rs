//! A driver and workers over real TLS on 127.0.0.1: every message both ways, admission,
//! refusal, closing, heartbeats and connection retries.

mod common;

use common::*;
use shoal_wire::*;
use std::time::Duration;

fn worker_messages() -> Vec<ToDriver> {
    vec![
        ToDriver::Started {
            chunk: 1,
            attempt: 1,
        },
        ToDriver::Beat {
            seq: 1,
            chunk: Some(1),
            task: Some(0),
        },
        ToDriver::Output {
            stream: Stream::Out,
            offset: 0,
            bytes: Bytes::from_static(b"hello\n"),
        },
        ToDriver::Part {
            header: Json::from_text(r#"{"chunk":1,"first":0,"n":2}"#).unwrap(),
            payload: Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>()),
        },
        ToDriver::NeedBlob { id: 3 },
        ToDriver::Revoked { chunk: 2, ok: true },
        ToDriver::Checkpoint {
            chunk: 2,
            task: 5,
            payload: Bytes::from_static(b"\x80\x05state"),
        },
    ]
}

fn driver_messages() -> Vec<ToWorker> {
    vec![
        ToWorker::Blob {
            id: 3,
            payload: Bytes::from(vec![1u8; 70_000]),
        },
        ToWorker::Assign {
            header: Json::from_text(r#"{"chunk":1,"blob":3}"#).unwrap(),
            payload: Bytes::from_static(b"\x80\x05calls"),
        },
        ToWorker::Revoke { chunk: 2 },
        ToWorker::Beat { seq: 9 },
        ToWorker::Checkpoint {
            chunk: 2,
            task: 5,
            payload: Bytes::from_static(b"\x80\x05state"),
        },
        ToWorker::Stop { graceful: true },
    ]
}

#[test]
fn every_message_crosses_in_order_both_ways() {
    let (server, secrets) = start(server_options());
    let (link, peer) = connect_admitted(&server, &secrets, client_options());

    for msg in worker_messages() {
        link.send(msg).unwrap();
    }
    for want in worker_messages() {
        match next(&server) {
            Event::Message(p, got) => {
                assert_eq!(p, peer);
                assert_eq!(got, want);
            }
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
    for msg in driver_messages() {
        server.send(peer, msg).unwrap();
    }
    for want in driver_messages() {
        assert_eq!(link.recv(WAIT).unwrap(), Some(want));
    }
    assert_eq!(link.recv(Duration::from_millis(20)).unwrap(), None);

    assert_eq!(
        link.close("all done"),
        Disconnect::Local("the worker left: all done".into())
    );
    match next(&server) {
        Event::Message(_, ToDriver::Bye { reason }) => assert_eq!(reason, "all done"),
        other => panic!("expected Bye, got {other:?}"),
    }
    match next(&server) {
        Event::Disconnected(p, reason) => {
            assert_eq!(p, peer);
            assert_eq!(reason, Disconnect::Closed);
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(
        server.send(peer, ToWorker::Beat { seq: 1 }),
        Err(SendError::Closed(_))
    ));
}

#[test]
fn a_refused_worker_gets_the_reason_and_nothing_it_sent_is_read() {
    let (server, secrets) = start(server_options());
    let addr = server.advertised_addr();
    let mut raw = Raw::connect(addr);
    raw.send(&hello_frame(&token_bytes(secrets.credentials()), "w9"))
        .unwrap();
    // Sent before any verdict: must never surface, since the engine refuses this worker.
    raw.send(&part_frame()).unwrap();
    let peer = match next(&server) {
        Event::Connected { peer, hello, .. } => {
            assert_eq!(hello.worker, "w9");
            peer
        }
        other => panic!("expected Connected, got {other:?}"),
    };
    assert!(matches!(
        server.send(peer, ToWorker::Beat { seq: 1 }),
        Err(SendError::NotAdmitted(_))
    ));
    assert!(server.refuse(peer, "fenced: given up at 12:00"));
    let (kind, header) = raw.read_frame().unwrap();
    assert_eq!(kind, REFUSED);
    assert!(header.contains("fenced: given up at 12:00"), "{header}");
    match next(&server) {
        Event::Disconnected(p, Disconnect::Local(reason)) => {
            assert_eq!(p, peer);
            assert!(reason.contains("refused: fenced"), "{reason}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    quiet(&server, Duration::from_millis(300));
}

#[test]
fn a_refusal_reaches_a_worker_through_connect() {
    let (server, secrets) = start(server_options());
    let addr = server.advertised_addr().to_string();
    let creds = secrets.credentials().clone();
    let worker =
        std::thread::spawn(move || connect(&addr, &creds, &hello("w2"), &client_options()));
    let Event::Connected { peer, .. } = next(&server) else {
        panic!("expected Connected")
    };
    server.refuse(peer, "worker w2 was given up");
    let err = worker.join().unwrap().expect_err("refused");
    assert!(
        matches!(&err, ConnectError::Refused { reason, .. } if reason == "worker w2 was given up"),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains(&server.advertised_addr().to_string()));
}

#[test]
fn close_sends_what_was_queued_first() {
    let (server, secrets) = start(server_options());
    let (link, peer) = connect_admitted(&server, &secrets, client_options());
    server
        .send(
            peer,
            ToWorker::Fence {
                reason: "replaced".into(),
            },
        )
        .unwrap();
    assert!(server.close(peer, "fenced"));
    assert_eq!(
        link.recv(WAIT).unwrap(),
        Some(ToWorker::Fence {
            reason: "replaced".into()
        })
    );
    assert!(link.recv(WAIT).is_err(), "the link ends after the fence");
    match next(&server) {
        Event::Disconnected(p, Disconnect::Local(reason)) => {
            assert_eq!(p, peer);
            assert_eq!(reason, "fenced");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[test]
fn an_unanswered_worker_is_dropped_after_the_admission_limit() {
    let (server, secrets) = start(ServerOptions {
        admit_timeout: Duration::from_millis(200),
        ..server_options()
    });
    let addr = server.advertised_addr().to_string();
    let creds = secrets.credentials().clone();
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..client_options()
    };
    let worker = std::thread::spawn(move || connect(&addr, &creds, &hello("w3"), &options));
    let Event::Connected { peer, .. } = next(&server) else {
        panic!("expected Connected")
    };
    match next(&server) {
        Event::Disconnected(p, Disconnect::Local(reason)) => {
            assert_eq!(p, peer);
            assert!(reason.contains("did not admit"), "{reason}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(worker.join().unwrap().is_err());
    assert!(!server.admit(peer, config()), "too late to admit");
}

#[test]
fn heartbeats_carry_what_the_worker_runs() {
    let (server, secrets) = start(server_options());
    let (link, _peer) = connect_admitted(&server, &secrets, client_options());
    let beat = link.heartbeat(Duration::from_millis(20));
    beat.running(Some(5), Some(17));
    let mut last = 0;
    loop {
        match next(&server) {
            Event::Message(
                _,
                ToDriver::Beat {
                    seq,
                    chunk: Some(5),
                    task: Some(17),
                },
            ) => {
                assert!(seq > last);
                last = seq;
                if last >= 3 {
                    break;
                }
            }
            Event::Message(_, ToDriver::Beat { seq, .. }) => {
                assert!(seq > last);
                last = seq;
            }
            other => panic!("expected beats, got {other:?}"),
        }
    }
    drop(beat);
}

#[test]
fn a_worker_started_before_its_driver_connects_once_it_listens() {
    let port = free_port();
    let secrets = SessionSecrets::generate().unwrap();
    let creds = secrets.credentials().clone();
    let addr = format!("127.0.0.1:{port}");
    let worker =
        std::thread::spawn(move || connect(&addr, &creds, &hello("w4"), &client_options()));
    std::thread::sleep(Duration::from_millis(300));
    let server = Server::start(
        ServerOptions {
            bind: format!("127.0.0.1:{port}").parse().unwrap(),
            ..server_options()
        },
        &secrets,
    )
    .unwrap();
    let Event::Connected { peer, .. } = next(&server) else {
        panic!("expected Connected")
    };
    server.admit(peer, config());
    let (_, link) = worker.join().unwrap().unwrap();
    link.send(ToDriver::NeedBlob { id: 1 }).unwrap();
    assert!(matches!(
        next(&server),
        Event::Message(_, ToDriver::NeedBlob { id: 1 })
    ));
}

#[test]
fn an_unreachable_driver_is_named_in_the_error() {
    let port = free_port();
    let secrets = SessionSecrets::generate().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(300),
        ..client_options()
    };
    let err = connect(&addr, secrets.credentials(), &hello("w5"), &options).unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&addr) && text.contains("refused"), "{text}");
}

#[test]
fn a_refusing_host_is_given_up_on_sooner_than_an_unreachable_one() {
    // Nothing listens on the port: the driver is gone (it listens before submitting).
    let port = free_port();
    let secrets = SessionSecrets::generate().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(30),
        refused_timeout: Duration::from_millis(400),
        ..client_options()
    };
    let t = std::time::Instant::now();
    let err = connect(&addr, secrets.credentials(), &hello("w6"), &options).unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_driver_shutdown_ends_every_link() {
    let (server, secrets) = start(server_options());
    let (link, _) = connect_admitted(&server, &secrets, client_options());
    server.shutdown();
    let reason = link.recv(WAIT).unwrap_err();
    assert!(
        matches!(
            reason,
            Disconnect::Eof | Disconnect::Io(_) | Disconnect::Closed
        ),
        "{reason}"
    );
    assert!(matches!(
        link.send(ToDriver::NeedBlob { id: 1 }),
        Err(SendError::Closed(_))
    ));
}

#[test]
fn listening_on_names_the_address_and_the_certificate() {
    let (server, secrets) = start(server_options());
    let line = server.listening_on();
    assert!(
        line.contains(&server.advertised_addr().to_string()),
        "{line}"
    );
    assert!(line.contains(&secrets.fingerprint().to_string()), "{line}");
    assert!(line.contains("TLS 1.3"), "{line}");
}
