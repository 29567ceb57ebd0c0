//! Engine errors, wrapping the protocol's and the backend's.

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Core(#[from] shoal_core::CoreError),
    #[error(transparent)]
    Sched(#[from] shoal_sched::SchedError),
    #[error("the session has ended; start a new one")]
    Ended,
    /// The session failed (its reason): it takes no more work.
    #[error("{0}")]
    Failed(String),
    /// The session cannot start where it was asked to (e.g. an object-store work dir).
    #[error("{0}")]
    Unusable(String),
}
