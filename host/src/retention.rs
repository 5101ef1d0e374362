//! Event retention (`[hub] event_retention = "400d"`): `serve` purges events older than that,
//! by their own timestamp, in the background. Each pass deletes in bounded batches (so the
//! tracking API's writer is never held up for long) until nothing old is left, then sleeps.
//! Profiles, traits and identifiers stay: retention bounds the event history, erasure removes a
//! person.

use std::time::Duration;

use tracing::Instrument as _;

use crate::metrics::Metrics;
use crate::store::{now_millis, retention as rows, Store};

/// Events deleted per statement.
pub const BATCH: i64 = 5_000;

/// How often a pass runs by default; `SWITCHYARD_RETENTION_EVERY_MS` overrides it (tests).
const EVERY: Duration = Duration::from_secs(600);

/// One pass: deletes, `batch` at a time, every event older than `retention`; returns how many.
pub async fn purge(
    store: &Store,
    retention: Duration,
    batch: i64,
    metrics: Option<&Metrics>,
) -> anyhow::Result<u64> {
    let cutoff = now_millis() - retention.as_millis().min(i64::MAX as u128) as i64;
    let mut total = 0;
    loop {
        let n = rows::purge_events_before(store, cutoff, batch.max(1)).await?;
        total += n;
        if let Some(m) = metrics {
            m.events_purged.inc_by(n);
        }
        if n > 0 {
            tracing::debug!(deleted = n, "retention batch");
        }
        if (n as i64) < batch.max(1) {
            break;
        }
        // Let the writer in between batches.
        tokio::task::yield_now().await;
    }
    if total > 0 {
        tracing::info!(
            deleted = total,
            cutoff,
            "events past their retention purged"
        );
    }
    Ok(total)
}

/// Runs [`purge`] now and then every pass interval, for ever (`serve` spawns it).
pub async fn run(store: Store, retention: Duration, metrics: Metrics) {
    let every = std::env::var("SWITCHYARD_RETENTION_EVERY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(EVERY);
    loop {
        let span = tracing::info_span!("retention_pass", retention_secs = retention.as_secs());
        if let Err(e) = purge(&store, retention, BATCH, Some(&metrics))
            .instrument(span)
            .await
        {
            tracing::warn!("event retention pass failed, retrying at the next one: {e:#}");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn purges_only_old_events_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let store = Store::open(&url).await.unwrap();
        let now = now_millis();
        let day = 86_400_000;
        for i in 0..7 {
            let ts = if i < 5 { now - 40 * day } else { now - day };
            crate::store::retention::insert_bare_event(&store, &format!("m{i}"), ts, now)
                .await
                .unwrap();
        }
        // Batches of 2: three statements for the five old events, none of the new ones.
        let n = purge(&store, Duration::from_secs(30 * 86_400), 2, None)
            .await
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(
            store.scalar("SELECT COUNT(*) FROM events").await.unwrap(),
            2
        );
        assert_eq!(
            purge(&store, Duration::from_secs(30 * 86_400), 2, None)
                .await
                .unwrap(),
            0
        );
    }
}
