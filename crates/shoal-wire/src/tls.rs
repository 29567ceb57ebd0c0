//! TLS 1.3 only, with the ring provider: the driver's config from its session key, the worker's
//! config that trusts exactly one certificate (the pinned fingerprint, signature still checked),
//! and the blocking handshake and pre-admission reads, each bounded by one overall deadline.

use crate::secrets::{Fingerprint, SessionSecrets};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The name in the session certificate and the SNI a worker sends. Only the pinned fingerprint
/// is checked; the `.invalid` name can never collide with a real host's certificate.
pub(crate) const SERVER_NAME: &str = "shoal-wire.invalid";

fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    // AES-128-GCM first: with AES-NI it is ~30 % cheaper per byte than AES-256-GCM and far
    // beyond brute force; the worker's order decides, and both sides list the same suites.
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

pub(crate) fn server_config(secrets: &SessionSecrets) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![secrets.cert.clone()], secrets.key_der())
        .map_err(|e| e.to_string())?;
    // Workers connect once per process: resumption tickets would only cost work.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The worker's config; `seen` receives the fingerprint the server presented, so a mismatch can
/// be reported with both values.
pub(crate) fn client_config(
    pinned: Fingerprint,
    seen: Arc<Mutex<Option<Fingerprint>>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        pinned,
        seen,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

pub(crate) fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

/// Accepts exactly the certificate whose SHA-256 is pinned, alone (no chain), and still checks
/// that the server's handshake signature was made with that certificate's key.
#[derive(Debug)]
struct Pinned {
    pinned: Fingerprint,
    seen: Arc<Mutex<Option<Fingerprint>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = Fingerprint::of(end_entity);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(found);
        // Validity dates and names are irrelevant for a pinned, per-session certificate.
        if found == self.pinned && intermediates.is_empty() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config offers TLS 1.3 only; a TLS 1.2 signature is never acceptable.
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a handshake or a pre-admission read failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Io(io::Error),
    Tls(rustls::Error),
    TimedOut,
    Eof,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Tls(e) => write!(f, "TLS: {e}"),
            HandshakeError::TimedOut => f.write_str("timed out"),
            HandshakeError::Eof => f.write_str("connection closed by the peer"),
        }
    }
}

fn arm(tcp: &TcpStream, deadline: Instant) -> Result<(), HandshakeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HandshakeError::TimedOut);
    }
    tcp.set_read_timeout(Some(left))
        .map_err(HandshakeError::Io)?;
    tcp.set_write_timeout(Some(left))
        .map_err(HandshakeError::Io)
}

fn io_err(e: io::Error) -> HandshakeError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HandshakeError::TimedOut,
        io::ErrorKind::UnexpectedEof => HandshakeError::Eof,
        _ => HandshakeError::Io(e),
    }
}

fn flush(conn: &mut rustls::Connection, tcp: &mut TcpStream) -> Result<(), HandshakeError> {
    while conn.wants_write() {
        conn.write_tls(tcp).map_err(io_err)?;
    }
    tcp.flush().map_err(io_err)
}

/// Read more TLS records and decrypt them; a TLS error is answered with its alert.
fn pull(conn: &mut rustls::Connection, tcp: &mut TcpStream) -> Result<(), HandshakeError> {
    if conn.read_tls(tcp).map_err(io_err)? == 0 {
        return Err(HandshakeError::Eof);
    }
    if let Err(e) = conn.process_new_packets() {
        let _ = flush(conn, tcp);
        return Err(HandshakeError::Tls(e));
    }
    Ok(())
}

/// Drive the handshake to completion or fail by `deadline`, however slowly the peer sends.
pub(crate) fn handshake(
    conn: &mut rustls::Connection,
    tcp: &mut TcpStream,
    deadline: Instant,
) -> Result<(), HandshakeError> {
    while conn.is_handshaking() {
        arm(tcp, deadline)?;
        flush(conn, tcp)?;
        if conn.is_handshaking() && conn.wants_read() {
            pull(conn, tcp)?;
        }
    }
    arm(tcp, deadline)?;
    flush(conn, tcp)
}

/// Read exactly `buf.len()` bytes of plaintext by `deadline`. Bytes after them stay inside the
/// TLS connection's buffer, unread.
pub(crate) fn read_exact(
    conn: &mut rustls::Connection,
    tcp: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), HandshakeError> {
    let mut have = 0;
    while have < buf.len() {
        match conn.reader().read(&mut buf[have..]) {
            Ok(0) => return Err(HandshakeError::Eof),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                arm(tcp, deadline)?;
                pull(conn, tcp)?;
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(())
}

/// Write `bytes` as plaintext and flush them by `deadline`.
pub(crate) fn write_all(
    conn: &mut rustls::Connection,
    tcp: &mut TcpStream,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), HandshakeError> {
    arm(tcp, deadline)?;
    conn.writer().write_all(bytes).map_err(io_err)?;
    flush(conn, tcp)
}
