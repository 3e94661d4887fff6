//! Process plumbing shared by the server binaries: configuration errors,
//! logging, the runtime and exit codes, so each `main` stays a few lines.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use clap::Parser;

use crate::config::one_line_error;

/// Which tokio runtime a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Work-stealing, one worker per core.
    MultiThread,
    /// As `MultiThread`, except on one core (pinned, or a one-CPU
    /// container): a current-thread runtime there. A router hands each
    /// request between tasks (client connection, node connection, writer);
    /// on one core the work-stealing scheduler's hand-offs cost it a third
    /// of its CPU per request (15.8 against 10.4 µs at depth 1, router and
    /// node on one core; bench/RESULTS.md). A node, which answers from
    /// the task that read the request, measured no better: it keeps
    /// `MultiThread`.
    CurrentThreadOnOneCore,
}

/// Runs a server binary: parses `C` from flags and environment (a bad value
/// prints one line naming the variable and exits 2), installs logging at
/// the level and format `log` picks, runs `serve` on the `runtime` chosen,
/// and exits 0, or 1 after logging the error. `log` picks the level and the
/// format from the configuration.
pub fn run_server<C, F, Fut, E>(
    name: &str,
    runtime: Runtime,
    log: fn(&C) -> (&str, crate::config::LogFormat),
    serve: F,
) -> ExitCode
where
    C: Parser,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let cfg = match C::try_parse() {
        Ok(cfg) => cfg,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", one_line_error(name, &e));
            return ExitCode::from(2);
        }
    };
    let (level, format) = log(&cfg);
    if let Err(e) = crate::logging::init(level, format) {
        eprintln!("{name}: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if runtime == Runtime::CurrentThreadOnOneCore && one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
