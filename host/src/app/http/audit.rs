//! `GET /v1/audit?limit=&before=`: the audit log, newest first (`operator` and up). `before` is
//! the `id` of the last entry of the previous page.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Access, AdminAuth, ApiError, Operator};

pub fn routes(access: Access) -> Router {
    Router::new()
        .route("/v1/audit", get(list))
        .with_state(access)
}

#[derive(serde::Deserialize)]
struct Page {
    limit: Option<i64>,
    before: Option<String>,
}

async fn list(
    _: AdminAuth<Operator>,
    State(access): State<Access>,
    Query(q): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = access.audit_log(limit, q.before.as_deref()).await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(json!({ "entries": entries, "before": next })))
}
