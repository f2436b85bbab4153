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

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Trigger>,
        secs: u64,
    ) -> Option<Trigger> {
        tokio::time::timeout(Duration::from_secs(secs), rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Content changes count, a touch without a change does not, SIGHUP always does.
    #[tokio::test]
    async fn reloads_on_change_and_on_sighup() {
        use tokio::signal::unix::{signal, SignalKind};
        // Our own handler first: a SIGHUP can never end the test process.
        let _hup = signal(SignalKind::hangup()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(watch(path.clone(), stop.clone(), move |t| {
            let _ = tx.send(t);
            std::future::ready(())
        }));
        // Until the watcher has its handler, a SIGHUP goes to ours only: send until it hears one.
        let mut heard = None;
        for _ in 0..50 {
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP)
                .unwrap();
            heard = tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .ok()
                .flatten();
            if heard.is_some() {
                break;
            }
        }
        assert_eq!(heard, Some(Trigger::Signal));
        while next(&mut rx, 0).await.is_some() {}
        // Same content, new stamp: nothing.
        std::fs::write(&path, "a = 1\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(next(&mut rx, 2).await, None);
        std::fs::write(&path, "a = 2\n").unwrap();
        assert_eq!(next(&mut rx, 3).await, Some(Trigger::Changed));
        stop.cancel();
    }
}
