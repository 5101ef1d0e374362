//! What the two run engines, syncs and sources, share: a run's status, the typed errors of
//! starting one, the lease that keeps one run of a thing at a time, and the scheduler loop.

pub mod lease;
pub mod scheduler;

use serde::Serialize;

/// Where a run stands, as its history row records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Going (or its process died and no later run has looked yet).
    Running,
    Succeeded,
    /// A sync run whose records partly went to the dead-letter store.
    CompletedWithErrors,
    Failed,
    /// A sync run the removal guardrail stopped before it sent anything.
    Blocked,
    /// A sync dry run: planned, nothing sent.
    Planned,
    /// Its process died during it; the next run resumed.
    Interrupted,
    /// A source run that reached `max_pages_per_run` or `max_run_time`, its pages committed.
    Capped,
}

impl RunStatus {
    /// The word stored in the history and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::CompletedWithErrors => "completed_with_errors",
            RunStatus::Failed => "failed",
            RunStatus::Blocked => "blocked",
            RunStatus::Planned => "planned",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Capped => "capped",
        }
    }

    /// Reads a stored status; a word this release does not know reads as `failed`.
    pub fn parse(text: &str) -> RunStatus {
        match text {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "completed_with_errors" => RunStatus::CompletedWithErrors,
            "blocked" => RunStatus::Blocked,
            "planned" => RunStatus::Planned,
            "interrupted" => RunStatus::Interrupted,
            "capped" => RunStatus::Capped,
            _ => RunStatus::Failed,
        }
    }

    /// A run cut short (still `running` in the history, or `interrupted`): the next one
    /// should start at once and resume.
    pub fn unfinished(self) -> bool {
        matches!(self, RunStatus::Running | RunStatus::Interrupted)
    }

    /// An outcome an operator should hear about from a scheduled run.
    pub fn needs_attention(self) -> bool {
        matches!(
            self,
            RunStatus::Failed | RunStatus::Blocked | RunStatus::Capped
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RunStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Why a run did not start. Engines return these inside their `anyhow::Error`s; the faces
/// match on them (`downcast_ref`) to answer 404 or 409.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No sync or source of that name (or, for sources, one without a plugin); the message
    /// lists what is defined.
    #[error("{0}")]
    NotFound(String),
    /// Another run holds the lease; `run_id` is that run when the lease row names it.
    #[error("{noun} `{name}` is already running (another run holds its lease); try again when it finishes")]
    AlreadyRunning {
        noun: &'static str,
        name: String,
        run_id: Option<String>,
    },
}

impl RunError {
    /// The run error inside an engine's error, if that is what it is.
    pub fn of(e: &anyhow::Error) -> Option<&RunError> {
        e.downcast_ref::<RunError>()
    }
}

/// RFC 3339 (milliseconds, UTC) of store milliseconds, as run histories show times.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_as_written() {
        for s in [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::CompletedWithErrors,
            RunStatus::Failed,
            RunStatus::Blocked,
            RunStatus::Planned,
            RunStatus::Interrupted,
            RunStatus::Capped,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!(RunStatus::Interrupted.unfinished());
        assert!(!RunStatus::Capped.unfinished());
    }
}
