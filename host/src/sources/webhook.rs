//! Push sources: a delivery handed to the source plugin's `webhook` export (which verifies the
//! sender), then stored once per delivery id through the same apply as pull pages.
//!
//! The HTTP route (`app::http::sources`) only turns a request into a [`WebhookRequest`] and the
//! outcome into an answer; what counts as applied, duplicate or refused is decided here.

use tracing::Instrument as _;

use super::{Applied, SourceEngine};
use crate::runtime::bindings::{StreamRecord, WebhookError, WebhookRequest};
use crate::store::now_millis;

/// A delivery the plugin verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Stored: what applying its records did.
    Applied {
        delivery_id: Option<String>,
        applied: Applied,
    },
    /// This source already applied a delivery with this id; nothing was stored again.
    Duplicate { delivery_id: Option<String> },
}

/// Why a delivery was not stored. Each variant is one answer of the webhook route; callers match
/// on them, never on the message.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No source of that name has a plugin.
    #[error("no source `{0}` with a plugin is configured")]
    UnknownSource(String),
    /// The source's plugin cannot be instantiated now (not installed, bad config, secrets).
    #[error("source `{name}` cannot take webhooks now: {reason}")]
    Unavailable { name: String, reason: String },
    /// The plugin found the signature missing or wrong, or the timestamp stale.
    #[error("{0}")]
    Unauthorized(String),
    /// The plugin found a payload the sender does not document.
    #[error("{0}")]
    BadRequest(String),
    /// The plugin trapped or broke a limit.
    #[error("{0}")]
    Plugin(String),
    /// Storing the verified delivery failed; the sender may retry.
    #[error("storing the delivery failed; see the hub's log (the sender may retry)")]
    Store(#[source] anyhow::Error),
}

impl Refused {
    /// The word the `switchyard_source_webhooks_total` metric and the log use.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::UnknownSource(_) => "unknown",
            Refused::Unauthorized(_) => "unauthorized",
            Refused::BadRequest(_) => "bad_request",
            Refused::Unavailable { .. } | Refused::Plugin(_) | Refused::Store(_) => "error",
        }
    }
}

impl SourceEngine {
    /// Verifies a pushed request with the source's plugin and stores its records once per
    /// delivery id (in one transaction with the claim of that id). Counts the outcome in the
    /// metrics and logs it.
    pub async fn webhook(
        &self,
        source: &str,
        request: WebhookRequest,
    ) -> Result<Delivered, Refused> {
        let span = tracing::info_span!("webhook", source = %source, bytes = request.body.len());
        let outcome = self.receive(source, request).instrument(span.clone()).await;
        let label = match &outcome {
            Ok(Delivered::Applied { .. }) => "applied",
            Ok(Delivered::Duplicate { .. }) => "duplicate",
            Err(e) => e.label(),
        };
        if let Some(m) = &self.metrics {
            m.sources.webhook(source, label);
        }
        let _guard = span.enter();
        match &outcome {
            Err(Refused::Unauthorized(reason) | Refused::BadRequest(reason)) => {
                tracing::warn!(outcome = label, "webhook refused: {reason}")
            }
            Err(Refused::Store(e)) => {
                tracing::error!(outcome = label, "storing a webhook delivery: {e:#}")
            }
            Err(e @ (Refused::Unavailable { .. } | Refused::Plugin(_))) => {
                tracing::error!(outcome = label, "webhook: {e}")
            }
            _ => tracing::info!(outcome = label, "webhook handled"),
        }
        outcome
    }

    async fn receive(&self, source: &str, request: WebhookRequest) -> Result<Delivered, Refused> {
        if self.source(source).is_err() {
            return Err(Refused::UnknownSource(source.to_string()));
        }
        let instance = self
            .instance(source)
            .await
            .map_err(|e| Refused::Unavailable {
                name: source.to_string(),
                reason: format!("{e:#}"),
            })?;
        let delivery = match instance.webhook(&request).await {
            Ok(Ok(d)) => d,
            Ok(Err(WebhookError::Unauthorized(reason))) => {
                return Err(Refused::Unauthorized(reason))
            }
            Ok(Err(WebhookError::BadRequest(reason))) => return Err(Refused::BadRequest(reason)),
            Err(e) => return Err(Refused::Plugin(e.to_string())),
        };
        let stored = self
            .store_delivery(source, delivery.delivery_id.as_deref(), &delivery.records)
            .await
            .map_err(Refused::Store)?;
        Ok(match stored {
            Some(applied) => {
                if let Some(m) = &self.metrics {
                    let read = delivery.records.len() as u64;
                    m.sources
                        .page(source, "webhook", read, applied.records, applied.events);
                }
                Delivered::Applied {
                    delivery_id: delivery.delivery_id,
                    applied,
                }
            }
            None => Delivered::Duplicate {
                delivery_id: delivery.delivery_id,
            },
        })
    }

    /// Stores a verified delivery's records in one transaction with its delivery id; None when
    /// the id was already applied.
    async fn store_delivery(
        &self,
        source: &str,
        delivery_id: Option<&str>,
        records: &[StreamRecord],
    ) -> anyhow::Result<Option<Applied>> {
        let mut tx = self.store.begin().await?;
        // A write first: it takes SQLite's write lock before any read, and claims the delivery
        // id (a concurrent duplicate waits here, then finds it taken).
        let id = match delivery_id {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => format!("anonymous:{}", uuid::Uuid::new_v4()),
        };
        let claimed = crate::store::sources::claim_delivery(
            &mut tx,
            source,
            &id,
            records.len() as i64,
            now_millis(),
        )
        .await?;
        if !claimed {
            tx.rollback().await?;
            return Ok(None);
        }
        let list: Vec<(&str, &crate::runtime::bindings::SourceRecord)> = records
            .iter()
            .map(|r| (r.stream.as_str(), &r.record))
            .collect();
        let applied = self.apply(&mut tx, source, &list).await?;
        tx.commit().await?;
        if applied.events > 0 {
            // Event streams forward from what is committed: wake them now.
            self.store.events_committed();
        }
        Ok(Some(applied))
    }
}
