//! Log set-up shared by the binaries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs a subscriber filtered by `level`, which may be a plain level
/// (`info`) or a full filter (`milena=debug,info`). JSON writes one object
/// per line; text is human-readable, plain when not on a terminal so
/// `grep Join router.log` matches.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter_for(level))
        .map_err(|e| format!("invalid LOG_LEVEL '{level}': {e}"))?;
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

/// Libraries kept at `info` when `LOG_LEVEL` is a bare `debug` or `trace`:
/// the AWS SDK logs the access key id (and signing details) at debug, and
/// the HTTP stacks drown the node's own lines. Naming one in a full filter
/// (`LOG_LEVEL=debug,aws_config=debug`) still turns it up.
const QUIET_TARGETS: [&str; 8] = [
    "aws_config",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_sdk_s3",
    "h2",
    "hyper",
    "hyper_util",
];

/// The filter for `LOG_LEVEL`: a bare level, with [`QUIET_TARGETS`] at
/// `info` at most, or the user's own full filter as given.
fn filter_for(level: &str) -> String {
    let bare = matches!(
        level.trim().to_ascii_lowercase().as_str(),
        "debug" | "trace"
    );
    if !bare {
        return level.to_string();
    }
    let mut filter = level.trim().to_string();
    for target in QUIET_TARGETS {
        filter.push_str(&format!(",{target}=info"));
    }
    filter
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
    fn the_aws_sdk_stays_at_info_under_a_bare_debug() {
        let f = filter_for("debug");
        assert!(
            f.starts_with("debug,") && f.contains("aws_config=info"),
            "{f}"
        );
        assert!(EnvFilter::try_new(&f).is_ok());
        assert_eq!(filter_for("info"), "info");
        assert_eq!(
            filter_for("debug,aws_config=debug"),
            "debug,aws_config=debug"
        );
    }

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
