//! A session's secrets: the driver's per-session TLS key and self-signed certificate, and the
//! [`Credentials`] a worker needs to trust that certificate and prove itself: the certificate's
//! SHA-256 fingerprint and a 256-bit token, as one compact string for the job's environment.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// The environment variable that carries the session token to a worker (the fingerprint,
/// which is not secret, travels on its command line).
pub const ENV_VAR: &str = "SHOAL_TOKEN";

/// Where a worker finds the token when its job's environment is public (HTCondor's job ad):
/// the name of a mode-600 file shipped with the job.
pub const TOKEN_FILE_VAR: &str = "SHOAL_TOKEN_FILE";

/// Why a credentials string was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{ENV_VAR} is not set\nhint: a worker of a TCP session is started by its driver, which passes {ENV_VAR} in the job's environment")]
    Missing,
    #[error("malformed shoal-wire credentials: {0}\nhint: expected FINGERPRINT:TOKEN, two 43-character base64url strings, as the driver wrote them")]
    Malformed(&'static str),
    #[error("cannot make the session's TLS certificate: {0}")]
    Certificate(String),
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error("{path} is readable or writable by other users (mode {mode:o}); it holds a session secret\nhint: the driver writes it with mode 600; do not copy it elsewhere")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// SHA-256 of a DER certificate: what a worker pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(cert_der).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    /// `sha256:` and 64 hex digits, as `openssl x509 -fingerprint -sha256` shows (without colons).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A 256-bit bearer secret. Compared in constant time; never printed.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    /// 32 bytes from the operating system's generator.
    pub fn random() -> Token {
        Token::try_random().expect("the OS random generator is available")
    }

    fn try_random() -> Result<Token, SecretsError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SecretsError::Random(e.to_string()))?;
        Ok(Token(bytes))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time comparison with bytes a peer sent.
    pub(crate) fn matches(&self, other: &[u8]) -> bool {
        other.len() == 32 && bool::from(self.0.ct_eq(other))
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}
impl Eq for Token {}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a worker needs to connect: the fingerprint it pins and the token it presents.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Credentials {
    pub fingerprint: Fingerprint,
    pub token: Token,
}

impl Credentials {
    /// `FINGERPRINT:TOKEN`, each base64url without padding (87 characters). This string is the
    /// secret: pass it in the job's environment (readable only by its owner), not on the
    /// command line (visible to every user of the host in `ps`).
    pub fn encode(&self) -> String {
        format!(
            "{}:{}",
            B64.encode(self.fingerprint.0),
            B64.encode(self.token.0)
        )
    }

    /// Parse [`Credentials::encode`]'s form.
    pub fn decode(text: &str) -> Result<Credentials, SecretsError> {
        let (fp, token) = text.trim().split_once(':').ok_or(SecretsError::Malformed(
            "no ':' between fingerprint and token",
        ))?;
        let bytes = |part: &str, what| -> Result<[u8; 32], SecretsError> {
            B64.decode(part)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or(SecretsError::Malformed(what))
        };
        Ok(Credentials {
            fingerprint: Fingerprint(bytes(fp, "the fingerprint is not 32 base64url bytes")?),
            token: Token(bytes(token, "the token is not 32 base64url bytes")?),
        })
    }

    /// The fingerprint alone, base64url (43 characters): not secret, so it may go on a worker's
    /// command line (`--fingerprint`).
    pub fn fingerprint_text(&self) -> String {
        B64.encode(self.fingerprint.0)
    }

    /// The variable name and value to put into a worker job's environment: the token alone.
    pub fn to_env(&self) -> (&'static str, String) {
        (ENV_VAR, B64.encode(self.token.0))
    }

    /// Write the credentials to a new file only its owner can read (mode 600, never an existing
    /// file): for a scheduler that ships files with the job (HTCondor's file transfer), where the
    /// job's environment would be public in its job ad.
    pub fn write_file(&self, path: &Path) -> Result<(), SecretsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |action, source| SecretsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("create", e))?;
        file.write_all(self.encode().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io("write", e))
    }

    /// Read credentials from a file, refusing one that other users could read or change.
    pub fn read_file(path: &Path) -> Result<Credentials, SecretsError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |action, source| SecretsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(|e| io("read", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(SecretsError::Exposed {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| io("read", e))?;
        Credentials::decode(&text)
    }

    /// The token from [`ENV_VAR`], with the `fingerprint` from [`Credentials::fingerprint_text`].
    pub fn from_env(fingerprint: &str) -> Result<Credentials, SecretsError> {
        match std::env::var(ENV_VAR) {
            Ok(token) => Credentials::decode(&format!("{}:{}", fingerprint.trim(), token.trim())),
            Err(_) => Err(SecretsError::Missing),
        }
    }
}

/// The driver's secrets for one session; they live only in the driver's memory.
pub struct SessionSecrets {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
    credentials: Credentials,
}

impl SessionSecrets {
    /// A fresh ECDSA P-256 key, a self-signed certificate for it and a random token.
    pub fn generate() -> Result<SessionSecrets, SecretsError> {
        let certified = rcgen::generate_simple_self_signed(vec![crate::tls::SERVER_NAME.into()])
            .map_err(|e| SecretsError::Certificate(e.to_string()))?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let credentials = Credentials {
            fingerprint: Fingerprint::of(&cert),
            token: Token::try_random()?,
        };
        Ok(SessionSecrets {
            cert,
            key,
            credentials,
        })
    }

    /// What to hand to this session's workers.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.credentials.fingerprint
    }

    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("fingerprint", &self.credentials.fingerprint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_through_their_string() {
        let secrets = SessionSecrets::generate().unwrap();
        let creds = secrets.credentials();
        let text = creds.encode();
        assert_eq!(text.len(), 87);
        assert!(text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)));
        assert_eq!(&Credentials::decode(&text).unwrap(), creds);
        assert_eq!(secrets.fingerprint(), Fingerprint::of(&secrets.cert));
    }

    #[test]
    fn credentials_travel_through_the_environment() {
        let creds = SessionSecrets::generate().unwrap().credentials().clone();
        let (name, value) = creds.to_env();
        assert_eq!(name, ENV_VAR);
        // Only this test touches the variable.
        assert!(
            !value.contains(&creds.fingerprint_text()),
            "the token alone"
        );
        std::env::set_var(name, &value);
        let fp = creds.fingerprint_text();
        assert_eq!(Credentials::from_env(&fp).unwrap(), creds);
        std::env::remove_var(name);
        assert!(matches!(
            Credentials::from_env(&fp),
            Err(SecretsError::Missing)
        ));
    }

    #[test]
    fn malformed_credentials_name_the_problem() {
        let err = Credentials::decode("abc").unwrap_err().to_string();
        assert!(err.contains("no ':'"), "{err}");
        let good = SessionSecrets::generate().unwrap().credentials().encode();
        let (fp, _) = good.split_once(':').unwrap();
        let err = Credentials::decode(&format!("{fp}:short")).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn a_credentials_file_is_private_and_refused_otherwise() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let creds = SessionSecrets::generate().unwrap().credentials().clone();
        creds.write_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Credentials::read_file(&path).unwrap(), creds);
        assert!(creds.write_file(&path).is_err(), "never overwrites");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credentials::read_file(&path).unwrap_err().to_string();
        assert!(err.contains("mode 644"), "{err}");
    }

    #[test]
    fn tokens_never_print_and_compare_by_value() {
        let a = Token::random();
        assert_ne!(a, Token::random());
        assert!(a.matches(a.as_bytes()));
        assert!(!a.matches(&a.as_bytes()[..31]));
        let creds = SessionSecrets::generate().unwrap();
        let shown = format!("{:?} {:?}", creds, creds.credentials());
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains(&B64.encode(creds.credentials().token.0)));
    }
}
