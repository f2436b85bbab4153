//! SIGINT / SIGTERM → cancel the root token.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM (logged with which).
pub fn shutdown_token() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let t = token.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!("{which} received, shutting down");
        t.cancel();
    });
    Ok(token)
}
