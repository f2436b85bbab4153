//! Tunnel benchmark: Periscope (release binary, relay and agent as separate processes) against
//! a direct loopback connection measured in the same run, and rathole when it is installed
//! (`RATHOLE=/path/to/rathole`, or `rathole` on PATH).
//!
//! `cargo bench --bench tunnel` prints a Markdown table for BENCHMARKS.md.
//! Measures: single-stream and 8-stream throughput, connection setup (connect + 1-byte echo),
//! RSS per idle connection (1,000 open), and time from `kill -9` + restart of the relay to the
//! tunnel serving again. Every loop is bounded in count and time.

#![allow(clippy::unwrap_used)]

mod common;
use common::{free_port, median, rathole_bin, spawn_agent, wait_fingerprint};

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const EXE: &str = env!("CARGO_BIN_EXE_periscope");
const RUNS: usize = 3;
const STREAM_BYTES: usize = 1 << 30;
const SETUP_N: usize = 300;
const IDLE_N: usize = 1000;
const RESTARTS: usize = 5;

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sink: reads to EOF, answers one byte. Echo: copies back.
async fn targets() -> (SocketAddr, SocketAddr) {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (sa, ea) = (sink.local_addr().unwrap(), echo.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(b"k").await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (sa, ea)
}

/// A running system under test: where to connect, and its processes.
struct System {
    name: &'static str,
    sink_port: u16,
    echo_port: u16,
    server: Option<Child>,
    client: Option<Child>,
    restart: Box<dyn Fn() -> Child>,
}

impl Drop for System {
    fn drop(&mut self) {
        for c in [self.server.as_mut(), self.client.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

/// A Periscope setup that differs from the defaults (the row is named after it: relay and
/// agent must really run with it).
struct Variant {
    name: &'static str,
    /// Extra `[quic]` lines of relay.toml.
    relay_quic: &'static str,
    agent_args: &'static [&'static str],
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "periscope (QUIC, TLS 1.3, bbr)",
        relay_quic: "",
        agent_args: &[],
    },
    Variant {
        name: "periscope, congestion=cubic",
        relay_quic: "congestion = \"cubic\"\n",
        agent_args: &["--congestion", "cubic"],
    },
];

fn periscope(dir: &Path, sink: SocketAddr, echo: SocketAddr, variant: &Variant) -> System {
    let admin = free_port();
    let (quic, https, http, sink_port, echo_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"localhost\"\ndata_dir = \"{}\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\nhttp = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\"\nquic = \"127.0.0.1:{quic}\"\ntunnels = \"127.0.0.1\"\n\
             [limits]\nconnections_per_ip = 100000\nnew_connections_per_second = 0\n[quic]\n{}[[port_access]]\nports = \"1-65535\"\nmode = \"open\"\n",
            dir.join("data").display(),
            variant.relay_quic,
        ),
    )
    .unwrap();
    let out = Command::new(EXE)
        .args(["token", "issue", "--config"])
        .arg(&cfg)
        .args([
            "--agent",
            "bench",
            "--tcp-port",
            &sink_port.to_string(),
            "--tcp-port",
            &echo_port.to_string(),
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let cfg2 = cfg.clone();
    let dir2 = dir.to_path_buf();
    let start_relay = move || {
        Command::new(EXE)
            .env("PERISCOPE_LOG", "warn")
            .args(["relay", "--config"])
            .arg(&cfg2)
            .stderr(log_file(&dir2, "relay.log"))
            .spawn()
            .unwrap()
    };
    let relay = start_relay();
    let fingerprint = wait_fingerprint(&dir.join("data/self-signed.crt"));
    let mut args = vec![
        "--tcp".to_string(),
        format!("sink={sink}:{sink_port}"),
        "--tcp".to_string(),
        format!("echo={echo}:{echo_port}"),
    ];
    args.extend(variant.agent_args.iter().map(|a| a.to_string()));
    let agent = spawn_agent(dir, quic, &fingerprint, &token, &args);
    System {
        name: variant.name,
        sink_port,
        echo_port,
        server: Some(relay),
        client: Some(agent),
        restart: Box::new(start_relay),
    }
}

fn rathole(dir: &Path, bin: &Path, noise: bool, sink: SocketAddr, echo: SocketAddr) -> System {
    let (ctl, sink_port, echo_port) = (free_port(), free_port(), free_port());
    let (server_t, client_t) = if noise {
        let out = Command::new(bin).arg("--genkey").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // "Private Key:\n<base64>\n\nPublic Key:\n<base64>"
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.ends_with(':'));
        let (private, public) = (keys.next().unwrap(), keys.next().unwrap());
        (
            format!(
                "type = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"
            ),
            format!(
                "type = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"
            ),
        )
    } else {
        (
            "type = \"tcp\"\n".to_string(),
            "type = \"tcp\"\n".to_string(),
        )
    };
    let server_cfg = dir.join(format!("rathole-server-{noise}.toml"));
    let client_cfg = dir.join(format!("rathole-client-{noise}.toml"));
    std::fs::write(
        &server_cfg,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{ctl}\"\n[server.transport]\n{server_t}\
             [server.services.sink]\ntoken = \"t\"\nbind_addr = \"127.0.0.1:{sink_port}\"\n\
             [server.services.echo]\ntoken = \"t\"\nbind_addr = \"127.0.0.1:{echo_port}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &client_cfg,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{ctl}\"\n[client.transport]\n{client_t}\
             [client.services.sink]\ntoken = \"t\"\nlocal_addr = \"{sink}\"\n\
             [client.services.echo]\ntoken = \"t\"\nlocal_addr = \"{echo}\"\n"
        ),
    )
    .unwrap();
    let bin2 = bin.to_path_buf();
    let dir2 = dir.to_path_buf();
    let start_server = move || {
        Command::new(&bin2)
            .env("RUST_LOG", "info")
            .arg("--server")
            .arg(&server_cfg)
            .stdout(log_file(&dir2, "rathole-server.log"))
            .spawn()
            .unwrap()
    };
    let server = start_server();
    std::thread::sleep(Duration::from_millis(200));
    let client = Command::new(bin)
        .env("RUST_LOG", "info")
        .arg("--client")
        .arg(&client_cfg)
        .stdout(log_file(dir, "rathole-client.log"))
        .spawn()
        .unwrap();
    System {
        name: if noise {
            "rathole (noise, encrypted)"
        } else {
            "rathole (tcp, plaintext)"
        },
        sink_port,
        echo_port,
        server: Some(server),
        client: Some(client),
        restart: Box::new(start_server),
    }
}

async fn echo_once(port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(s)
}

/// Wait (bounded) until a 1-byte echo works through `port`; returns the time it took.
async fn wait_ready(port: u16, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), echo_once(port)).await {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Gbit/s moving `total` bytes over `streams` parallel connections into the sink.
async fn throughput(port: u16, streams: usize, total: usize) -> f64 {
    let per = total / streams;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let buf = vec![0xa5u8; 256 * 1024];
            let mut left = per;
            while left > 0 {
                let n = left.min(buf.len());
                s.write_all(&buf[..n]).await.unwrap();
                left -= n;
            }
            s.shutdown().await.unwrap();
            let mut k = [0u8; 1];
            s.read_exact(&mut k).await.unwrap();
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("throughput run in time")
            .unwrap();
    }
    (per * streams) as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e9
}

/// Median and p99 microseconds of connect + 1-byte echo.
async fn setup(port: u16) -> (f64, f64) {
    let mut v = Vec::with_capacity(SETUP_N);
    for _ in 0..SETUP_N {
        let t0 = Instant::now();
        let s = echo_once(port).await.unwrap();
        v.push(t0.elapsed().as_secs_f64() * 1e6);
        drop(s);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

/// KB of RSS per idle connection in (server, client).
async fn idle_memory(sys: &System) -> (f64, f64) {
    let (sp, cp) = (
        sys.server.as_ref().unwrap().id(),
        sys.client.as_ref().unwrap().id(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s0, c0) = (rss_kb(sp), rss_kb(cp));
    let mut conns = Vec::with_capacity(IDLE_N);
    for _ in 0..IDLE_N {
        conns.push(echo_once(sys.echo_port).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s1, c1) = (rss_kb(sp), rss_kb(cp));
    drop(conns);
    (
        s1.saturating_sub(s0) as f64 / IDLE_N as f64,
        c1.saturating_sub(c0) as f64 / IDLE_N as f64,
    )
}

/// Median seconds from `kill -9` of the server/relay (and immediate restart) to serving.
async fn restart(sys: &mut System) -> f64 {
    let mut v = Vec::new();
    for i in 0..RESTARTS {
        let mut old = sys.server.take().unwrap();
        old.kill().unwrap();
        old.wait().unwrap();
        let t0 = Instant::now();
        sys.server = Some((sys.restart)());
        let took = wait_ready(sys.echo_port, Duration::from_secs(30)).await;
        v.push(took.map(|_| t0.elapsed().as_secs_f64()).unwrap_or(f64::NAN));
        // Restarts are minutes apart in life: let the new session count as healthy (agents
        // reset their backoff after 5 s) before the next kill. The extra offset spreads the
        // kills over the 2 s keep-alive period, so no run lands in phase with it.
        let offset = Duration::from_millis(400 * i as u64);
        tokio::time::sleep(Duration::from_secs(6) + offset).await;
    }
    median(v)
}

struct Row {
    name: String,
    t1: f64,
    t8: f64,
    setup_p50: f64,
    setup_p99: f64,
    mem: Option<(f64, f64)>,
    restart: Option<f64>,
}

async fn measure(name: &str, sink: u16, echo: u16) -> Row {
    let mut t1 = Vec::new();
    let mut t8 = Vec::new();
    for _ in 0..RUNS {
        t1.push(throughput(sink, 1, STREAM_BYTES).await);
        t8.push(throughput(sink, 8, STREAM_BYTES).await);
    }
    let (p50, p99) = setup(echo).await;
    Row {
        name: name.into(),
        t1: median(t1),
        t8: median(t8),
        setup_p50: p50,
        setup_p99: p99,
        mem: None,
        restart: None,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Logs and configs stay under target/ for a look after the run.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-tunnel");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (sink, echo) = targets().await;
        let mut rows = vec![measure("direct (no tunnel)", sink.port(), echo.port()).await];
        let mut systems: Vec<System> = Vec::new();
        // PERISCOPE_BENCH_VARIANTS=N measures the first N setups only.
        let n = std::env::var("PERISCOPE_BENCH_VARIANTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(VARIANTS.len());
        for (i, variant) in VARIANTS.iter().take(n).enumerate() {
            let pdir = dir.join(format!("periscope-{i}"));
            std::fs::create_dir_all(&pdir).unwrap();
            systems.push(periscope(&pdir, sink, echo, variant));
        }
        if let Some(bin) = rathole_bin() {
            for noise in [false, true] {
                let d = dir.join(format!("rathole-{noise}"));
                std::fs::create_dir_all(&d).unwrap();
                systems.push(rathole(&d, &bin, noise, sink, echo));
            }
        } else {
            eprintln!("rathole not found (set RATHOLE=/path/to/rathole): measuring periscope only");
        }
        for sys in &mut systems {
            wait_ready(sys.echo_port, Duration::from_secs(30)).await.expect("tunnel up");
            wait_ready(sys.sink_port, Duration::from_secs(30)).await;
            eprintln!("measuring {}", sys.name);
            // Memory first, on a fresh process: later runs leave freed pages in the allocator.
            let mem = idle_memory(sys).await;
            let mut row = measure(sys.name, sys.sink_port, sys.echo_port).await;
            row.mem = Some(mem);
            row.restart = Some(restart(sys).await);
            rows.push(row);
        }
        let d = &rows[0];
        println!("| system | 1 stream Gbit/s (× direct) | 8 streams Gbit/s (× direct) | setup p50 µs (+ vs direct) | setup p99 µs | KB/idle conn relay / agent | back after kill -9 (s) |");
        println!("|---|---|---|---|---|---|---|");
        for r in &rows {
            let mem = r.mem.map_or("–".into(), |(s, c)| format!("{s:.1} / {c:.1}"));
            let rs = r.restart.map_or("–".into(), |s| format!("{s:.2}"));
            println!(
                "| {} | {:.2} ({:.2}×) | {:.2} ({:.2}×) | {:.0} (+{:.0}) | {:.0} | {} | {} |",
                r.name, r.t1, r.t1 / d.t1, r.t8, r.t8 / d.t8, r.setup_p50, r.setup_p50 - d.setup_p50, r.setup_p99, mem, rs
            );
        }
    });
}
