//! shoal-top: what a user sees of their sessions and runs. `shoal top` is a live terminal UI
//! over session records and the run registry; `shoal show SESSION` prints a session's report.
//! Both only read: cancelling and a task's output come from the CLI (see [`Actions`]), so they
//! behave exactly as `shoal cancel` and `shoal logs`.

mod app;
mod data;
pub mod fmt;
pub mod record;
pub mod report;
mod term;
mod ui;

pub use app::{Actions, Target, TaskRef};

/// Why `shoal top` could not run.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("shoal top needs a terminal (its input or output is not one)\nhint: `shoal sessions`, `shoal runs` and `shoal show ID` print the same facts as text")]
    NotATerminal,
    #[error("terminal error: {0}")]
    Terminal(#[source] std::io::Error),
}

/// Run `shoal top` over the sessions under `base`, the journals in `history` and the run
/// registry at `registry` (read if it exists), refreshing every `interval` seconds, until the
/// user quits.
pub fn run(
    base: &std::path::Path,
    history: &std::path::Path,
    registry: &std::path::Path,
    interval: f64,
    actions: Actions,
) -> Result<(), TopError> {
    term::run(base, history, registry, interval, actions)
}

#[cfg(test)]
mod tests;
