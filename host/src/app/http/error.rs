//! The one error type of the admin APIs and how it answers: each variant is a status code and a
//! JSON body `{"error": ...}`. Handlers turn typed domain errors into it; nothing reads messages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Why an admin request failed; the variant decides the status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Neither `[hub] admin_token` nor `[hub.tokens.*]` is set: 403.
    #[error("the admin API is disabled: set [hub] admin_token or add [hub.tokens.NAME]")]
    AdminDisabled,
    /// No bearer token, or one the hub does not know: 401.
    #[error("missing or unknown token (Authorization: Bearer ...)")]
    Unauthorized,
    /// A known token whose role is below the one the route needs: 403.
    #[error("the token `{name}` has the role {role}; this needs {need}")]
    Forbidden {
        name: String,
        role: crate::config::access::Role,
        need: crate::config::access::Role,
    },
    /// The request itself is wrong: 400.
    #[error("{0}")]
    BadRequest(String),
    /// What the request names does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with work in progress: 409, naming the run in the way (`run_id`)
    /// and where to watch it (`runs`) when known.
    #[error("{message}")]
    Conflict {
        message: String,
        run_id: Option<String>,
        runs: Option<String>,
    },
    /// A failure whose message is safe and useful to the caller: 500 with that message.
    #[error("{0}")]
    Failed(String),
    /// Anything else: 500 with a pointer to the log, where the cause is written.
    #[error("internal error; see the hub's log")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::AdminDisabled | ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Failed(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::Internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({ "error": self.to_string() });
        match &self {
            ApiError::Internal(cause) => tracing::error!("admin API: {cause:#}"),
            ApiError::Failed(message) => tracing::error!("admin API: {message}"),
            ApiError::Conflict { run_id, runs, .. } => {
                if let Some(id) = run_id {
                    body["run_id"] = id.as_str().into();
                }
                if let Some(runs) = runs {
                    body["runs"] = runs.as_str().into();
                }
            }
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}

/// A `{"error": message}` answer with `status`, for routes not yet answering with [`ApiError`]
/// (`sync::api`, `sources::api` until they move under `app::http`).
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn variants_choose_the_status_and_body() {
        let (s, b) = body_of(ApiError::AdminDisabled).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(
            b["error"],
            "the admin API is disabled: set [hub] admin_token or add [hub.tokens.NAME]"
        );
        let (s, b) = body_of(ApiError::Internal(anyhow::anyhow!("secret detail"))).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(b["error"], "internal error; see the hub's log");
        let (s, b) = body_of(ApiError::Conflict {
            message: "busy".into(),
            run_id: Some("r1".into()),
            runs: None,
        })
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(b, serde_json::json!({"error": "busy", "run_id": "r1"}));
    }
}
