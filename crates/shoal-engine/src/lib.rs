//! shoal-engine: the driver side of a session. It keeps the ledger of chunks (who holds
//! what, which tasks are resolved, how often each was lost), hands chunks to workers through
//! a transport (the work dir, or TCP), notices lost workers from the backend's view and from
//! heartbeats, keeps the right number of workers, and keeps `session.json` and the progress
//! display current. docs/protocol.md is the contract it implements.
//!
//! The engine runs on its own thread; callers (the Python bindings, the CLI) talk to it
//! through [`Engine`] and receive [`Event`]s on a bounded channel.
//!
//! - `ledger`: the pure state machine of chunks (property-tested);
//! - `fleet`: the scheduler's jobs and the worker incarnations that announced themselves;
//! - `blobs`: which shared payloads are still needed; `chunks`: the chunks' master copies;
//! - `broker`: the transport seam and the work-dir transport;
//! - `runner`: the loop that does the I/O; `handle`: what callers hold;
//! - `record`, `progress`: the session record and the progress display.

pub mod blobs;
pub mod broker;
pub mod chunks;
pub mod error;
pub mod fleet;
mod handle;
pub mod ledger;
mod progress;
pub mod record;
mod runner;
mod state;

pub use error::{EngineError, Result};
pub use handle::{Engine, EngineOptions, Event};
pub use ledger::Cause;
pub use record::Stats;
pub use runner::describe;
pub use shoal_wire::Bytes;
