//! Backend errors: each says what the scheduler answered and what to change.

pub type Result<T, E = SchedError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("{0}")]
    Config(String),
    #[error("{command} failed: {message}")]
    Command { command: String, message: String },
    #[error("{what} not found: {detail}\nhint: {hint}")]
    Missing {
        what: String,
        detail: String,
        hint: String,
    },
    #[error(transparent)]
    Core(#[from] shoal_core::CoreError),
}
