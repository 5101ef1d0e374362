//! Prometheus metrics, served at `/metrics` (prometheus-client, the Prometheus project's own
//! Rust client: typed metric families and the OpenMetrics text format).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The hub's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub events_accepted: Counter,
    pub events_rejected: Family<ReasonLabels, Counter>,
    pub commit_seconds: Histogram,
    pub queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        let requests = Family::<RequestLabels, Counter>::default();
        let events_accepted = Counter::default();
        let events_rejected = Family::<ReasonLabels, Counter>::default();
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let queue_depth = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "events_accepted",
            "Tracking messages stored",
            events_accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Tracking messages refused, by reason",
            events_rejected.clone(),
        );
        registry.register(
            "ingest_commit_seconds",
            "Time to commit one group of messages",
            commit_seconds.clone(),
        );
        registry.register(
            "ingest_queue_depth",
            "Messages waiting for the writer",
            queue_depth.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            events_accepted,
            events_rejected,
            commit_seconds,
            queue_depth,
        }
    }

    pub fn reject(&self, reason: &str, n: u64) {
        self.events_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
