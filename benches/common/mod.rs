//! Helpers shared by the bench binaries (each uses a subset).
#![allow(dead_code)]

/// A free port below Linux's ephemeral range (32768+): a client socket from that range can
/// connect to itself on a listening-free loopback port and fake a working tunnel, or squat
/// the port the relay is about to bind.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 4000) as u16 * 2;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 4000;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", p));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", p));
        if tcp.is_ok() && udp.is_ok() {
            return p;
        }
    }
}

/// Median of a non-empty sample.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// rathole for the comparison rows: `RATHOLE`, a `cargo install --root /tmp/rathole-inst`
/// build, or `rathole` on PATH.
pub(crate) fn rathole_bin() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("RATHOLE") {
        return Some(p.into());
    }
    let local = std::path::PathBuf::from("/tmp/rathole-inst/bin/rathole");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("rathole"))
            .find(|p| p.is_file())
    })
}

/// The relay creates its certificate on first start; its fingerprint is SHA-256 of the DER.
pub(crate) fn wait_fingerprint(pem_path: &std::path::Path) -> String {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(10) {
        if let Ok(p) = std::fs::read(pem_path)
            .map_err(|_| ())
            .and_then(|d| pem::parse(d).map_err(|_| ()))
        {
            let d = ring::digest::digest(&ring::digest::SHA256, p.contents());
            return format!(
                "sha256:{}",
                d.as_ref()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("relay did not create {}", pem_path.display());
}

/// The release `periscope agent` dialling the relay at `127.0.0.1:quic`, pinning `fingerprint`,
/// with `args` (its tunnels and options); warnings go to `dir/agent.log`.
pub(crate) fn spawn_agent(
    dir: &std::path::Path,
    quic: u16,
    fingerprint: &str,
    token: &str,
    args: &[String],
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_periscope"))
        .env("PERISCOPE_LOG", "warn")
        .args(["agent", "--relay", &format!("127.0.0.1:{quic}")])
        .args(["--fingerprint", fingerprint, "--token", token])
        .args(args)
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap()
}
