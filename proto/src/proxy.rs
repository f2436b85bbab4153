//! PROXY protocol version 2 headers (haproxy's proxy-protocol.txt, section 2.2), so a target
//! behind the agent sees the visitor's real address.

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Transport of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP (`SOCK_STREAM`).
    Stream,
    /// UDP (`SOCK_DGRAM`).
    Datagram,
}

/// The header for a connection from `src` (the visitor) to `dst` (the relay's public
/// address). Mixed families are expressed as IPv6 with v4-mapped addresses.
pub fn v2_header(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Vec<u8> {
    let tp = match transport {
        Transport::Stream => 0x1,
        Transport::Datagram => 0x2,
    };
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x10 | tp);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x20 | tp);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_golden() {
        let h = v2_header(
            "192.0.2.1:40000".parse().unwrap(),
            "198.51.100.2:2222".parse().unwrap(),
            Transport::Stream,
        );
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&2222u16.to_be_bytes());
        assert_eq!(h, want);
    }

    #[test]
    fn mixed_families_use_v6() {
        let h = v2_header(
            "192.0.2.1:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
            Transport::Datagram,
        );
        assert_eq!(h[13], 0x22);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        assert_eq!(h.len(), 16 + 36);
    }
}
