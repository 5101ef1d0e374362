//! The event streams' admin API: `GET /v1/streams` (each stream's position, lag, counters,
//! last error) and `GET /v1/streams/{name}/tail`, what the stream forwards and drops as it
//! happens, one JSON object per line, for as long as the client stays connected (`switchyard
//! streams tail` reads it), for any role; `POST /v1/streams/{name}/replay` (`operator`) sends
//! the stream's dead letters again and answers with what it did. Tail lines carry the forwarded fields, so personal
//! data in them is masked below `admin`, as the Profiles API does.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::broadcast::error::RecvError;

use super::{Access, AdminAuth, ApiError, Operator, Viewer};
use crate::app::mask::mask_json;
use crate::streams::StreamEngine;

#[derive(Clone)]
struct StreamsState {
    engine: StreamEngine,
    access: Access,
}

impl FromRef<StreamsState> for Access {
    fn from_ref(s: &StreamsState) -> Access {
        s.access.clone()
    }
}

pub fn routes(engine: StreamEngine, access: Access) -> Router {
    Router::new()
        .route("/v1/streams", get(list))
        .route("/v1/streams/{name}/tail", get(tail))
        .route("/v1/streams/{name}/replay", post(replay))
        .with_state(StreamsState { engine, access })
}

async fn list(_: AdminAuth<Viewer>, State(s): State<StreamsState>) -> Result<Response, ApiError> {
    let streams = s.engine.list().await?;
    Ok(Json(serde_json::json!({ "data": streams })).into_response())
}

/// Replays the stream's dead letters and answers with the [`crate::streams::ReplayReport`]
/// (404 for an unknown stream, 409 while another replay of it runs).
async fn replay(
    auth: AdminAuth<Operator>,
    State(s): State<StreamsState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let report = crate::app::operate::replay_stream(&s.engine, &s.access, &auth.who, &name)
        .await
        .map_err(|e| ApiError::of_run(e, || "/v1/streams".to_string()))?;
    Ok(Json(report).into_response())
}

async fn tail(
    auth: AdminAuth<Viewer>,
    State(s): State<StreamsState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let Some(rx) = s.engine.tail(&name) else {
        return Err(ApiError::NotFound(format!(
            "no stream named `{name}` in the running configuration ([[streams]])"
        )));
    };
    let mask = !auth.who.sees_pii();
    // A first line at once, so the client knows it is connected before anything flows.
    let hello = serde_json::json!({ "tailing": name }).to_string();
    let lines = futures::stream::unfold((Some(hello), rx), move |(first, mut rx)| async move {
        if let Some(line) = first {
            return Some((Ok::<_, Infallible>(Bytes::from(line + "\n")), (None, rx)));
        }
        let line = match rx.recv().await {
            Ok(line) if mask => match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(mut v) => {
                    mask_json(&mut v);
                    format!("{v}\n")
                }
                Err(_) => format!("{line}\n"),
            },
            Ok(line) => format!("{line}\n"),
            // This watcher fell behind by more than the buffer: say so and go on.
            Err(RecvError::Lagged(n)) => format!("{{\"missed\":{n}}}\n"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(Bytes::from(line)), (None, rx)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
