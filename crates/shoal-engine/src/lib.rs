//! shoal-engine: the driver side of a session. It publishes chunks, collects and verifies
//! results, delivers each chunk's result exactly once, notices dead workers (from the
//! backend's view and from heartbeats), requeues their claims, keeps the right number of
//! workers, and keeps `session.json` and the progress bar current.
//!
//! The engine runs on its own thread; callers (the Python bindings, the CLI) talk to it
//! through [`Engine`] and receive [`Event`]s on a channel.

mod engine;
pub mod error;

pub use engine::{Engine, EngineOptions, Event, Stats};
pub use error::{EngineError, Result};
