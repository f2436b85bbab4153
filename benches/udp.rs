//! UDP tunnel benchmark: packets/s and loss at 1200-byte payloads for 1 and 16 flows, and
//! one-way added latency, for a direct send, Periscope (release binary, relay and agent as
//! separate processes) and rathole's UDP forwarding when it is installed (`RATHOLE=...` or
//! `rathole` on PATH), all in the same run.
//!
//! `cargo bench --bench udp` prints Markdown tables for BENCHMARKS.md. The sender paces
//! packets at fixed offered rates (a thread, busy-waiting between packets); the sink (in this
//! process) counts them and measures one-way latency from a timestamp in the payload (same
//! clock on both ends). Every loop is bounded in count and time.

#![allow(clippy::unwrap_used)]

mod common;
use common::{free_port, rathole_bin, spawn_agent, wait_fingerprint};

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

const EXE: &str = env!("CARGO_BIN_EXE_periscope");
const PAYLOAD: usize = 1200;
const RATES: [u64; 5] = [10_000, 25_000, 50_000, 100_000, 150_000];
const SECONDS: f64 = 1.5;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What the sink saw for the current run.
#[derive(Default)]
struct Sink {
    run: AtomicU32,
    received: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// A sink on 127.0.0.1 with 4 MiB of receive buffer; counts packets of the current run.
fn sink() -> (SocketAddr, Arc<Sink>) {
    let sock = proto::transport::quic::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    let state = Arc::new(Sink::default());
    let s = state.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok(n) = sock.recv(&mut buf) else {
                continue;
            };
            if n < 16 {
                continue;
            }
            let run = u32::from_be_bytes(buf[0..4].try_into().unwrap());
            if run != s.run.load(Ordering::Relaxed) {
                continue;
            }
            let sent = u64::from_be_bytes(buf[8..16].try_into().unwrap());
            s.received.fetch_add(1, Ordering::Relaxed);
            let lat = now_ns().saturating_sub(sent) / 1000;
            s.latencies_us.lock().unwrap().push(lat as u32);
        }
    });
    (addr, state)
}

/// Send `rate` packets/s spread round-robin over `flows` sockets to `to` for `secs`; returns
/// how many were sent.
fn send_paced(flows: &[UdpSocket], to: SocketAddr, run: u32, rate: u64, secs: f64) -> u64 {
    let total = (rate as f64 * secs) as u64;
    let mut pkt = vec![0u8; PAYLOAD];
    pkt[0..4].copy_from_slice(&run.to_be_bytes());
    let start = Instant::now();
    let mut sent = 0;
    for i in 0..total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            if due - now > Duration::from_micros(200) {
                std::thread::sleep(Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
        }
        if start.elapsed() > Duration::from_secs_f64(secs * 3.0) {
            break; // the sender cannot keep up: stop, count what was sent
        }
        pkt[4..8].copy_from_slice(&(i as u32).to_be_bytes());
        pkt[8..16].copy_from_slice(&now_ns().to_be_bytes());
        let f = &flows[(i as usize) % flows.len()];
        if f.send_to(&pkt, to).is_ok() {
            sent += 1;
        }
    }
    sent
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i])
}

struct Run {
    offered: u64,
    sent: u64,
    received: u64,
    p50: f64,
    p99: f64,
}

fn measure(sink: &Sink, to: SocketAddr, socks: &[UdpSocket], rate: u64, run: &mut u32) -> Run {
    let flows = socks.len();
    // Warm up: each flow opens (periscope queues a new flow's first packets until the agent
    // has its socket) and path MTU discovery is long done.
    *run += 1;
    sink.run.store(*run, Ordering::Relaxed);
    send_paced(socks, to, *run, 200 * flows as u64, 0.5);
    std::thread::sleep(Duration::from_millis(300));
    *run += 1;
    sink.received.store(0, Ordering::Relaxed);
    sink.latencies_us.lock().unwrap().clear();
    sink.run.store(*run, Ordering::Relaxed);
    let sent = send_paced(socks, to, *run, rate, SECONDS);
    std::thread::sleep(Duration::from_millis(500));
    let received = sink.received.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *sink.latencies_us.lock().unwrap());
    Run {
        offered: rate,
        sent,
        received,
        p50: percentile(&mut lat, 0.5),
        p99: percentile(&mut lat, 0.99),
    }
}

struct System {
    name: &'static str,
    port: u16,
    children: Vec<Child>,
}

impl Drop for System {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

fn periscope(dir: &Path, target: SocketAddr) -> System {
    let (quic, https, http, port) = (free_port(), free_port(), free_port(), free_port());
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"localhost\"\ndata_dir = \"{}\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\nhttp = \"127.0.0.1:{http}\"\nquic = \"127.0.0.1:{quic}\"\ntunnels = \"127.0.0.1\"\n[limits]\nudp_packets_per_second = 1000000\nudp_flows_per_visitor = 1024\n\
             [[port_access]]\nports = \"1-65535\"\nmode = \"open\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(EXE)
        .args(["token", "issue", "--config"])
        .arg(&cfg)
        .args(["--agent", "bench", "--udp-port", &port.to_string()])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let relay = Command::new(EXE)
        .env("PERISCOPE_LOG", "warn")
        .args(["relay", "--config"])
        .arg(&cfg)
        .stderr(log_file(dir, "relay.log"))
        .spawn()
        .unwrap();
    let pem = dir.join("data/self-signed.crt");
    let fingerprint = wait_fingerprint(&pem);
    let agent = spawn_agent(
        dir,
        quic,
        &fingerprint,
        &token,
        &["--udp".to_string(), format!("sink={target}:{port}")],
    );
    System {
        name: "periscope (QUIC datagrams)",
        port,
        children: vec![relay, agent],
    }
}

fn rathole(dir: &Path, bin: &Path, target: SocketAddr) -> System {
    let (ctl, port) = (free_port(), free_port());
    let server_cfg = dir.join("rathole-server.toml");
    let client_cfg = dir.join("rathole-client.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{ctl}\"\n[server.transport]\ntype = \"tcp\"\n\
             [server.services.sink]\ntype = \"udp\"\ntoken = \"t\"\nbind_addr = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &client_cfg,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{ctl}\"\n[client.transport]\ntype = \"tcp\"\n\
             [client.services.sink]\ntype = \"udp\"\ntoken = \"t\"\nlocal_addr = \"{target}\"\n"
        ),
    )
    .unwrap();
    let server = Command::new(bin)
        .arg("--server")
        .arg(&server_cfg)
        .stdout(log_file(dir, "rathole-server.log"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let client = Command::new(bin)
        .arg("--client")
        .arg(&client_cfg)
        .stdout(log_file(dir, "rathole-client.log"))
        .spawn()
        .unwrap();
    System {
        name: "rathole (udp over its tcp transport)",
        port,
        children: vec![server, client],
    }
}

/// Until one packet goes through (bounded).
fn wait_ready(sink: &Sink, to: SocketAddr, run: &mut u32) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..150 {
        *run += 1;
        sink.received.store(0, Ordering::Relaxed);
        sink.run.store(*run, Ordering::Relaxed);
        send_paced(std::slice::from_ref(&s), to, *run, 100, 0.1);
        std::thread::sleep(Duration::from_millis(100));
        if sink.received.load(Ordering::Relaxed) > 0 {
            return true;
        }
    }
    false
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let _ = now_ns();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-udp");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (target, sink) = sink();
    let mut run = 0u32;
    let mut systems: Vec<(String, SocketAddr, Option<System>)> =
        vec![("direct (no tunnel)".into(), target, None)];
    let pdir = dir.join("periscope");
    std::fs::create_dir_all(&pdir).unwrap();
    let p = periscope(&pdir, target);
    systems.push((p.name.into(), ([127, 0, 0, 1], p.port).into(), Some(p)));
    if let Some(bin) = rathole_bin() {
        let d = dir.join("rathole");
        std::fs::create_dir_all(&d).unwrap();
        let r = rathole(&d, &bin, target);
        systems.push((r.name.into(), ([127, 0, 0, 1], r.port).into(), Some(r)));
    } else {
        eprintln!("rathole not found (set RATHOLE=/path/to/rathole): measuring periscope only");
    }
    println!(
        "| system | flows | offered pkt/s | received pkt/s | loss % | one-way p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut best: Vec<(String, usize, u64)> = Vec::new();
    let mut lat: Vec<(String, f64, f64)> = Vec::new();
    for (name, to, _sys) in &systems {
        assert!(
            wait_ready(&sink, *to, &mut run),
            "{name}: no packet went through"
        );
        for flows in [1usize, 16] {
            let mut top = 0;
            // The same flows at every rate (new flows per rate would pile up to the relay's
            // per-visitor limit: every flow here comes from 127.0.0.1).
            let socks: Vec<UdpSocket> = (0..flows)
                .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            for rate in RATES {
                let r = measure(&sink, *to, &socks, rate, &mut run);
                let loss =
                    100.0 * (r.sent.saturating_sub(r.received)) as f64 / r.sent.max(1) as f64;
                let got = r.received as f64 / SECONDS;
                println!(
                    "| {name} | {flows} | {} (sent {:.0}) | {got:.0} | {loss:.2} | {:.0} | {:.0} |",
                    r.offered,
                    r.sent as f64 / SECONDS,
                    r.p50,
                    r.p99
                );
                if loss <= 0.1 && r.sent as f64 >= 0.95 * r.offered as f64 * SECONDS {
                    top = rate;
                }
                if flows == 1 && rate == RATES[0] {
                    lat.push((name.clone(), r.p50, r.p99));
                }
            }
            best.push((name.clone(), flows, top));
        }
    }
    println!();
    println!("| system | 1 flow: highest offered pkt/s at ≤ 0.1 % loss | 16 flows | one-way p50 / p99 µs at 10k pkt/s (added vs direct) |");
    println!("|---|---|---|---|");
    let (d50, d99) = (lat[0].1, lat[0].2);
    for (name, p50, p99) in &lat {
        let one = best
            .iter()
            .find(|b| &b.0 == name && b.1 == 1)
            .map_or(0, |b| b.2);
        let sixteen = best
            .iter()
            .find(|b| &b.0 == name && b.1 == 16)
            .map_or(0, |b| b.2);
        println!(
            "| {name} | {one} | {sixteen} | {p50:.0} / {p99:.0} (+{:.0} / +{:.0}) |",
            p50 - d50,
            p99 - d99
        );
    }
}
