//! Turning process signals into a cancellation token.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// Cancels the returned token on SIGINT or SIGTERM.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let t = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received; shutting down"),
                _ = int.recv() => info!("SIGINT received; shutting down"),
            }
            t.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        let t = token.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            t.cancel();
        });
    }
    Ok(token)
}
