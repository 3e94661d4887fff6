//! Log set-up shared by the binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs a human-readable subscriber filtered by `level`, which may be a
/// plain level (`info`) or a full filter (`milena=debug,info`).
pub fn init(level: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid LOG_LEVEL '{level}': {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Plain text when piped to a file, so `grep Join router.log` matches.
        .with_ansi(std::io::stdout().is_terminal())
        .try_init()
        .map_err(|e| format!("cannot install logger: {e}"))
}
