//! Prometheus metrics of the relay (prometheus-client). Labels stay bounded: hostnames only
//! when routed (others count as `other`), status codes, fixed reasons; never visitor addresses.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `result` of an agent handshake: `ok` or the rejection reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: String,
}

/// An HTTP response of the edge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    /// Routed hostname, or `other`.
    pub(crate) host: String,
    pub(crate) code: u16,
}

/// Which listener a visitor connection came in on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabel {
    pub(crate) listener: &'static str,
}

/// Bytes carried for visitors, by direction (`up` = visitor to recorder).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabel {
    pub(crate) direction: &'static str,
}

/// `type` label of the tunnels gauge (`http`, `tcp`, `udp`).
pub(crate) type TunnelType = Vec<(&'static str, &'static str)>;

/// A kind of live visitor connection (`http`, `websocket`, `tcp`, `udp`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

/// Every metric, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) agents_connected: Gauge,
    pub(crate) http_routes: Gauge,
    pub(crate) agent_handshakes: Family<ResultLabel, Counter>,
    pub(crate) http_responses: Family<HttpLabels, Counter>,
    pub(crate) http_response_seconds: Histogram,
    pub(crate) visitor_connections: Family<ListenerLabel, Counter>,
    pub(crate) tcp_bytes: Family<DirectionLabel, Counter>,
    pub(crate) agent_streams_opened: Counter,
    pub(crate) acme_orders: Family<ResultLabel, Counter>,
    pub(crate) login_failures: Counter,
    pub(crate) bans_total: Counter,
    pub(crate) bans_active: Gauge,
    pub(crate) tunnels: Family<TunnelType, Gauge>,
    pub(crate) http_bytes: Family<DirectionLabel, Counter>,
    /// `http_bytes` up and down, looked up once (no map lookup per request).
    http_bytes_up: Counter,
    http_bytes_down: Counter,
    pub(crate) visitor_connections_active: Family<KindLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("periscope");
        let m = Metrics {
            agents_connected: Gauge::default(),
            http_routes: Gauge::default(),
            agent_handshakes: Family::default(),
            http_responses: Family::default(),
            // 1 ms … ~16 s.
            http_response_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
            visitor_connections: Family::default(),
            tcp_bytes: Family::default(),
            agent_streams_opened: Counter::default(),
            acme_orders: Family::default(),
            login_failures: Counter::default(),
            bans_total: Counter::default(),
            bans_active: Gauge::default(),
            tunnels: Family::default(),
            http_bytes: Family::default(),
            http_bytes_up: Counter::default(),
            http_bytes_down: Counter::default(),
            visitor_connections_active: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "agents_connected",
            "Agents with a live session",
            m.agents_connected.clone(),
        );
        registry.register(
            "http_routes",
            "Hostnames routed to a connected agent",
            m.http_routes.clone(),
        );
        registry.register(
            "agent_handshakes",
            "Agent handshakes by result (ok or the rejection reason)",
            m.agent_handshakes.clone(),
        );
        registry.register(
            "http_responses",
            "Responses of the HTTPS edge by hostname and status",
            m.http_responses.clone(),
        );
        registry.register(
            "http_response_seconds",
            "Time from a visitor's request to the response head",
            m.http_response_seconds.clone(),
        );
        registry.register(
            "visitor_connections",
            "Visitor connections accepted, by listener",
            m.visitor_connections.clone(),
        );
        registry.register(
            "tcp_tunnel_bytes",
            "Bytes carried by tcp tunnels, by direction",
            m.tcp_bytes.clone(),
        );
        registry.register(
            "agent_streams_opened",
            "Streams opened to agents (requests, connections)",
            m.agent_streams_opened.clone(),
        );
        registry.register(
            "acme_orders",
            "ACME certificate orders by result",
            m.acme_orders.clone(),
        );
        registry.register(
            "login_failures",
            "Failed visitor logins and invalid share links",
            m.login_failures.clone(),
        );
        registry.register(
            "bans",
            "Addresses banned (after failed logins or through the admin API)",
            m.bans_total.clone(),
        );
        registry.register("bans_active", "Addresses banned now", m.bans_active.clone());
        registry.register(
            "tunnels",
            "Tunnels of connected agents, by type",
            m.tunnels.clone(),
        );
        registry.register(
            "http_bytes",
            "Bytes carried by the HTTPS edge for visitors (WebSockets and long responses as they flow, other bodies by their length), by direction",
            m.http_bytes.clone(),
        );
        registry.register(
            "visitor_connections_active",
            "Live visitor connections listed by /api/connections, by kind",
            m.visitor_connections_active.clone(),
        );
        let http_bytes_up = m
            .http_bytes
            .get_or_create(&DirectionLabel { direction: "up" })
            .clone();
        let http_bytes_down = m
            .http_bytes
            .get_or_create(&DirectionLabel { direction: "down" })
            .clone();
        Metrics {
            registry,
            http_bytes_up,
            http_bytes_down,
            ..m
        }
    }
}

/// The udp tunnels' own counters (kept in `udp_tunnel`), read at each scrape.
#[derive(Debug)]
struct UdpCollector(crate::UdpMetrics);

impl prometheus_client::collector::Collector for UdpCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::{
            encoding::EncodeMetric,
            metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
        };
        type Get = fn(&crate::UdpStatsSnapshot) -> u64;
        let rows = self.0.all();
        let counters: [(&str, &str, Get); 5] = [
            (
                "udp_flows_opened",
                "UDP flows opened, by agent/tunnel",
                |s| s.flows_opened,
            ),
            ("udp_packets_up", "UDP packets visitor → recorder", |s| {
                s.packets_up
            }),
            (
                "udp_packets_down",
                "UDP packets recorder → visitor",
                |s| s.packets_down,
            ),
            (
                "udp_bytes_up",
                "UDP payload bytes visitor → recorder",
                |s| s.bytes_up,
            ),
            (
                "udp_bytes_down",
                "UDP payload bytes recorder → visitor",
                |s| s.bytes_down,
            ),
        ];
        for (name, help, get) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (tunnel, s) in &rows {
                let labels = [("tunnel", tunnel.as_str())];
                ConstCounter::new(get(s)).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "udp_flows_active",
            "UDP flows open now, by agent/tunnel",
            None,
            MetricType::Gauge,
        )?;
        for (tunnel, s) in &rows {
            let labels = [("tunnel", tunnel.as_str())];
            ConstGauge::new(i64::try_from(s.flows_active).unwrap_or(i64::MAX))
                .encode(m.encode_family(&labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "udp_max_payload_bytes",
            "Largest UDP payload the agent's path carries now (0 before the first packet)",
            None,
            MetricType::Gauge,
        )?;
        for (tunnel, s) in &rows {
            let labels = [("tunnel", tunnel.as_str())];
            ConstGauge::new(i64::try_from(s.max_payload).unwrap_or(i64::MAX))
                .encode(m.encode_family(&labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "udp_dropped",
            "UDP packets dropped, by agent/tunnel and reason",
            None,
            MetricType::Counter,
        )?;
        for (tunnel, s) in &rows {
            for (reason, n) in [
                ("too_large", s.drop_too_large),
                ("rate", s.drop_rate),
                ("flow_limit", s.drop_flow_limit),
                ("access", s.drop_access),
                ("agent_offline", s.drop_agent_offline),
                ("flow_refused", s.drop_flow_refused),
                ("queue_full", s.drop_queue_full),
                ("visitor_send", s.drop_visitor_send),
            ] {
                let labels = [("tunnel", tunnel.as_str()), ("reason", reason)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Export the udp tunnels' counters too.
    pub(crate) fn with_udp(mut self, udp: crate::UdpMetrics) -> Self {
        self.registry
            .register_collector(Box::new(UdpCollector(udp)));
        self
    }

    /// Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The counter of HTTP bytes from visitors.
    pub(crate) fn http_bytes_up(&self) -> &Counter {
        &self.http_bytes_up
    }

    /// The counter of HTTP bytes to visitors.
    pub(crate) fn http_bytes_down(&self) -> &Counter {
        &self.http_bytes_down
    }

    pub(crate) fn handshake(&self, result: impl Into<String>) {
        self.agent_handshakes
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}
