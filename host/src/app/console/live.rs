//! Live events: every tracking message as it is committed, and every one refused with its
//! reason, streamed to the page as server-sent events (Segment's Debugger for this hub). The
//! stream is filtered on the hub by source, type and identifier; personal data is masked in
//! it for roles below `admin`. Nothing is stored for it: the page sees what arrives while open.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::Stream;
use maud::html;
use tokio::sync::broadcast::error::RecvError;

use super::{ui, ConsoleState, Session};
use crate::app::mask::mask_json;
use crate::config::access::Role;
use crate::ingest::tap::Observed;

#[derive(serde::Deserialize, Default, Clone)]
pub struct Filter {
    source: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    identifier: Option<String>,
}

impl Filter {
    fn clean(mut self) -> Filter {
        for f in [&mut self.source, &mut self.kind, &mut self.identifier] {
            if f.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *f = None;
            }
        }
        self
    }

    /// Whether `o` passes: same source and type when given, and the identifier's value (the
    /// part after `kind:` if written so) somewhere in the message.
    fn passes(&self, o: &Observed) -> bool {
        if self
            .source
            .as_deref()
            .is_some_and(|s| o.source.as_deref() != Some(s))
        {
            return false;
        }
        if self.kind.as_deref().is_some_and(|k| o.kind != k) {
            return false;
        }
        if let Some(id) = self.identifier.as_deref() {
            let value = id.split_once(':').map_or(id, |(_, v)| v);
            return o.body.contains(value);
        }
        true
    }
}

pub async fn page(
    session: Session,
    State(s): State<ConsoleState>,
    Query(f): Query<Filter>,
) -> Response {
    let f = f.clean();
    let config = s.sources.config();
    let types = ["identify", "track", "page", "screen", "group", "alias"];
    let body = html! {
        header.page {
            h1 { "Live events" }
            p.sub { "Messages as the tracking API accepts or refuses them. Send one from your site or app and watch it arrive." }
        }
        form.filters #live-filter method="get" action="/console/live" {
            div {
                label for="source" { "Source" }
                select #source name="source" {
                    option value="" { "Any source" }
                    @for name in config.sources.keys() {
                        option value=(name) selected[f.source.as_deref() == Some(name.as_str())] { (name) }
                    }
                }
            }
            div {
                label for="type" { "Type" }
                select #type name="type" {
                    option value="" { "Any type" }
                    @for t in types { option value=(t) selected[f.kind.as_deref() == Some(t)] { (t) } }
                }
            }
            div.grow {
                label for="identifier" { "Identifier" }
                input #identifier type="search" name="identifier" value=[f.identifier.as_deref()] placeholder="user_id:42 or ada@example.com";
            }
            div.end {
                button.primary type="submit" { "Filter" }
                button #live-pause type="button" aria-pressed="false" { "Pause" }
                button #live-clear type="button" { "Clear" }
            }
        }
        section.panel {
            p #live-status.hint role="status" { "Connecting…" }
            ol #live.events data-stream="/console/live/stream" data-pii=(if session.may(Role::Admin) { "shown" } else { "masked" }) {}
            noscript { p.notice { "The live stream needs JavaScript (the hub's own script; nothing from elsewhere)." } }
        }
    };
    ui::layout("Live events", &session, "/console/live", body).into_response()
}

/// `GET /console/live/stream?source=&type=&identifier=`: one SSE `message` per observed
/// message (its JSON as [`Observed`]), a `skipped` event with a count when this listener fell
/// behind, and a keep-alive comment every 15 s.
pub async fn stream(
    session: Session,
    State(s): State<ConsoleState>,
    Query(f): Query<Filter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let f = f.clean();
    let pii = session.may(Role::Admin);
    let rx = s.tap.subscribe();
    let events = futures::stream::unfold(rx, move |mut rx| {
        let f = f.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(o) => {
                        if !f.passes(&o) {
                            continue;
                        }
                        return Some((Ok(event_of(&o, pii)), rx));
                    }
                    Err(RecvError::Lagged(n)) => {
                        let e = Event::default().event("skipped").data(n.to_string());
                        return Some((Ok(e), rx));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn event_of(o: &Observed, pii: bool) -> Event {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    // The body travels parsed, so the page can show it expanded (and mask it here).
    let mut body: serde_json::Value =
        serde_json::from_str(&o.body).unwrap_or(serde_json::Value::String(o.body.clone()));
    if !pii {
        mask_json(&mut body);
    }
    v["body"] = body;
    Event::default().event("message").data(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(source: &str, kind: &str, body: &str) -> Observed {
        Observed {
            at: 0,
            source: Some(source.into()),
            kind: kind.into(),
            name: None,
            message_id: None,
            outcome: "accepted",
            reason: None,
            error: None,
            body: body.into(),
        }
    }

    #[test]
    fn filters_by_source_type_and_identifier() {
        let o = observed("web", "track", r#"{"userId":"u-42","event":"Clicked"}"#);
        let f = |source: &str, kind: &str, id: &str| {
            Filter {
                source: Some(source.into()),
                kind: Some(kind.into()),
                identifier: Some(id.into()),
            }
            .clean()
        };
        assert!(f("", "", "").passes(&o));
        assert!(f("web", "track", "user_id:u-42").passes(&o));
        assert!(!f("server", "", "").passes(&o));
        assert!(!f("", "identify", "").passes(&o));
        assert!(!f("", "", "u-43").passes(&o));
    }
}
