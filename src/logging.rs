//! Log set-up shared by the binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs a subscriber filtered by `level`, which may be a plain level
/// (`info`) or a full filter (`milena=debug,info`). `format` `json` writes
/// one JSON object per line; `text` is human-readable, plain when not on a
/// terminal so `grep Join router.log` matches.
pub fn init(level: &str, format: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid LOG_LEVEL '{level}': {e}"))?;
    let result = match format {
        "json" => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .try_init(),
        "" | "text" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        other => return Err(format!("invalid LOG_FORMAT '{other}' (use text or json)")),
    };
    result.map_err(|e| format!("cannot install logger: {e}"))
}
