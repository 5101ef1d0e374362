//! A stateful fake destination for the `json-post-destination` plugin's wire format: `POST
//! {"action": "upsert"|"delete"|"track", "records": [{"key", "fields"}]}`, at most 500 records,
//! each `fields` an object. It keeps the records it holds by key, every event it was sent, and
//! counts payloads re-sent after it acknowledged them. Faults can be injected: a share of
//! requests answered 429 + Retry-After, 500, or left hanging past the plugin's timeout, with
//! nothing applied, or one request applied but its answer held. Every request can be slowed
//! down.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

#[derive(Default, Debug)]
pub struct SinkState {
    /// key → fields currently held.
    pub records: HashMap<String, Value>,
    /// track deliveries (key, fields) in arrival order.
    pub events: Vec<(String, Value)>,
    /// Every applied (action, key, fields), in order.
    pub log: Vec<(String, String, Value)>,
    /// (action, key, fields) the sink acknowledged.
    pub acked: HashSet<(String, String, String)>,
    /// Payloads that arrived again after being acknowledged.
    pub resent_after_ack: Vec<(String, String)>,
    /// Requests seen, and by outcome.
    pub requests: u64,
    pub throttled: u64,
    pub failed: u64,
    pub hung: u64,
    pub bad_requests: Vec<String>,
    /// Keys of the request held by `Faults::hold_after` (empty until one is).
    pub held: Vec<String>,
}

/// Fault injection: shares of requests (0.0..1.0) and a per-request delay.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub throttle: f64,
    pub error: f64,
    pub hang: f64,
    pub delay: Duration,
    /// How long a hanging request hangs (and a held one is held).
    pub hang_for: Duration,
    /// The first request that arrives once at least this many events were applied is applied
    /// and acknowledged here, but its answer is held for `hang_for`: a batch the destination
    /// took whose answer the sender never got (a crash now must re-send it, and only it).
    pub hold_after: Option<usize>,
}

#[derive(Clone)]
pub struct JsonSink {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<SinkState>>,
    pub faults: Arc<Mutex<Faults>>,
    rng: Arc<Mutex<u64>>,
}

impl JsonSink {
    /// Starts the sink on its own runtime thread.
    pub fn start() -> JsonSink {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let sink = JsonSink {
                    addr: "127.0.0.1:0".parse().unwrap(),
                    state: Arc::default(),
                    faults: Arc::default(),
                    rng: Arc::new(Mutex::new(0x9E37_79B9_7F4A_7C15)),
                };
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let sink = JsonSink {
                    addr: listener.local_addr().unwrap(),
                    ..sink
                };
                let app = Router::new()
                    .route("/in", post(receive))
                    .with_state(sink.clone());
                tx.send(sink).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        rx.recv().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}/in", self.addr)
    }

    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap() = f;
    }

    pub fn records(&self) -> HashMap<String, Value> {
        self.state.lock().unwrap().records.clone()
    }

    pub fn with<T>(&self, f: impl FnOnce(&SinkState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    fn roll(&self) -> f64 {
        // xorshift: deterministic per sink, no extra dependency.
        let mut s = self.rng.lock().unwrap();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn bad(state: &Mutex<SinkState>, msg: &str) -> Response {
    state.lock().unwrap().bad_requests.push(msg.to_string());
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": msg}))).into_response()
}

async fn receive(State(sink): State<JsonSink>, body: Bytes) -> Response {
    let faults = *sink.faults.lock().unwrap();
    sink.state.lock().unwrap().requests += 1;
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    // Validate the whole request before anything is applied.
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return bad(&sink.state, "body is not JSON");
    };
    let Some(action) = body
        .get("action")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return bad(&sink.state, "action is missing");
    };
    if !matches!(action.as_str(), "upsert" | "delete" | "track") {
        return bad(&sink.state, "action must be upsert, delete or track");
    }
    let Some(records) = body.get("records").and_then(Value::as_array) else {
        return bad(&sink.state, "records must be an array");
    };
    if records.len() > 500 {
        return bad(&sink.state, "at most 500 records per request");
    }
    let mut parsed = Vec::new();
    for r in records {
        match (r.get("key").and_then(Value::as_str), r.get("fields")) {
            (Some(k), Some(f @ Value::Object(_))) => parsed.push((k.to_string(), f.clone())),
            _ => {
                return bad(
                    &sink.state,
                    "each record needs a string key and object fields",
                )
            }
        }
    }
    let roll = sink.roll();
    if roll < faults.throttle {
        sink.state.lock().unwrap().throttled += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            axum::Json(json!({"error": "rate limited"})),
        )
            .into_response();
    }
    if roll < faults.throttle + faults.error {
        sink.state.lock().unwrap().failed += 1;
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "internal error"})),
        )
            .into_response();
    }
    if roll < faults.throttle + faults.error + faults.hang {
        sink.state.lock().unwrap().hung += 1;
        tokio::time::sleep(faults.hang_for).await;
        return (StatusCode::GATEWAY_TIMEOUT, "too late").into_response();
    }
    let hold = apply(&sink, &faults, &action, parsed);
    if hold {
        tokio::time::sleep(faults.hang_for).await;
    }
    axum::Json(json!({"ok": true})).into_response()
}

/// Applies a request's records; whether its answer is to be held (`Faults::hold_after`).
fn apply(sink: &JsonSink, faults: &Faults, action: &str, parsed: Vec<(String, Value)>) -> bool {
    let action = action.to_string();
    let mut st = sink.state.lock().unwrap();
    let hold = faults
        .hold_after
        .is_some_and(|n| st.held.is_empty() && st.events.len() >= n);
    if hold {
        st.held = parsed.iter().map(|(k, _)| k.clone()).collect();
    }
    for (key, fields) in parsed {
        let id = (action.clone(), key.clone(), fields.to_string());
        if st.acked.contains(&id) {
            st.resent_after_ack.push((action.clone(), key.clone()));
        }
        match action.as_str() {
            "upsert" => {
                st.records.insert(key.clone(), fields.clone());
            }
            "delete" => {
                st.records.remove(&key);
                // A later re-add of the same payload is a new fact, not a resend.
                st.acked.retain(|(a, k, _)| !(a == "upsert" && *k == key));
            }
            _ => st.events.push((key.clone(), fields.clone())),
        }
        st.log.push((action.clone(), key.clone(), fields));
        st.acked.insert(id);
    }
    hold
}
