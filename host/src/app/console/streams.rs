//! Event streams: each stream's counters (in, out, dropped by reason), position, lag and last
//! error; a stream's page follows what it forwards and drops live (its `tail`, as server-sent
//! events the live-events script shows) and lists its dead letters, which an operator replays
//! through the stream as it is now ([`crate::app::operate::replay_stream`]).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::syncs::CsrfForm;
use super::{ui, ConsoleState, Session};
use crate::app::http::Operator;
use crate::app::mask::mask_json;
use crate::config::access::Role;
use crate::streams::StreamStatus;

/// Dead letters a stream's page lists.
const LETTERS: i64 = 200;

fn dropped(s: &StreamStatus) -> i64 {
    s.counters
        .iter()
        .filter(|(k, _)| k.starts_with("dropped:"))
        .map(|(_, v)| v)
        .sum()
}

fn counter(s: &StreamStatus, name: &str) -> i64 {
    s.counters.get(name).copied().unwrap_or(0)
}

fn streams_table(all: &[StreamStatus]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr {
                th scope="col" { "Stream" } th scope="col" { "To" } th.num scope="col" { "In" }
                th.num scope="col" { "Out" } th.num scope="col" { "Dropped" } th.num scope="col" { "Behind" }
                th.num scope="col" { "Lag" } th scope="col" { "Status" }
            } }
            tbody { @for s in all { tr {
                td { a href={"/console/streams/" (s.name)} { (s.name) } }
                td { (s.to) }
                td.num { (ui::count(counter(s, "in"))) }
                td.num { (ui::count(counter(s, "out"))) }
                td.num { (ui::count(dropped(s))) }
                td.num { (ui::count(s.behind)) }
                td.num { (format!("{:.1} s", s.lag_seconds)) }
                td { @match &s.error { Some(e) => { (ui::status("failed")) " " span.error-text { (e) } } None => { (ui::status("running")) } } }
            } } }
        } }
    }
}

pub async fn list(session: Session, State(s): State<ConsoleState>) -> Response {
    let all = match s.streams.list().await {
        Ok(a) => a,
        Err(e) => return ui::failure("the streams", e),
    };
    let body = html! {
        header.page { h1 { "Streams" } p.sub { "Every message a source commits, forwarded to a destination as it arrives: filtered, transformed, mapped." } }
        section.panel {
            @if all.is_empty() { p.hint { "No [[streams]] in the configuration." } } @else { (streams_table(&all)) }
        }
    };
    ui::layout("Streams", &session, "/console/streams", body).into_response()
}

pub async fn page(
    session: Session,
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
) -> Response {
    let all = match s.streams.list().await {
        Ok(a) => a,
        Err(e) => return ui::failure("the streams", e),
    };
    let Some(status) = all.into_iter().find(|st| st.name == name) else {
        return ui::refusal(
            StatusCode::NOT_FOUND,
            "No such stream",
            &format!("no stream named `{name}` in the configuration ([[streams]])"),
        );
    };
    let scope = format!("stream:{name}");
    let mut letters = match s.syncs.dead_letters(Some(&scope), LETTERS).await {
        Ok(d) => d,
        Err(e) => return ui::failure("the stream's dead letters", e),
    };
    let pending = if (letters.len() as i64) < LETTERS {
        letters.len() as i64
    } else {
        match crate::store::syncs::pending_dead_letters(&s.store, &scope).await {
            Ok(n) => n,
            Err(e) => return ui::failure("the stream's dead letters", e),
        }
    };
    let pii = session.may(Role::Admin);
    if !pii {
        for l in &mut letters {
            mask_json(&mut l.fields);
        }
    }
    let reasons: Vec<(&str, i64)> = status
        .counters
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("dropped:").map(|r| (r, *v)))
        .collect();
    let body = html! {
        header.page {
            p.crumbs { a href="/console/streams" { "Streams" } " / " }
            h1 { (name) }
            p.sub { (if status.from.is_empty() { "every source".to_string() } else { status.from.join(", ") }) " → " (status.to) }
        }
        @if let Some(e) = &status.error {
            section.panel.warn role="alert" { h2 { "Stopped" } p.error-text { (e) } p.hint { "The stream starts again from its last committed message by itself." } }
        }
        section.panel {
            h2 { "Counts" }
            (streams_table(std::slice::from_ref(&status)))
            @if !reasons.is_empty() {
                h3 { "Dropped, by reason" }
                table.compact {
                    tbody { @for (reason, n) in &reasons { tr { th scope="row" { (reason) } td.num { (ui::count(*n)) } } } }
                }
            }
            @if let Some(n) = status.counters.get("replayed") { p.hint { (ui::count(*n)) " dead letters replayed so far." } }
        }
        section.panel {
            h2 { "Live" }
            div.actions {
                button #live-pause type="button" aria-pressed="false" { "Pause" }
                button #live-clear type="button" { "Clear" }
            }
            p #live-status.hint role="status" { "Connecting…" }
            ol #live.events data-stream={"/console/streams/" (name) "/tail"} data-pii=(if pii { "shown" } else { "masked" })
                data-listening="Listening. Messages appear here as the stream forwards, drops or dead-letters them." {}
            noscript { p.notice { "The live view needs JavaScript (the hub's own script; nothing from elsewhere)." } }
        }
        section.panel #dead-letters {
            h2 { "Dead letters" }
            @if letters.is_empty() {
                p.hint { "None: everything this stream took was forwarded or dropped on purpose." }
            } @else {
                p {
                    (ui::count(pending)) " messages or records could not be forwarded."
                    @if pending > letters.len() as i64 { " The oldest " (ui::count(letters.len() as i64)) " are below." }
                    " A replay sends each through the stream as it is now."
                }
                @if session.may(Role::Operator) {
                    form method="post" action={"/console/streams/" (name) "/replay"} {
                        (ui::csrf(&session))
                        button.primary type="submit" { "Replay now" }
                    }
                }
                div.scroll { table {
                    thead { tr { th scope="col" { "Message" } th scope="col" { "Kind" } th.num scope="col" { "Attempts" } th scope="col" { "Error" } th scope="col" { "When" } } }
                    tbody { @for l in &letters { tr {
                        td { details.record { summary { code { (l.key) } } pre { (ui::json(&l.fields)) } } }
                        td { (if l.action == "transform" { "transform failed" } else { "refused record" }) }
                        td.num { (l.attempts) }
                        td.error-text { (l.error) }
                        td.time { (ui::rfc3339(&l.at)) }
                    } } }
                } }
            }
        }
    };
    ui::layout(&name, &session, "/console/streams", body).into_response()
}

/// `GET /console/streams/{name}/tail`: what the stream forwards and drops, one SSE `message`
/// each in the live-events page's shape (`outcome` forwarded, dropped or dead_lettered), a
/// `skipped` event when this listener fell behind.
pub async fn tail(
    session: Session,
    State(s): State<ConsoleState>,
    Path(name): Path<String>,
) -> Response {
    let Some(rx) = s.streams.tail(&name) else {
        return ui::refusal(StatusCode::NOT_FOUND, "No such stream", &name);
    };
    let pii = session.may(Role::Admin);
    let events = futures::stream::unfold(rx, move |mut rx| async move {
        match rx.recv().await {
            Ok(line) => Some((Ok::<_, Infallible>(event_of(&line, pii)), rx)),
            Err(RecvError::Lagged(n)) => Some((
                Ok(Event::default().event("skipped").data(n.to_string())),
                rx,
            )),
            Err(RecvError::Closed) => None,
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// A tail line as the live-events script shows a message: its type, name, source and id, the
/// outcome with its reason, and as body the forwarded fields (masked below `admin`).
fn event_of(line: &str, pii: bool) -> Event {
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let mut body = v.get("fields").cloned().unwrap_or(Value::Null);
    if !pii {
        mask_json(&mut body);
    }
    let at = v
        .get("received_at")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(crate::store::now_millis);
    let out = serde_json::json!({
        "at": at,
        "source": v.get("source"),
        "type": v.get("type").cloned().unwrap_or(Value::String("message".into())),
        "name": v.get("event"),
        "message_id": v.get("message_id"),
        "outcome": v.get("outcome"),
        "reason": v.get("reason"),
        "error": v.get("detail"),
        "body": body,
    });
    Event::default().event("message").data(out.to_string())
}

pub async fn replay(
    session: Session<Operator>,
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = session.check_form(&s, &headers, &f.csrf) {
        return r;
    }
    // The same as the admin API's replay: to the end, audited.
    match crate::app::operate::replay_stream(&s.streams, &s.access, &session.who, &name).await {
        Ok(_) => Redirect::to(&format!("/console/streams/{name}")).into_response(),
        Err(e) => ui::run_refusal("The replay did not finish", &e),
    }
}
