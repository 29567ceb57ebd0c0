//! shoal-core: the model every other crate shares — options types, the session work-dir
//! layout and the file protocol that drivers and workers speak to each other.
//!
//! Nothing here knows about Python or about a particular scheduler: chunks and results are
//! opaque byte payloads with a small typed header, moved through a directory with atomic
//! renames so that the same protocol works on a local disk and on a cluster's shared FS, or
//! over TCP (`worker_tcp`) where nothing is shared.

pub mod calls;
pub mod clock;
pub mod error;
pub mod frame;
pub mod fskind;
pub mod fsutil;
pub mod index;
pub mod journal;
pub mod layout;
pub mod protocol;
pub mod retention;
pub mod session;
pub mod units;
pub mod watch;
pub mod worker;
pub mod worker_tcp;

pub use error::{CoreError, Result};
pub use layout::SessionDir;
