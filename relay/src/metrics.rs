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
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn handshake(&self, result: impl Into<String>) {
        self.agent_handshakes
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}
