//! Prometheus metrics, served at `/metrics` (prometheus-client, the Prometheus project's own
//! Rust client: typed metric families and the OpenMetrics text format). A leaf: plain counters
//! and labels, fed plain numbers; it knows no engine's types.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub sync: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncRecordLabels {
    pub sync: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncNameLabels {
    pub sync: String,
}

/// What a sync run has handed to its destination so far, by outcome: running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records handed to the plugin, retries included.
    pub sent: u64,
    pub succeeded: u64,
    /// Retry results (a record retried twice counts twice).
    pub retried: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
}

/// The hub's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub events_accepted: Counter,
    pub events_rejected: Family<ReasonLabels, Counter>,
    /// Messages acknowledged but dropped: they carry an identifier an erasure suppressed.
    pub events_suppressed: Counter,
    pub commit_seconds: Histogram,
    pub queue_depth: Gauge,
    pub sync_runs: Family<SyncLabels, Counter>,
    pub sync_records: Family<SyncRecordLabels, Counter>,
    pub sync_run_seconds: Family<SyncNameLabels, Histogram>,
    /// Records and events a sync held back for lack of consent ("withheld: no consent").
    pub sync_withheld: Family<SyncNameLabels, Counter>,
    /// Events the retention purge deleted (`[hub] event_retention`).
    pub events_purged: Counter,
    /// Source runs, pages, records and webhooks (see [`SourceMetrics`]).
    pub sources: SourceMetrics,
    /// Event streams: messages in, out, dropped by reason, lag (see [`StreamMetrics`]).
    pub streams: StreamMetrics,
    /// The last hour of ingestion, minute by minute, for the console's overview (Prometheus
    /// counters only go up; a rate over the last hour needs the history).
    pub recent: Recent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamDropLabels {
    pub stream: String,
    pub reason: String,
}

/// Metrics of event streams, per stream: messages read from its sources, acknowledged by
/// the destination, dropped (by reason: `filter`, `integrations`, `transform`, `dead_letter`,
/// ...), retries, and how far behind the newest committed message it is.
#[derive(Clone)]
pub struct StreamMetrics {
    pub events_in: Family<StreamLabels, Counter>,
    pub events_out: Family<StreamLabels, Counter>,
    pub events_dropped: Family<StreamDropLabels, Counter>,
    pub retried: Family<StreamLabels, Counter>,
    pub lag_seconds: Family<StreamLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// From the message's arrival at the hub to the destination's answer.
    pub delivery_seconds: Family<StreamLabels, Histogram>,
    /// 1 while the streams' threads run at normal priority because idle priority starved
    /// them (`streams::background`).
    pub threads_raised: Gauge,
}

impl StreamMetrics {
    fn register(registry: &mut Registry) -> StreamMetrics {
        let m = StreamMetrics {
            events_in: Family::default(),
            events_out: Family::default(),
            events_dropped: Family::default(),
            retried: Family::default(),
            lag_seconds: Family::default(),
            delivery_seconds: Family::<StreamLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            threads_raised: Gauge::default(),
        };
        registry.register(
            "stream_events_in",
            "Messages an event stream read from its sources",
            m.events_in.clone(),
        );
        registry.register(
            "stream_events_out",
            "Messages an event stream's destination acknowledged",
            m.events_out.clone(),
        );
        registry.register(
            "stream_events_dropped",
            "Messages an event stream did not forward, by reason",
            m.events_dropped.clone(),
        );
        registry.register(
            "stream_retries",
            "Retry results an event stream's destination gave",
            m.retried.clone(),
        );
        registry.register(
            "stream_lag_seconds",
            "Age of the oldest committed message an event stream has not finished",
            m.lag_seconds.clone(),
        );
        registry.register(
            "stream_delivery_seconds",
            "From a message's arrival at the hub to its destination's answer",
            m.delivery_seconds.clone(),
        );
        registry.register(
            "stream_threads_raised",
            "1 while the event streams' threads run at normal priority because the cores stayed busy or a stream fell behind",
            m.threads_raised.clone(),
        );
        m
    }

    fn labels(stream: &str) -> StreamLabels {
        StreamLabels {
            stream: stream.to_string(),
        }
    }

    /// A finished batch's counts.
    pub fn batch(&self, stream: &str, read: u64, out: u64, retried: u64, dropped: &[(&str, u64)]) {
        let l = Self::labels(stream);
        self.events_in.get_or_create(&l).inc_by(read);
        self.events_out.get_or_create(&l).inc_by(out);
        self.retried.get_or_create(&l).inc_by(retried);
        for (reason, n) in dropped.iter().filter(|(_, n)| *n > 0) {
            self.events_dropped
                .get_or_create(&StreamDropLabels {
                    stream: stream.to_string(),
                    reason: reason.to_string(),
                })
                .inc_by(*n);
        }
    }

    pub fn lag(&self, stream: &str, seconds: f64) {
        self.lag_seconds
            .get_or_create(&Self::labels(stream))
            .set(seconds);
    }

    pub fn delivered_after(&self, stream: &str, seconds: f64) {
        self.delivery_seconds
            .get_or_create(&Self::labels(stream))
            .observe(seconds);
    }
}

/// One minute of ingestion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Minute {
    /// Unix minute (milliseconds / 60,000).
    pub minute: i64,
    pub accepted: u64,
    pub rejected: BTreeMap<String, u64>,
    pub commits: u64,
    pub commit_seconds: f64,
    pub commit_max_seconds: f64,
}

/// The last [`Recent::MINUTES`] minutes of ingestion; cheap to clone. Updated once per commit
/// and per refused request, never per message.
#[derive(Clone, Default)]
pub struct Recent(Arc<Mutex<VecDeque<Minute>>>);

impl Recent {
    pub const MINUTES: i64 = 60;

    fn with_minute(&self, now_ms: i64, f: impl FnOnce(&mut Minute)) {
        let minute = now_ms.div_euclid(60_000);
        let Ok(mut q) = self.0.lock() else { return };
        if q.back().map(|m| m.minute) != Some(minute) {
            q.push_back(Minute {
                minute,
                ..Minute::default()
            });
        }
        while q
            .front()
            .is_some_and(|m| m.minute <= minute - Self::MINUTES)
        {
            q.pop_front();
        }
        if let Some(m) = q.back_mut() {
            f(m);
        }
    }

    pub fn accepted(&self, now_ms: i64, n: u64) {
        self.with_minute(now_ms, |m| m.accepted += n);
    }

    pub fn rejected(&self, now_ms: i64, reason: &str, n: u64) {
        self.with_minute(now_ms, |m| {
            *m.rejected.entry(reason.to_string()).or_default() += n
        });
    }

    pub fn committed(&self, now_ms: i64, seconds: f64) {
        self.with_minute(now_ms, |m| {
            m.commits += 1;
            m.commit_seconds += seconds;
            m.commit_max_seconds = m.commit_max_seconds.max(seconds);
        });
    }

    /// The minutes of the hour before `now_ms` that saw anything, oldest first.
    pub fn last_hour(&self, now_ms: i64) -> Vec<Minute> {
        let since = now_ms.div_euclid(60_000) - Self::MINUTES;
        self.0
            .lock()
            .map(|q| q.iter().filter(|m| m.minute > since).cloned().collect())
            .unwrap_or_default()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceStreamLabels {
    pub source: String,
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceNameLabels {
    pub source: String,
}

/// Metrics of source plugins: what runs read and stored, how often they waited, and what
/// webhooks were accepted or refused.
#[derive(Clone)]
pub struct SourceMetrics {
    pub runs: Family<SourceLabels, Counter>,
    pub run_seconds: Family<SourceNameLabels, Histogram>,
    pub pages: Family<SourceStreamLabels, Counter>,
    pub records_read: Family<SourceStreamLabels, Counter>,
    pub records_stored: Family<SourceStreamLabels, Counter>,
    pub events_stored: Family<SourceStreamLabels, Counter>,
    pub retries: Family<SourceStreamLabels, Counter>,
    /// Webhook deliveries by outcome (`applied`, `duplicate`, `unauthorized`, `bad_request`, `error`).
    pub webhooks: Family<SourceLabels, Counter>,
}

impl SourceMetrics {
    fn register(registry: &mut Registry) -> SourceMetrics {
        let m = SourceMetrics {
            runs: Family::default(),
            run_seconds: Family::<SourceNameLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 16))
            }),
            pages: Family::default(),
            records_read: Family::default(),
            records_stored: Family::default(),
            events_stored: Family::default(),
            retries: Family::default(),
            webhooks: Family::default(),
        };
        registry.register(
            "source_runs",
            "Source runs by source and final status",
            m.runs.clone(),
        );
        registry.register(
            "source_run_seconds",
            "Duration of source runs",
            m.run_seconds.clone(),
        );
        registry.register(
            "source_pages",
            "Pages committed by source runs",
            m.pages.clone(),
        );
        registry.register(
            "source_records_read",
            "Records source plugins returned",
            m.records_read.clone(),
        );
        registry.register(
            "source_records_stored",
            "Source records resolved to a profile and stored",
            m.records_stored.clone(),
        );
        registry.register(
            "source_events_stored",
            "Events stored from source records (first time only)",
            m.events_stored.clone(),
        );
        registry.register(
            "source_read_retries",
            "Pages read again after a transient error (429, 5xx)",
            m.retries.clone(),
        );
        registry.register(
            "source_webhooks",
            "Webhook deliveries by source and outcome",
            m.webhooks.clone(),
        );
        m
    }

    /// A finished run.
    pub fn run(&self, source: &str, status: &str, seconds: f64) {
        self.runs
            .get_or_create(&SourceLabels {
                source: source.into(),
                status: status.into(),
            })
            .inc();
        self.run_seconds
            .get_or_create(&SourceNameLabels {
                source: source.into(),
            })
            .observe(seconds);
    }

    /// A committed page (or webhook delivery) of `read` records, of which `stored` were resolved
    /// to a profile and stored, with `events` events stored for the first time.
    pub fn page(&self, source: &str, stream: &str, read: u64, stored: u64, events: u64) {
        let l = SourceStreamLabels {
            source: source.into(),
            stream: stream.into(),
        };
        self.pages.get_or_create(&l).inc();
        self.records_read.get_or_create(&l).inc_by(read);
        self.records_stored.get_or_create(&l).inc_by(stored);
        self.events_stored.get_or_create(&l).inc_by(events);
    }

    pub fn retry(&self, source: &str, stream: &str) {
        self.retries
            .get_or_create(&SourceStreamLabels {
                source: source.into(),
                stream: stream.into(),
            })
            .inc();
    }

    pub fn webhook(&self, source: &str, outcome: &str) {
        self.webhooks
            .get_or_create(&SourceLabels {
                source: source.into(),
                status: outcome.into(),
            })
            .inc();
    }
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
        let events_suppressed = Counter::default();
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
            "events_suppressed",
            "Tracking messages acknowledged but dropped because they carry an identifier a privacy erasure suppressed",
            events_suppressed.clone(),
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
        let sync_runs = Family::<SyncLabels, Counter>::default();
        let sync_records = Family::<SyncRecordLabels, Counter>::default();
        let sync_run_seconds = Family::<SyncNameLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 16))
        });
        registry.register(
            "sync_runs",
            "Sync runs by sync and final status",
            sync_runs.clone(),
        );
        registry.register(
            "sync_records",
            "Records a sync handed to its destination, by outcome (sent, succeeded, retried, rejected, dead_lettered)",
            sync_records.clone(),
        );
        registry.register(
            "sync_run_seconds",
            "Duration of sync runs",
            sync_run_seconds.clone(),
        );
        let sync_withheld = Family::<SyncNameLabels, Counter>::default();
        registry.register(
            "sync_withheld",
            "Records and events a sync held back because the profile lacks a consent category its destination requires",
            sync_withheld.clone(),
        );
        let events_purged = Counter::default();
        registry.register(
            "events_purged",
            "Events deleted by the retention purge ([hub] event_retention)",
            events_purged.clone(),
        );
        let sources = SourceMetrics::register(&mut registry);
        let streams = StreamMetrics::register(&mut registry);
        Metrics {
            sources,
            streams,
            sync_withheld,
            events_purged,
            sync_runs,
            sync_records,
            sync_run_seconds,
            registry: Arc::new(registry),
            requests,
            events_accepted,
            events_rejected,
            events_suppressed,
            commit_seconds,
            queue_depth,
            recent: Recent::default(),
        }
    }

    /// Tracking messages stored.
    pub fn accept(&self, n: u64) {
        self.events_accepted.inc_by(n);
        self.recent.accepted(now_ms(), n);
    }

    /// One group commit of the writer, and how long it took.
    pub fn committed(&self, seconds: f64) {
        self.commit_seconds.observe(seconds);
        self.recent.committed(now_ms(), seconds);
    }

    pub fn reject(&self, reason: &str, n: u64) {
        self.recent.rejected(now_ms(), reason, n);
        self.events_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// A finished sync run.
    /// `n` more records or events of `sync` withheld for lack of consent.
    pub fn sync_withheld(&self, sync: &str, n: u64) {
        if n > 0 {
            self.sync_withheld
                .get_or_create(&SyncNameLabels {
                    sync: sync.to_string(),
                })
                .inc_by(n);
        }
    }

    pub fn sync_run(&self, sync: &str, status: &str, seconds: f64) {
        self.sync_runs
            .get_or_create(&SyncLabels {
                sync: sync.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.sync_run_seconds
            .get_or_create(&SyncNameLabels {
                sync: sync.to_string(),
            })
            .observe(seconds);
    }

    /// Adds the change in a run's counters since the last call.
    pub fn sync_records(&self, sync: &str, now: RecordCounts, before: RecordCounts) {
        for (outcome, a, b) in [
            ("sent", now.sent, before.sent),
            ("succeeded", now.succeeded, before.succeeded),
            ("retried", now.retried, before.retried),
            ("rejected", now.rejected, before.rejected),
            ("dead_lettered", now.dead_lettered, before.dead_lettered),
        ] {
            if a > b {
                self.sync_records
                    .get_or_create(&SyncRecordLabels {
                        sync: sync.to_string(),
                        outcome: outcome.to_string(),
                    })
                    .inc_by(a - b);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_an_hour_of_minutes() {
        let r = Recent::default();
        let t0 = 1_000 * 60_000;
        r.accepted(t0, 5);
        r.accepted(t0 + 30_000, 2);
        r.rejected(t0 + 59_999, "invalid", 1);
        r.committed(t0, 0.002);
        r.committed(t0 + 1, 0.004);
        r.accepted(t0 + 60_000, 7);
        let hour = r.last_hour(t0 + 60_000);
        assert_eq!(hour.len(), 2);
        assert_eq!(
            (
                hour[0].accepted,
                hour[0].rejected["invalid"],
                hour[0].commits
            ),
            (7, 1, 2)
        );
        assert!((hour[0].commit_max_seconds - 0.004).abs() < 1e-12);
        assert_eq!(hour[1].accepted, 7);
        // An hour later the first minute has gone.
        r.accepted(t0 + 60 * 60_000, 1);
        let hour = r.last_hour(t0 + 60 * 60_000);
        assert_eq!(
            hour.iter().map(|m| m.minute).collect::<Vec<_>>(),
            [1001, 1060]
        );
    }
}
