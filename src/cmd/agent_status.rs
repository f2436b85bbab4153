//! The agent's status file: written by a running agent on every change, read by
//! `periscope agent status`.

use std::path::{Path, PathBuf};

use agent::Status;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What `periscope agent status` shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// `starting`, `connecting`, `connected` or `rejected`.
    pub state: String,
    /// Process id of the agent that wrote this.
    pub pid: u32,
    /// When it was written (RFC 3339).
    pub updated: String,
    /// Transport in use when connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// `(tunnel, public URL)` when connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public: Vec<(String, String)>,
    /// Why the last attempt or session ended, or why the relay refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Connection attempts since the last healthy session.
    #[serde(default)]
    pub attempt: u32,
    /// Round-trip time to the relay when connected (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

impl Report {
    fn of(s: &Status, rtt: Option<std::time::Duration>) -> Report {
        let mut r = Report {
            state: String::new(),
            pid: std::process::id(),
            updated: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            transport: None,
            public: Vec::new(),
            last_error: None,
            attempt: 0,
            rtt_ms: None,
        };
        match s {
            Status::Starting => r.state = "starting".into(),
            Status::Connecting {
                attempt,
                last_error,
            } => {
                r.state = "connecting".into();
                r.attempt = *attempt;
                r.last_error = last_error.clone();
            }
            Status::Connected {
                transport, public, ..
            } => {
                r.state = "connected".into();
                r.transport = Some(transport.to_string());
                r.rtt_ms = rtt.map(|d| d.as_secs_f64() * 1000.0);
                r.public = public.clone();
            }
            Status::Rejected { reason, detail } => {
                r.state = "rejected".into();
                r.last_error = Some(format!("{reason}: {detail}"));
            }
        }
        r
    }
}

/// The status file to use: the flag, else a per-user default.
pub fn path(flag: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p.clone();
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("periscope-agent.json"),
        _ => std::env::temp_dir().join(format!(
            "periscope-agent-{}.json",
            rustix::process::getuid().as_raw()
        )),
    }
}

/// Write `status` to `path` on every change (and every few seconds, for the RTT) until
/// `shutdown`, then remove the file.
pub async fn keep_written(
    mut status: tokio::sync::watch::Receiver<Status>,
    rtt: agent::RttProbe,
    path: PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        let report = Report::of(&status.borrow_and_update(), rtt.rtt());
        if let Err(e) = write(&path, &report) {
            tracing::warn!(path = %path.display(), "cannot write the status file: {e}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = status.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn write(path: &Path, report: &Report) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(report)?)?;
    std::fs::rename(&tmp, path)
}

/// `periscope agent status`: print the report; `Ok(true)` when connected.
pub fn show(path: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "no status at {} ({e}): is the agent running (with the same --status-file)?",
            path.display()
        )
    })?;
    let r: Report = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{}: unreadable status: {e}", path.display()))?;
    let alive = Path::new(&format!("/proc/{}", r.pid)).exists();
    println!(
        "state:      {}{}",
        r.state,
        if alive {
            ""
        } else {
            " (agent not running: stale file)"
        }
    );
    if let Some(t) = &r.transport {
        println!("transport:  {t}");
    }
    if let Some(ms) = r.rtt_ms {
        println!("rtt:        {ms:.1} ms");
    }
    for (name, url) in &r.public {
        println!("tunnel:     {name} → {url}");
    }
    if r.attempt > 0 {
        println!("attempt:    {}", r.attempt);
    }
    if let Some(e) = &r.last_error {
        println!("last error: {e}");
    }
    println!("updated:    {} (pid {})", r.updated, r.pid);
    Ok(alive && r.state == "connected")
}
