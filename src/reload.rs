//! Hot reload: a config file is re-read on SIGHUP and when its contents change (polled once
//! a second, like the relay's users file).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

/// What identifies one version of a file: modification time, inode and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

/// Why a reload happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The file's contents changed.
    Changed,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Changed => "file changed",
        })
    }
}

/// Run `reload` (one at a time) on every SIGHUP and whenever `path`'s contents change, until `shutdown`.
/// A file touched without a change in content does not count; a missing file (an editor
/// replacing it) waits until it is back.
pub async fn watch<F, Fut>(
    path: PathBuf,
    shutdown: CancellationToken,
    mut reload: F,
) -> anyhow::Result<()>
where
    F: FnMut(Trigger) -> Fut + Send,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut seen = stamp(&path);
    let mut text = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = hup.recv() => Trigger::Signal,
            _ = tick.tick() => {
                let now = stamp(&path);
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                let Ok(new) = std::fs::read(&path) else { continue };
                if text.as_ref() == Some(&new) {
                    continue;
                }
                text = Some(new);
                Trigger::Changed
            }
        };
        if trigger == Trigger::Signal {
            seen = stamp(&path);
            text = std::fs::read(&path).ok();
        }
        reload(trigger).await;
    }
}
