//! `agent.toml`: serde structs with `deny_unknown_fields`, then [`AgentConfig::validate`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use proto::{Secret, TunnelKind};
use serde::{Deserialize, Serialize};

use crate::AgentError;

/// The agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Relay address, `host:port` (the relay's QUIC port).
    pub relay: String,
    /// The agent token (or `token_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// File holding the agent token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Pin the relay's certificate: `sha256:` + hex, as printed by the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Trust this CA (PEM) instead of the public web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name to verify the relay's certificate against (default: the host part of `relay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `auto` (QUIC, falling back to TLS over TCP when UDP is blocked), `quic` or `tcp`.
    #[serde(default)]
    pub transport: TransportChoice,
    /// The relay's https listener, `host:port`, for the TCP fallback (default: `relay`; in
    /// production both are port 443 of the same host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_https: Option<String>,
    /// With `transport = "auto"`: while on the TCP fallback, try QUIC again this often and
    /// move to it when it works (default 5m).
    #[serde(default = "default_quic_probe_interval", with = "humantime_serde")]
    pub quic_probe_interval: Duration,
    /// How long to wait for the relay handshake and for a target to accept a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// QUIC tuning.
    #[serde(default)]
    pub quic: QuicConfig,
    /// Published services.
    #[serde(default, rename = "tunnel")]
    pub tunnels: Vec<TunnelConfig>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Default of `quic_probe_interval`.
pub fn default_quic_probe_interval() -> Duration {
    Duration::from_secs(300)
}

/// Transport to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// QUIC first, TLS over TCP after a short head start; keeps the winner and goes back to
    /// QUIC when it works again.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

/// `[quic]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// Keep-alive interval (holds NAT mappings; notices a restarted relay).
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Idle timeout.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// `cubic` or `bbr`.
    #[serde(default = "default_congestion")]
    pub congestion: Congestion,
}

pub use proto::transport::quic::Congestion;

fn default_keep_alive() -> Duration {
    proto::transport::quic::QuicSettings::agent().keep_alive
}
fn default_idle_timeout() -> Duration {
    proto::transport::quic::QuicSettings::agent().idle_timeout
}
fn default_congestion() -> Congestion {
    proto::transport::quic::QuicSettings::agent().congestion
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            keep_alive: default_keep_alive(),
            idle_timeout: default_idle_timeout(),
            congestion: default_congestion(),
        }
    }
}

impl QuicConfig {
    /// TLS+yamux settings for the TCP fallback: the same keep-alive and idle timeout.
    pub(crate) fn tcp_settings(&self) -> proto::transport::tcp::TcpSettings {
        proto::transport::tcp::TcpSettings {
            keep_alive: self.keep_alive,
            idle_timeout: self.idle_timeout,
            ..Default::default()
        }
    }

    pub(crate) fn settings(&self) -> proto::transport::quic::QuicSettings {
        proto::transport::quic::QuicSettings {
            keep_alive: self.keep_alive,
            idle_timeout: self.idle_timeout,
            congestion: self.congestion,
            ..proto::transport::quic::QuicSettings::agent()
        }
    }
}

/// One `[[tunnel]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Name, unique in this file (`cam`, `ssh`).
    pub name: String,
    /// `http`, `tcp` or `udp`.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The local service, `host:port`. The only place this tunnel's traffic may go.
    pub target: String,
    /// Public port on the relay (tcp/udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// Public hostname (http; default `NAME.DOMAIN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Send a PROXY protocol header to the target so it sees the visitor's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// tcp: the relay terminates TLS on `remote_port` with the certificate of `hostname`
    /// (default `NAME.DOMAIN`); the target gets plain bytes.
    #[serde(default)]
    pub tls: bool,
    /// http: the relay adds `X-Forwarded-*`, `X-Real-IP` and `Forwarded` (default true).
    /// Visitor-sent ones are removed either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_headers: Option<bool>,
    /// http: `preserve` (the public hostname, default), `target` (this tunnel's `target`) or a
    /// literal `Host` value for the recorder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// http: rewrite `Location`, `Content-Location` and `Refresh` URLs pointing at the target
    /// to the public https URL (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_redirects: Option<bool>,
    /// http: the target speaks HTTPS; the agent wraps its connection to it in TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tls: Option<bool>,
    /// http with `target_tls`: verify the target's certificate against the web PKI roots
    /// (default true). `false` accepts any certificate (a self-signed recorder on the LAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tls_verify: Option<bool>,
    /// http with `target_tls`: TLS server name sent to and verified for the target (default:
    /// the host part of `target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_sni: Option<String>,
}

impl TunnelConfig {
    /// A tunnel with every optional key unset.
    pub fn new(name: &str, kind: Kind, target: &str) -> Self {
        TunnelConfig {
            name: name.into(),
            kind,
            target: target.into(),
            remote_port: None,
            hostname: None,
            proxy_protocol: None,
            tls: false,
            forwarded_headers: None,
            host_header: None,
            rewrite_redirects: None,
            target_tls: None,
            target_tls_verify: None,
            target_sni: None,
        }
    }

    /// What the relay needs to know about an http tunnel (`None` for tcp/udp).
    pub fn http_options(&self) -> Option<proto::HttpOptions> {
        if self.kind != Kind::Http {
            return None;
        }
        let host_header = match self.host_header.as_deref() {
            None | Some("preserve") => None,
            Some("target") => Some(self.target.clone()),
            Some(literal) => Some(literal.to_string()),
        };
        Some(proto::HttpOptions {
            forwarded_headers: self.forwarded_headers.unwrap_or(true),
            host_header,
            rewrite_redirects: self.rewrite_redirects.unwrap_or(true),
            target: self.target.clone(),
            target_tls: self.target_tls.unwrap_or(false),
        })
    }

    /// Keys set on this tunnel that only http tunnels have.
    fn http_only_keys(&self) -> Vec<&'static str> {
        [
            ("forwarded_headers", self.forwarded_headers.is_some()),
            ("host_header", self.host_header.is_some()),
            ("rewrite_redirects", self.rewrite_redirects.is_some()),
            ("target_tls", self.target_tls.is_some()),
            ("target_tls_verify", self.target_tls_verify.is_some()),
            ("target_sni", self.target_sni.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

/// Tunnel type in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// HTTP site.
    Http,
    /// Raw TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl From<Kind> for TunnelKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Http => TunnelKind::Http,
            Kind::Tcp => TunnelKind::Tcp,
            Kind::Udp => TunnelKind::Udp,
        }
    }
}

/// PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Binary version 2.
    V2,
}

impl AgentConfig {
    /// Parse TOML text. The error keeps its span so the caller can name file, line and key.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks serde cannot express; `Err` names the key.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |key: String, msg: &str| Err(AgentError::Config(format!("{key}: {msg}")));
        if split_host_port(&self.relay).is_none() {
            return bad(
                "relay".into(),
                "expected HOST:PORT, e.g. relay.example.com:443",
            );
        }
        if self.token.is_some() == self.token_file.is_some() {
            return bad("token".into(), "set exactly one of token and token_file");
        }
        if self.fingerprint.is_some() && self.ca_file.is_some() {
            return bad("fingerprint".into(), "set fingerprint or ca_file, not both");
        }
        if let Some(fp) = &self.fingerprint {
            if parse_fingerprint(fp).is_none() {
                return bad(
                    "fingerprint".into(),
                    "expected sha256: followed by 64 hex digits (colons allowed)",
                );
            }
        }
        if let Some(h) = &self.relay_https {
            if split_host_port(h).is_none() {
                return bad(
                    "relay_https".into(),
                    "expected HOST:PORT, e.g. relay.example.com:443",
                );
            }
        }
        if self.quic_probe_interval < Duration::from_millis(100) {
            return bad("quic_probe_interval".into(), "must be at least 100ms");
        }
        if self.quic.keep_alive >= self.quic.idle_timeout {
            return bad(
                "quic.keep_alive".into(),
                "must be shorter than quic.idle_timeout",
            );
        }
        if self.tunnels.is_empty() {
            return bad(
                "tunnel".into(),
                "no tunnels configured: add at least one [[tunnel]]",
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tunnels.iter().enumerate() {
            let key = |k: &str| format!("tunnel[{i}].{k} (`{}`)", t.name);
            if t.name.is_empty()
                || !t
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return bad(key("name"), "use lowercase letters, digits and dashes");
            }
            if !names.insert(&t.name) {
                return bad(key("name"), "duplicate tunnel name");
            }
            if split_host_port(&t.target).is_none() {
                return bad(key("target"), "expected HOST:PORT, e.g. 192.168.1.50:80");
            }
            match t.kind {
                Kind::Tcp | Kind::Udp if t.remote_port.unwrap_or(0) == 0 => {
                    return bad(key("remote_port"), "tcp and udp tunnels need a remote_port");
                }
                Kind::Http if t.remote_port.is_some() => {
                    return bad(
                        key("remote_port"),
                        "http tunnels are routed by hostname, not port",
                    );
                }
                _ => {}
            }
            if t.hostname.is_some() && !(t.kind == Kind::Http || t.tls) {
                return bad(
                    key("hostname"),
                    "only http tunnels and tcp tunnels with tls = true have a hostname",
                );
            }
            if t.proxy_protocol.is_some() && t.kind == Kind::Http {
                return bad(
                    key("proxy_protocol"),
                    "http tunnels give the visitor's address in X-Forwarded-For and Forwarded; \
                     PROXY protocol is for tcp and udp tunnels",
                );
            }
            if t.tls && t.kind != Kind::Tcp {
                return bad(
                    key("tls"),
                    "only tcp tunnels terminate TLS at the relay (http tunnels always do)",
                );
            }
            if let (false, Some(k)) = (t.kind == Kind::Http, t.http_only_keys().first()) {
                return bad(
                    key(k),
                    "only http tunnels have this option (a tcp tunnel carries bytes as they are)",
                );
            }
            if t.target_tls != Some(true) {
                if t.target_tls_verify.is_some() {
                    return bad(key("target_tls_verify"), "needs target_tls = true");
                }
                if t.target_sni.is_some() {
                    return bad(key("target_sni"), "needs target_tls = true");
                }
            }
            if let Some(h) = &t.host_header {
                if h.is_empty()
                    || !h
                        .chars()
                        .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '@' | ',' | '"'))
                {
                    return bad(
                        key("host_header"),
                        "expected preserve, target, or a host[:port] like 192.168.1.50",
                    );
                }
            }
            if let Some(sni) = &t.target_sni {
                if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                    return bad(key("target_sni"), "not a DNS name or IP address");
                }
            }
        }
        Ok(())
    }
}

/// Split `host:port` (IPv6 as `[::1]:443`).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some((a.ip().to_string(), a.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    if host.is_empty() || host.contains(':') || host.contains('[') {
        return None;
    }
    Some((host.to_string(), port))
}

/// Parse `sha256:AB:CD…` or `sha256:abcd…` into 32 bytes.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s
        .strip_prefix("sha256:")?
        .chars()
        .filter(|&c| c != ':')
        .collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a.b:443"), Some(("a.b".into(), 443)));
        assert_eq!(split_host_port("[::1]:4443"), Some(("::1".into(), 4443)));
        assert_eq!(split_host_port("a.b"), None);
        assert_eq!(split_host_port("a.b:0"), None);
        assert_eq!(split_host_port("::1:80"), None);
    }

    fn parse(tunnel: &str) -> Result<(), AgentError> {
        AgentConfig::from_toml(&format!(
            "relay = \"r.example.com:443\"\ntoken = \"t\"\n[[tunnel]]\n{tunnel}"
        ))
        .unwrap()
        .validate()
    }

    #[test]
    fn http_options_only_on_http_tunnels() {
        let http = "name = \"cam\"\ntype = \"http\"\ntarget = \"192.168.1.50:443\"\n";
        parse(&format!(
            "{http}forwarded_headers = false\nhost_header = \"target\"\nrewrite_redirects = false\n\
             target_tls = true\ntarget_tls_verify = false\ntarget_sni = \"nvr.lan\""
        ))
        .unwrap();
        let tcp = "name = \"ssh\"\ntype = \"tcp\"\ntarget = \"127.0.0.1:22\"\nremote_port = 2222\n";
        for k in [
            "forwarded_headers = true",
            "target_tls = true",
            "host_header = \"x\"",
        ] {
            let e = parse(&format!("{tcp}{k}")).unwrap_err().to_string();
            assert!(e.contains("only http tunnels"), "{k}: {e}");
        }
        let e = parse(&format!("{http}target_tls_verify = false"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs target_tls = true"), "{e}");
        let e = parse(&format!("{http}host_header = \"a b\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_header"), "{e}");
    }

    #[test]
    fn host_header_choices() {
        let mut t = TunnelConfig::new("cam", Kind::Http, "192.168.1.50:80");
        assert_eq!(t.http_options().unwrap().host_header, None);
        t.host_header = Some("target".into());
        assert_eq!(
            t.http_options().unwrap().host_header.as_deref(),
            Some("192.168.1.50:80")
        );
        t.host_header = Some("nvr.lan".into());
        assert_eq!(
            t.http_options().unwrap().host_header.as_deref(),
            Some("nvr.lan")
        );
        t.kind = Kind::Tcp;
        assert_eq!(t.http_options(), None);
    }

    #[test]
    fn transport_choices() {
        let base = "relay = \"r.example.com:443\"\ntoken = \"t\"\n";
        let tunnel = "[[tunnel]]\nname = \"cam\"\ntype = \"http\"\ntarget = \"192.168.1.50:80\"\n";
        for t in ["auto", "quic", "tcp"] {
            let c =
                AgentConfig::from_toml(&format!("{base}transport = \"{t}\"\n{tunnel}")).unwrap();
            c.validate().unwrap();
        }
        let c = AgentConfig::from_toml(&format!("{base}{tunnel}")).unwrap();
        assert_eq!(c.transport, TransportChoice::Auto);
        assert_eq!(c.quic_probe_interval, Duration::from_secs(300));
        assert_eq!(c.relay_https, None);
        let c = AgentConfig::from_toml(&format!("{base}relay_https = \"r.example.com\"\n{tunnel}"))
            .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("relay_https"));
        assert!(AgentConfig::from_toml(&format!("{base}transport = \"udp\"\n{tunnel}")).is_err());
    }

    #[test]
    fn fingerprints() {
        let fp = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_fingerprint(&fp), Some([0xab; 32]));
        let colons = format!("sha256:{}", vec!["AB"; 32].join(":"));
        assert_eq!(parse_fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(parse_fingerprint("ab"), None);
        assert_eq!(parse_fingerprint("sha256:zz"), None);
    }
}
