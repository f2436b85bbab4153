//! Process setup: SIGINT / SIGTERM → cancel the root token; the open-files limit.

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

/// Raise the soft open-files limit to the hard limit. Every tunnelled connection costs the
/// relay and the agent a file descriptor; the common soft default of 1024 would refuse
/// visitors past about a thousand connections (systemd's default hard limit is 524288).
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_some() && lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = ?lim.current, to = ?lim.maximum, "raised the open-files limit")
            }
            Err(e) => tracing::warn!(
                "cannot raise the open-files limit from {:?}: {e}",
                lim.current
            ),
        }
    }
}
