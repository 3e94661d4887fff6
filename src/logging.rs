//! Log set-up shared by the binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs a subscriber filtered by `level`, which may be a plain level
/// (`info`) or a full filter (`milena=debug,info`). JSON writes one object
/// per line; text is human-readable, plain when not on a terminal so
/// `grep Join router.log` matches.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid LOG_LEVEL '{level}': {e}"))?;
    let result = match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
    result.map_err(|e| format!("cannot install logger: {e}"))
}

/// Most bytes of a client-supplied value shown in a log line.
const LOGGED_BYTES: usize = 64;

/// Renders bytes that came from the network for a log line: printable
/// ASCII as is, everything else (newlines and control bytes included, which
/// could forge or garble lines) escaped, and at most [`LOGGED_BYTES`] shown.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(LOGGED_BYTES)];
    let mut out: String = shown.escape_ascii().to_string();
    if bytes.len() > LOGGED_BYTES {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    out
}

/// [`escape_bytes`] for text from the network (addresses, names).
pub fn escape(text: &str) -> String {
    escape_bytes(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_values_cannot_forge_log_lines() {
        assert_eq!(
            escape("node\n2026 INFO Join: forged"),
            "node\\n2026 INFO Join: forged"
        );
        assert_eq!(escape_bytes(b"\x1b[31mred"), "\\x1b[31mred");
        let long = escape_bytes(&[b'a'; 1000]);
        assert!(long.len() < 100 && long.ends_with("(1000 bytes)"), "{long}");
    }
}
