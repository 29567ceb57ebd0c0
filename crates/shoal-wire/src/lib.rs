//! shoal's TCP transport between a driver and its workers: length-prefixed frames over TLS 1.3,
//! a per-session self-signed certificate that workers pin by fingerprint, a session token that
//! workers present before anything else of theirs is read, and bounded queues both ways.
//!
//! The driver runs a [`Server`] and reads [`Event`]s; each worker calls [`connect`] and talks
//! over its [`Link`]. The crate knows nothing of tasks, pickles or schedulers: the engine's own
//! headers travel as opaque [`Json`] and its payloads as opaque bytes.
//!
//! ```no_run
//! use shoal_wire::*;
//! let secrets = SessionSecrets::generate()?;
//! let server = Server::start(ServerOptions::default(), &secrets)?;
//! println!("{}", server.listening_on());
//! // The worker's job gets server.advertised_addr() and fingerprint_text() on its command
//! // line and, in its environment, secrets.credentials().to_env(); the worker then does:
//! let fingerprint = secrets.credentials().fingerprint_text();
//! let hello = Hello { session: "S".into(), worker: "w1".into(), incarnation: 7,
//!                     host: "node1".into(), pid: std::process::id(), startup_ms: None };
//! let (_config, link) = connect(&server.advertised_addr().to_string(),
//!                               &Credentials::from_env(&fingerprint)?, &hello,
//!                               &ClientOptions::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bind;
mod budget;
mod client;
mod error;
mod frame;
mod link;
mod message;
mod secrets;
mod server;
mod tls;

pub use bind::{default_address, BindSpec, Host};
pub use budget::Lease;
pub use bytes::Bytes;
pub use client::{connect, ClientOptions, Heartbeat, Link};
pub use error::{ConnectError, Disconnect, Rejection, SendError, ServerError};
pub use frame::{Decoder, Frame, FrameError, Limits, Prefix, PREFIX_LEN};
pub use link::{LinkStats, Timeouts};
pub use message::{Hello, Json, Stream, ToDriver, ToWorker};
pub use secrets::{
    Credentials, Fingerprint, SecretsError, SessionSecrets, Token, ENV_VAR, TOKEN_FILE_VAR,
};
pub use server::{Event, PeerId, QueueLimits, Server, ServerOptions, ServerStats};
