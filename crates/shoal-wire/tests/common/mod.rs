//! Helpers shared by the loopback tests: a server on 127.0.0.1 with short timeouts, a worker
//! connected through the public API, and a raw TLS peer that writes arbitrary bytes (an
//! attacker, or a worker that misbehaves on purpose).
#![allow(dead_code)]

use shoal_wire::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn timeouts() -> Timeouts {
    Timeouts {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(20),
        write_stall: Duration::from_secs(20),
        linger: Duration::from_millis(500),
    }
}

pub fn server_options() -> ServerOptions {
    ServerOptions {
        bind: "127.0.0.1".parse().unwrap(),
        timeouts: timeouts(),
        ..ServerOptions::default()
    }
}

pub fn start(options: ServerOptions) -> (Server, SessionSecrets) {
    let secrets = SessionSecrets::generate().unwrap();
    let server = Server::start(options, &secrets).unwrap();
    (server, secrets)
}

pub fn client_options() -> ClientOptions {
    ClientOptions {
        timeouts: timeouts(),
        connect_timeout: Duration::from_secs(5),
        welcome_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

pub fn hello(worker: &str) -> Hello {
    Hello {
        session: "20260101-000000-00000000deadbeef".into(),
        worker: worker.into(),
        incarnation: 42,
        host: "localhost".into(),
        pid: std::process::id(),
        startup_ms: Some(250),
    }
}

pub fn next(server: &Server) -> Event {
    server
        .events()
        .recv_timeout(WAIT)
        .expect("an event within the wait")
}

/// No event at all arrives within `d`.
pub fn quiet(server: &Server, d: Duration) {
    if let Ok(e) = server.events().recv_timeout(d) {
        panic!("unexpected event {e:?}");
    }
}

pub fn config() -> Json {
    Json::from_text(r#"{"beat_s":5,"prefetch":2}"#).unwrap()
}

/// Connect a worker through the public API while this thread admits it; returns its link and
/// its peer id on the server.
pub fn connect_admitted(
    server: &Server,
    secrets: &SessionSecrets,
    options: ClientOptions,
) -> (Link, PeerId) {
    let addr = server.advertised_addr().to_string();
    let creds = secrets.credentials().clone();
    let worker = std::thread::spawn(move || connect(&addr, &creds, &hello("w1"), &options));
    let peer = match next(server) {
        Event::Connected { peer, hello: h, .. } => {
            assert_eq!(h, hello("w1"));
            peer
        }
        other => panic!("expected Connected, got {other:?}"),
    };
    assert!(server.admit(peer, config()));
    let (welcome, link) = worker.join().unwrap().expect("the worker connects");
    assert_eq!(welcome, config());
    (link, peer)
}

/// A port nothing listens on (bound and released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- a raw TLS peer -------------------------------------------------------------------------

/// Trusts any server: the raw peer plays someone who does not care whom it talks to.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub struct Raw {
    pub conn: rustls::ClientConnection,
    pub tcp: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("anything.invalid").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        Raw { conn, tcp }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut s = rustls::Stream::new(&mut self.conn, &mut self.tcp);
        s.write_all(bytes)?;
        s.flush()
    }

    /// The next frame the driver sends: (kind, header), payload skipped.
    pub fn read_frame(&mut self) -> std::io::Result<(u8, String)> {
        let mut s = rustls::Stream::new(&mut self.conn, &mut self.tcp);
        let mut prefix = [0u8; PREFIX_LEN];
        s.read_exact(&mut prefix)?;
        let head_len = u32::from_le_bytes(prefix[6..10].try_into().unwrap()) as usize;
        let mut head = vec![0u8; head_len];
        s.read_exact(&mut head)?;
        Ok((prefix[5], String::from_utf8(head).unwrap()))
    }

    /// Close the TCP connection without a TLS close, like a killed process.
    pub fn kill(self) {
        drop(self.tcp);
    }
}

/// A frame as the documented layout says: "SHWL", version 1, kind, header_len, payload_len.
pub fn frame(kind: u8, header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = b"SHWL".to_vec();
    out.push(1);
    out.push(kind);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    out
}

pub const HELLO: u8 = 1;
pub const PART: u8 = 11;
pub const WELCOME: u8 = 20;
pub const REFUSED: u8 = 21;

/// A Hello frame in its fixed layout, with any token.
pub fn hello_frame(token: &[u8; 32], worker: &str) -> Vec<u8> {
    let mut body = token.to_vec();
    body.extend_from_slice(&7u64.to_le_bytes());
    body.extend_from_slice(&1234u32.to_le_bytes());
    body.extend_from_slice(&u32::MAX.to_le_bytes()); // start-up unknown
    for s in ["S", worker, "host"] {
        body.push(s.len() as u8);
        body.extend_from_slice(s.as_bytes());
    }
    frame(HELLO, b"", &body)
}

/// The token inside credentials, as the raw peer needs it.
pub fn token_bytes(creds: &Credentials) -> [u8; 32] {
    let text = creds.encode();
    let (_, token) = text.split_once(':').unwrap();
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .unwrap()
        .try_into()
        .unwrap()
}

/// A part frame whose header, if it were ever parsed, would reach the engine as a result.
pub fn part_frame() -> Vec<u8> {
    frame(
        PART,
        br#"{"chunk":1,"forged":true}"#,
        b"\x80\x05forged pickle",
    )
}
