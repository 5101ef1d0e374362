//! The one error type of the admin APIs and how it answers: each variant is a status code and a
//! JSON body `{"error": ...}`. Handlers turn typed domain errors into it; nothing reads messages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::runs::RunError;

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
    /// The request's own credential (a webhook's signature) is missing, wrong or stale: 401
    /// with why.
    #[error("{0}")]
    Unauthenticated(String),
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
    /// The hub cannot serve this now (e.g. a plugin that cannot be instantiated): 503.
    #[error("{0}")]
    Unavailable(String),
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
            ApiError::Unauthorized | ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Failed(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A run engine's error: 404 for an unknown sync or source ([`RunError::NotFound`]), 409
    /// naming the run in the way for [`RunError::AlreadyRunning`] (`runs`: where to watch it),
    /// else 500 with the engine's message (it names the sync or source and what failed).
    pub fn of_run(e: anyhow::Error, runs: impl FnOnce() -> String) -> ApiError {
        let message = format!("{e:#}");
        match RunError::of(&e) {
            Some(RunError::NotFound(_)) => ApiError::NotFound(message),
            Some(RunError::AlreadyRunning { run_id, .. }) => ApiError::Conflict {
                message,
                run_id: run_id.clone(),
                runs: Some(runs()),
            },
            None => ApiError::Failed(message),
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
            ApiError::Internal(cause) => tracing::error!("API: {cause:#}"),
            ApiError::Failed(message) => tracing::error!("API: {message}"),
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

    #[tokio::test]
    async fn run_errors_answer_404_409_or_500() {
        let runs = || "/v1/syncs/crm/runs".to_string();
        let e = anyhow::Error::new(RunError::NotFound("no sync `crm`".into()));
        assert_eq!(ApiError::of_run(e, runs).status(), StatusCode::NOT_FOUND);
        let e = anyhow::Error::new(RunError::AlreadyRunning {
            noun: "sync",
            name: "crm".into(),
            run_id: Some("r7".into()),
        })
        .context("starting the run");
        let (s, b) = body_of(ApiError::of_run(e, runs)).await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(b["run_id"], "r7");
        assert_eq!(b["runs"], "/v1/syncs/crm/runs");
        assert!(
            b["error"].as_str().unwrap().contains("already running"),
            "{b}"
        );
        let e = anyhow::anyhow!("the destination refused the config");
        let (s, b) = body_of(ApiError::of_run(e, runs)).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(b["error"], "the destination refused the config");
    }
}
