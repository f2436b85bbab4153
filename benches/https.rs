//! HTTPS edge benchmark: what a visitor gets through Periscope (relay + agent processes)
//! against what self-hosters run today, all in the same run on loopback:
//! - direct: the origin itself (nginx serving files, plain HTTP);
//! - nginx TLS: nginx as a TLS reverse proxy to the origin;
//! - nginx TLS + rathole: nginx in front of a rathole tunnel (when `RATHOLE` or `rathole` on
//!   PATH is available) — the proxy-plus-tunnel stack Periscope replaces — once with rathole's
//!   default plain tcp transport and once noise-encrypted (like for like with Periscope's QUIC:
//!   a tunnel across the internet must be encrypted);
//! - periscope: relay (HTTPS edge) + agent (QUIC) to the origin.
//!
//! Load: wrk (HTTP/1.1 keep-alive: req/s, p50, p99) and h2load (HTTP/2: req/s) for a 1 KiB
//! and a 1 MiB response. Then live video: MJPEG frame latency (frame written by an in-process
//! origin → frame read by the client), one stream and a 16-camera grid (16 HTTP/1.1
//! connections direct, one HTTP/2 connection through Periscope).
//!
//! `cargo bench --bench https` (needs `wrk`, `h2load` from nghttp2-client, `nginx`; apt).
//! Medians of `ROUNDS` (default 5) rounds that interleave the systems. Beside req/s, the CPU
//! time the stack's own processes spent per request (from `/proc`; the origin's is left out,
//! except in the direct row where it is all there is): the load generator shares the machine's
//! cores with everything measured, so req/s moves with scheduling, CPU per request much less.
//! Every loop is bounded; every process is stopped on drop.

#![allow(clippy::unwrap_used)]

mod common;
use common::{free_port, median, rathole_bin, spawn_agent, wait_fingerprint};

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

const EXE: &str = env!("CARGO_BIN_EXE_periscope");
/// Rounds of load per system (`ROUNDS` overrides); medians are reported.
const ROUNDS: usize = 5;
const LOAD_SECS: u32 = 8;
const FRAMES: usize = 200;
const FRAME_BYTES: usize = 30_000;
const FPS: u64 = 50;
const GRID: usize = 16;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Child processes stopped on drop: SIGTERM first (an nginx master killed with SIGKILL leaves
/// its workers running, orphaned), SIGKILL after 2 s.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let pid = rustix::process::Pid::from_child(c);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for c in &mut self.0 {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One stack under test: where wrk sends its load and which processes do the work.
struct System {
    name: &'static str,
    scheme: &'static str,
    port: u16,
    host: String,
    /// Processes (with their children) whose CPU time counts for this stack.
    pids: Vec<u32>,
}

fn wait_port(port: u16) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on {port}");
}

fn nginx(dir: &Path, name: &str, workers: &str, server: &str) -> Child {
    let conf = dir.join(format!("nginx-{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes {workers}; pid {d}/nginx-{name}.pid;\n\
             error_log {d}/nginx-{name}.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; sendfile on; tcp_nodelay on; keepalive_requests 1000000;\n\
             client_body_temp_path {d}/tmp-{name}; proxy_temp_path {d}/ptmp-{name};\n\
             fastcgi_temp_path {d}/f-{name}; uwsgi_temp_path {d}/u-{name}; scgi_temp_path {d}/s-{name};\n\
             {server} }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join(format!("nginx-{name}.stderr")))
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt install nginx-light)")
}

/// A TLS reverse proxy on `port` to `upstream`, with upstream keep-alive.
fn nginx_tls(dir: &Path, name: &str, port: u16, upstream: u16) -> Child {
    nginx(
        dir,
        name,
        "auto",
        &format!(
            "upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port} ssl http2; ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem; ssl_protocols TLSv1.3;\n\
             location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; proxy_buffering off; }} }}",
            d = dir.display()
        ),
    )
}

/// rathole server + client forwarding public `port` to `target`: plain tcp transport (as
/// behind nginx TLS, and rathole's default), or noise-encrypted when `noise` is true (what a
/// tunnel across the internet needs: the like-for-like comparison with Periscope's QUIC).
/// `nodelay = true` per service, its best setting. rathole 0.5 still leaves Nagle on for the
/// visitor sockets its server accepts (the option reaches the data channels only): the ~43 ms
/// p99 in every run (Nagle meeting delayed ACKs), also without nginx in front.
fn rathole(dir: &Path, bin: &Path, port: u16, target: u16, noise: bool) -> Vec<Child> {
    let ctl = free_port();
    let name = if noise { "noise" } else { "tcp" };
    let s = dir.join(format!("rathole-{name}-server.toml"));
    let c = dir.join(format!("rathole-{name}-client.toml"));
    let (server_transport, client_transport) = if noise {
        let out = Command::new(bin).arg("--genkey").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let keys: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with('='))
            .collect();
        assert_eq!(keys.len(), 2, "rathole --genkey: {text}");
        (
            format!(
                "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{}\"\n",
                keys[0]
            ),
            format!(
                "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{}\"\n",
                keys[1]
            ),
        )
    } else {
        (String::new(), String::new())
    };
    std::fs::write(
        &s,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{ctl}\"\n{server_transport}[server.services.web]\ntoken = \"t\"\n\
             bind_addr = \"127.0.0.1:{port}\"\nnodelay = true\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &c,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{ctl}\"\n{client_transport}[client.services.web]\ntoken = \"t\"\n\
             local_addr = \"127.0.0.1:{target}\"\nnodelay = true\n"
        ),
    )
    .unwrap();
    let server = Command::new(bin)
        .arg("--server")
        .arg(&s)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(ctl);
    let client = Command::new(bin)
        .arg("--client")
        .arg(&c)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    vec![server, client]
}

/// Relay + agent publishing `cam.localhost` → `target`; returns the edge port and processes.
fn periscope(dir: &Path, targets: &[(&str, SocketAddr)]) -> (u16, Vec<Child>) {
    let (quic, https, http, admin) = (free_port(), free_port(), free_port(), free_port());
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("relay.toml");
    let mut toml = format!(
        "domain = \"localhost\"\ndata_dir = \"{}\"\n[listen]\nhttps = \"127.0.0.1:{https}\"\n\
         http = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\"\nquic = \"127.0.0.1:{quic}\"\ntunnels = \"127.0.0.1\"\n\
         [tls]\nhsts = false\n\
         [limits]\nconnections_per_ip = 100000\nnew_connections_per_second = 0\nrequests_per_second = 0\n",
        dir.join("data").display()
    );
    for (name, _) in targets {
        toml.push_str(&format!(
            "[[access]]\nhost = \"{name}.localhost\"\npublic = true\n"
        ));
    }
    std::fs::write(&cfg, toml).unwrap();
    let mut issue = Command::new(EXE);
    issue
        .args(["token", "issue", "--config"])
        .arg(&cfg)
        .args(["--agent", "bench"]);
    for (name, _) in targets {
        issue.args(["--host", &format!("{name}.localhost")]);
    }
    let out = issue.stderr(Stdio::null()).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let relay = Command::new(EXE)
        .env("PERISCOPE_LOG", "warn")
        .args(["relay", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(dir.join("relay.log")).unwrap())
        .spawn()
        .unwrap();
    wait_port(https);
    let fp = wait_fingerprint(&dir.join("data/self-signed.crt"));
    let args: Vec<String> = targets
        .iter()
        .flat_map(|(name, t)| ["--http".to_string(), format!("{name}={t}")])
        .collect();
    let agent = spawn_agent(dir, quic, &fp, &token, &args);
    // Until the route answers.
    let t0 = Instant::now();
    loop {
        let ok = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args([
                "--resolve",
                &format!("{}.localhost:{https}:127.0.0.1", targets[0].0),
            ])
            .arg(format!("https://{}.localhost:{https}/", targets[0].0))
            .output()
            .map(|o| o.stdout != b"502" && o.stdout != b"404" && !o.stdout.is_empty())
            .unwrap_or(false);
        if ok || t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (https, vec![relay, agent])
}

/// One load run's figures.
#[derive(Clone, Copy)]
struct Load {
    rps: f64,
    p50: f64,
    p99: f64,
    /// Requests answered (for CPU per request).
    requests: f64,
}

/// wrk: HTTP/1.1 keep-alive load.
fn wrk(url: &str, host: &str) -> Load {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{LOAD_SECS}s"), "--latency"])
        .args(["-H", &format!("Host: {host}")])
        .arg(url)
        .output()
        .expect("wrk (apt install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let ms = |s: &str| -> f64 {
        let v: f64 = s
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse()
            .unwrap_or(f64::NAN);
        if s.ends_with("us") {
            v / 1000.0
        } else if s.ends_with("ms") {
            v
        } else {
            v * 1000.0
        }
    };
    let mut rps = f64::NAN;
    let (mut p50, mut p99, mut requests) = (f64::NAN, f64::NAN, f64::NAN);
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["Requests/sec:", v] => rps = v.parse().unwrap_or(f64::NAN),
            [n, "requests", "in", ..] => requests = n.parse().unwrap_or(f64::NAN),
            ["50%", v] => p50 = ms(v),
            ["99%", v] => p99 = ms(v),
            _ => {}
        }
    }
    if rps.is_nan() {
        eprintln!("wrk {url}: {text}");
    }
    Load {
        rps,
        p50,
        p99,
        requests,
    }
}

/// CPU seconds (user + system) used so far by the processes `roots` and all their
/// descendants (nginx workers), from `/proc`.
fn cpu_seconds(roots: &[u32]) -> f64 {
    // (pid, ppid, ticks) of every process.
    let procs: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ppid = rest.get(1)?.parse().ok()?;
            let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
            Some((pid, ppid, ticks))
        })
        .collect();
    let mut tree: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let ticks: u64 = procs
        .iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| p.2)
        .sum();
    // USER_HZ: 100 on every Linux architecture we run on.
    ticks as f64 / 100.0
}

/// h2load: req/s over 4 connections × 16 streams.
fn h2load(url: &str, authority: &str) -> f64 {
    let out = Command::new("h2load")
        .args(["-c4", "-m16", "-t2", "-D", &LOAD_SECS.to_string()])
        .args(["-H", &format!(":authority: {authority}")])
        .arg(url)
        .output()
        .expect("h2load (apt install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    if rps.is_nan() {
        eprintln!("h2load {url}: {text}");
    }
    rps
}

/// An MJPEG origin: `/mjpeg` sends FRAMES frames at FPS, each carrying the nanoseconds since
/// `epoch` at which it was written.
async fn mjpeg_origin(epoch: Instant) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let (mut tx, body) =
                        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
                    tokio::spawn(async move {
                        let mut tick =
                            tokio::time::interval(Duration::from_micros(1_000_000 / FPS));
                        for _ in 0..FRAMES {
                            tick.tick().await;
                            let mut part = format!(
                                "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {FRAME_BYTES}\r\n\r\n"
                            )
                            .into_bytes();
                            let t = epoch.elapsed().as_nanos() as u64;
                            let mut frame = vec![0x55u8; FRAME_BYTES];
                            frame[..8].copy_from_slice(&t.to_be_bytes());
                            part.extend_from_slice(&frame);
                            part.extend_from_slice(b"\r\n");
                            if tx.send_data(part.into()).await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "multipart/x-mixed-replace; boundary=frame")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Read the multipart stream and return each frame's latency (ms).
async fn read_frames(body: hyper::body::Incoming, epoch: Instant) -> Vec<f64> {
    let mut body = body;
    let mut buf: Vec<u8> = Vec::new();
    let mut lat = Vec::new();
    let marker = b"\r\n\r\n";
    while let Some(Ok(f)) = body.frame().await {
        let Ok(data) = f.into_data() else { continue };
        buf.extend_from_slice(&data);
        // Consume complete parts: header, FRAME_BYTES, CRLF.
        while let Some(h) = buf.windows(4).position(|w| w == marker) {
            let start = h + 4;
            if buf.len() < start + FRAME_BYTES + 2 {
                break;
            }
            let t = u64::from_be_bytes(buf[start..start + 8].try_into().unwrap());
            let now = epoch.elapsed().as_nanos() as u64;
            lat.push(now.saturating_sub(t) as f64 / 1e6);
            buf.drain(..start + FRAME_BYTES + 2);
        }
    }
    lat
}

fn tls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    roots
        .add(tokio_rustls::rustls::pki_types::CertificateDer::from(
            pem::parse(pem).unwrap().into_contents(),
        ))
        .unwrap();
    let mut cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Every stream's frame latencies, in one list.
async fn all_latencies(tasks: Vec<tokio::task::JoinHandle<Vec<f64>>>) -> Vec<f64> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// `n` MJPEG streams direct (one HTTP/1.1 connection each): all frame latencies.
async fn mjpeg_direct(origin: SocketAddr, n: usize, epoch: Instant) -> Vec<f64> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let s = TcpStream::connect(origin).await.unwrap();
                let _ = s.set_nodelay(true);
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let req = http::Request::get("/mjpeg")
                    .header("host", "origin")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                read_frames(resp.into_body(), epoch).await
            })
        })
        .collect();
    all_latencies(tasks).await
}

/// `n` MJPEG streams through Periscope on one HTTP/2 connection.
async fn mjpeg_periscope(edge: u16, ca: &Path, n: usize, epoch: Instant) -> Vec<f64> {
    let tcp = TcpStream::connect(("127.0.0.1", edge)).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("cam.localhost").unwrap();
    let tls = tls_client(ca).connect(name, tcp).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let req = http::Request::get("https://cam.localhost/mjpeg")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                read_frames(resp.into_body(), epoch).await
            })
        })
        .collect();
    all_latencies(tasks).await
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One self-signed certificate for nginx.
    let ck = rcgen::generate_simple_self_signed(vec!["cam.localhost".into()]).unwrap();
    std::fs::write(d.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("1k"), vec![b'x'; 1024]).unwrap();
    std::fs::write(www.join("1m"), vec![b'x'; 1 << 20]).unwrap();

    let origin = free_port();
    let mut procs = Procs(vec![nginx(
        d,
        "origin",
        "1",
        &format!(
            "server {{ listen 127.0.0.1:{origin}; root {}; }}",
            www.display()
        ),
    )]);
    wait_port(origin);
    let origin_pid = procs.0[0].id();
    let proxy = free_port();
    procs.0.push(nginx_tls(d, "proxy", proxy, origin));
    wait_port(proxy);
    let mut systems = vec![
        System {
            name: "direct (origin, plain HTTP/1.1)",
            scheme: "http",
            port: origin,
            host: format!("cam.localhost:{origin}"),
            pids: vec![origin_pid],
        },
        System {
            name: "nginx TLS reverse proxy",
            scheme: "https",
            port: proxy,
            host: format!("cam.localhost:{proxy}"),
            pids: vec![procs.0[1].id()],
        },
    ];
    if let Some(bin) = rathole_bin() {
        for (noise, name) in [
            (false, "nginx TLS + rathole (tcp)"),
            (true, "nginx TLS + rathole (noise)"),
        ] {
            let (rh, front) = (free_port(), free_port());
            let tunnel = rathole(d, &bin, rh, origin, noise);
            let front_proc = nginx_tls(d, &format!("front-{rh}"), front, rh);
            let pids = tunnel.iter().chain([&front_proc]).map(Child::id).collect();
            procs.0.extend(tunnel);
            procs.0.push(front_proc);
            wait_port(front);
            wait_port(rh);
            systems.push(System {
                name,
                scheme: "https",
                port: front,
                host: format!("cam.localhost:{front}"),
                pids,
            });
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let epoch = Instant::now();
    let cam = rt.block_on(mjpeg_origin(epoch));
    let (edge, p) = periscope(
        &d.join("p"),
        &[
            ("cam", cam),
            ("files", SocketAddr::from(([127, 0, 0, 1], origin))),
        ],
    );
    systems.push(System {
        name: "periscope (relay + agent, QUIC)",
        scheme: "https",
        port: edge,
        host: format!("files.localhost:{edge}"),
        pids: p.iter().map(Child::id).collect(),
    });
    procs.0.extend(p);

    // Rounds interleave the systems (a, b, c, a, b, c, …) so that the machine's drift over
    // the minutes of a run (other tenants, thermal, page cache) falls on all of them alike.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    println!("| system | body | HTTP/1.1 req/s | p50 ms | p99 ms | CPU µs/req | HTTP/2 req/s |");
    println!("|---|---|---|---|---|---|---|");
    for body in ["1k", "1m"] {
        let mut h1: Vec<Vec<(Load, f64)>> = vec![Vec::new(); systems.len()];
        let mut h2: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
        for _ in 0..rounds {
            for (i, s) in systems.iter().enumerate() {
                let url = format!("{}://127.0.0.1:{}/{body}", s.scheme, s.port);
                // CPU of the proxy/tunnel processes only: the origin is the same for all.
                let before = cpu_seconds(&s.pids);
                let load = wrk(&url, &s.host);
                let cpu = (cpu_seconds(&s.pids) - before) / load.requests * 1e6;
                h1[i].push((load, cpu));
                if s.scheme == "https" {
                    h2[i].push(h2load(&url, &s.host));
                }
            }
        }
        for (i, s) in systems.iter().enumerate() {
            let m = |f: fn(&(Load, f64)) -> f64| median(h1[i].iter().map(f).collect());
            let h2 = if h2[i].is_empty() {
                "—".into()
            } else {
                format!("{:.0}", median(h2[i].clone()))
            };
            println!(
                "| {} | {body} | {:.0} | {:.2} | {:.2} | {:.1} | {h2} |",
                s.name,
                m(|x| x.0.rps),
                m(|x| x.0.p50),
                m(|x| x.0.p99),
                m(|x| x.1),
            );
        }
    }

    println!();
    println!(
        "| MJPEG ({FPS} fps, {FRAME_BYTES} B frames, {FRAMES} frames/stream) | streams | frames | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|");
    let ca = d.join("p/data/dev-ca.crt");
    for n in [1, GRID] {
        let mut direct = rt.block_on(mjpeg_direct(cam, n, epoch));
        let mut tunnel = rt.block_on(mjpeg_periscope(edge, &ca, n, epoch));
        for (label, v) in [
            ("direct (HTTP/1.1, one connection per stream)", &mut direct),
            ("periscope (HTTP/2, one connection)", &mut tunnel),
        ] {
            let frames = v.len();
            println!(
                "| {label} | {n} | {frames} | {:.2} | {:.2} |",
                percentile(v, 0.5),
                percentile(v, 0.99)
            );
        }
    }
    drop(procs);
}
