//! Helpers shared by the bench binaries.

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
