//! A tap on ingestion: every tracking message as it is committed, and every one refused with its
//! reason, broadcast to whoever listens (the console's live events page, Segment's Debugger for
//! this hub). Nothing is kept: a listener sees what arrives while it listens. Sending costs one
//! check when nobody listens, and a slow listener skips what it missed (it is told how many),
//! so the writer never waits on it.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

/// Messages a listener may fall behind by before it skips.
const BACKLOG: usize = 4096;

/// Most bytes of a message's JSON a listener gets (the tracking API allows 32 KB per message).
pub const MAX_BODY: usize = 32 * 1024;

/// One message seen by ingestion.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    /// Unix milliseconds when it was committed or refused.
    pub at: i64,
    /// The source whose write key it came with, when known.
    pub source: Option<String>,
    /// `track`, `identify`, ...; `unknown` when it could not be read.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event or page name.
    pub name: Option<String>,
    pub message_id: Option<String>,
    /// `accepted` or `refused`.
    pub outcome: &'static str,
    /// Why it was refused (the metric's reason, e.g. `invalid`) and the answer's message.
    pub reason: Option<String>,
    pub error: Option<String>,
    /// The message as stored (accepted) or as sent (refused), at most [`MAX_BODY`] bytes.
    pub body: String,
}

/// The broadcasting end; cheap to clone.
#[derive(Clone)]
pub struct Tap(broadcast::Sender<Arc<Observed>>);

impl Default for Tap {
    fn default() -> Self {
        Tap(broadcast::channel(BACKLOG).0)
    }
}

impl Tap {
    /// A receiver of what arrives from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Observed>> {
        self.0.subscribe()
    }

    /// Whether anyone listens: callers skip building [`Observed`] values otherwise.
    pub fn active(&self) -> bool {
        self.0.receiver_count() > 0
    }

    pub fn send(&self, o: Observed) {
        // No receiver is not an error: the message is simply not observed.
        let _ = self.0.send(Arc::new(o));
    }

    /// A refused request: `body` as sent (cut to [`MAX_BODY`]), one entry for the request.
    pub fn refused(&self, source: Option<&str>, reason: &str, error: &str, body: &[u8]) {
        if !self.active() {
            return;
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_BODY)]).into_owned();
        let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        self.send(Observed {
            at: crate::store::now_millis(),
            source: source.map(str::to_string),
            kind: field("type").unwrap_or_else(|| "unknown".into()),
            name: field("event").or_else(|| field("name")),
            message_id: field("messageId"),
            outcome: "refused",
            reason: Some(reason.to_string()),
            error: Some(error.to_string()),
            body: text,
        });
    }
}

/// Cuts `s` to at most [`MAX_BODY`] bytes on a character boundary.
pub fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_BODY);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_get_refusals_with_the_fields_read_from_the_body() {
        let tap = Tap::default();
        tap.refused(Some("web"), "invalid", "nobody listens", b"{}");
        let mut rx = tap.subscribe();
        assert!(tap.active());
        tap.refused(
            Some("web"),
            "invalid",
            "missing userId or anonymousId",
            br#"{"type":"track","event":"Clicked","messageId":"m-1"}"#,
        );
        let o = rx.recv().await.unwrap();
        assert_eq!(o.kind, "track");
        assert_eq!(o.name.as_deref(), Some("Clicked"));
        assert_eq!(o.message_id.as_deref(), Some("m-1"));
        assert_eq!(o.reason.as_deref(), Some("invalid"));
        assert!(
            rx.try_recv().is_err(),
            "what was sent before subscribing is not seen"
        );
    }

    #[test]
    fn cut_keeps_characters_whole() {
        let s = "é".repeat(MAX_BODY);
        let c = cut(&s);
        assert!(c.len() <= MAX_BODY && c.chars().all(|ch| ch == 'é'));
    }
}
