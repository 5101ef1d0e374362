//! Following SendGrid's asynchronous contact import jobs.
//!
//! `PUT /v3/marketing/contacts` answers `202 {"job_id"}`: "the contacts are queued for
//! processing" (OAS `UpdateContact`). Whether they were stored is only known from
//! `GET /v3/marketing/contacts/imports/{id}` (OAS `GetImportContact`): `pending` ("not
//! started"), `completed` ("finished without any errors"), `errored` ("finished with some
//! errors") or `failed` ("finished with all errors, or the job was entirely unprocessable"),
//! with `results.{requested,created,updated,errored}_count` and `errors_url`.
//!
//! Per record:
//! * `completed` → ok.
//! * `failed` → rejected, naming the job and its errors file.
//! * `errored` → SendGrid does not say which contacts failed except in the errors file, whose
//!   host and format are not documented. So each contact is looked up by email
//!   (`POST /v3/marketing/contacts/search/emails`): one stored as sent (or updated since the
//!   job started) is ok, one that is not is rejected; a contact without an email cannot be
//!   looked up and is retried (the upsert is idempotent; one that keeps failing ends as a dead
//!   letter with the job's message).
//! * still `pending` when the call's wait is over → retried later, never claimed ok: an
//!   upsert sent again is harmless, an ok for a contact SendGrid then refused would be lost for
//!   good (syncs only resend what changed).

use std::time::Duration;

use switchyard_sdk::http::Request;
use switchyard_sdk::serde_json::{json, Value};
use switchyard_sdk::{time, CallError, RecordResult, Retry};

use crate::{whole_request_failure, Api, Config, MAX_LOOKUP_EMAILS, PENDING_RETRY_MS};

/// One accepted upsert request: its job and the contacts it carried (record index, contact).
pub struct Submitted {
    pub job: String,
    pub contacts: Vec<(usize, Value)>,
}

/// What one import-job status answer says about its contacts.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Not finished.
    Pending,
    /// Every contact stored.
    Done,
    /// Finished, some (`all == false`) or all contacts refused.
    Failed {
        all: bool,
        errored: u64,
        requested: u64,
        errors_url: Option<String>,
        started_at: Option<String>,
    },
}

/// Reads a `GET /v3/marketing/contacts/imports/{id}` body for a job of `sent` contacts.
pub fn job_state(body: &Value, sent: usize) -> JobState {
    let results = body.get("results");
    let count = |name: &str| {
        results
            .and_then(|r| r.get(name))
            .and_then(Value::as_f64)
            .map(|n| n as u64)
            .unwrap_or(0)
    };
    let requested = match count("requested_count") {
        0 => sent as u64,
        n => n,
    };
    let errored = count("errored_count");
    let failed = |all| JobState::Failed {
        all,
        errored,
        requested,
        errors_url: results
            .and_then(|r| r.get("errors_url"))
            .and_then(Value::as_str)
            .map(str::to_string),
        started_at: body
            .get("started_at")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    match body.get("status").and_then(Value::as_str) {
        Some("completed") => JobState::Done,
        Some("errored") => failed(false),
        Some("failed") => failed(true),
        // SendGrid fills the counts before it flips the status (a live recording showed
        // `pending` with `created_count` equal to `requested_count`): all stored, none errored.
        _ if errored == 0
            && requested == sent as u64
            && count("created_count") + count("updated_count") == requested =>
        {
            JobState::Done
        }
        _ => JobState::Pending,
    }
}

/// Waits before each poll: short first (small jobs), then every 5 s.
pub fn poll_delays() -> impl Iterator<Item = Duration> {
    [500u64, 1_000, 2_000, 4_000]
        .into_iter()
        .chain(std::iter::repeat(5_000))
        .map(Duration::from_millis)
}

fn pause(delay: Duration) {
    #[cfg(target_arch = "wasm32")]
    switchyard_sdk::bindings::wasi::clocks::monotonic_clock::subscribe_duration(
        u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
    )
    .block();
    #[cfg(not(target_arch = "wasm32"))]
    let _ = delay;
}

/// Polls every submitted job until it finishes or `deadline` (time since the epoch) passes,
/// and sets the result of each contact.
pub fn follow(
    api: &Api,
    config: &Config,
    mut pending: Vec<Submitted>,
    deadline: Duration,
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    let mut delays = poll_delays();
    while !pending.is_empty() {
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        if time::now() + delay > deadline {
            break;
        }
        pause(delay);
        let mut still = Vec::new();
        for job in pending {
            let url = api.url(&format!("/v3/marketing/contacts/imports/{}", job.job));
            let response = api.request(Request::get(&url)).send()?;
            if !response.is_success() {
                match whole_request_failure(&response)? {
                    // Throttled or down: ask again at the next poll.
                    Some(_) => still.push(job),
                    None => {
                        let reason = format!(
                            "SendGrid could not report import job {}: HTTP {}: {}; sending the contacts again later",
                            job.job,
                            response.status,
                            switchyard_sdk::outcome::api_message(&response.body)
                        );
                        set_all(&job, results, retry(reason, None));
                    }
                }
                continue;
            }
            let body: Value = response.json()?;
            match job_state(&body, job.contacts.len()) {
                JobState::Pending => still.push(job),
                JobState::Done => {
                    switchyard_sdk::debug!(
                        "import job {} stored {} contacts",
                        job.job,
                        job.contacts.len()
                    );
                    set_all(&job, results, RecordResult::Ok);
                }
                JobState::Failed {
                    all: true,
                    requested,
                    errors_url,
                    ..
                } => {
                    switchyard_sdk::warn!("import job {} failed", job.job);
                    let reason = format!(
                        "SendGrid's import job {} failed: none of its {requested} contacts were stored (errors file: {})",
                        job.job,
                        errors_url.as_deref().unwrap_or("none given")
                    );
                    set_all(&job, results, RecordResult::Rejected(reason));
                }
                JobState::Failed {
                    errored,
                    requested,
                    errors_url,
                    started_at,
                    ..
                } => {
                    switchyard_sdk::warn!(
                        "import job {} errored on {errored} of {requested} contacts; looking them up",
                        job.job
                    );
                    let why = format!(
                        "SendGrid's import job {} did not store this contact ({errored} of {requested} contacts errored; errors file: {})",
                        job.job,
                        errors_url.as_deref().unwrap_or("none given")
                    );
                    attribute(api, config, &job, started_at.as_deref(), &why, results)?;
                }
            }
        }
        pending = still;
    }
    for job in pending {
        switchyard_sdk::warn!(
            "import job {} still pending after {} s; its contacts will be sent again",
            job.job,
            config.import_wait_secs
        );
        let reason = format!(
            "SendGrid's import job {} was still pending after {} s; sending these contacts again later (an upsert is idempotent)",
            job.job, config.import_wait_secs
        );
        set_all(&job, results, retry(reason, Some(PENDING_RETRY_MS)));
    }
    Ok(())
}

fn retry(reason: String, after_ms: Option<u64>) -> RecordResult {
    RecordResult::Retry(Retry { reason, after_ms })
}

fn set_all(job: &Submitted, results: &mut [Option<RecordResult>], r: RecordResult) {
    for (i, _) in &job.contacts {
        results[*i] = Some(r.clone());
    }
}

/// For a job that errored on some contacts: looks each one up by email and sets ok for those
/// stored, rejected (`why`) for the others, retry for those without an email.
fn attribute(
    api: &Api,
    config: &Config,
    job: &Submitted,
    started_at: Option<&str>,
    why: &str,
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    let mut by_email: Vec<(String, usize, &Value)> = Vec::new();
    for (i, contact) in &job.contacts {
        match contact.get("email").and_then(Value::as_str) {
            Some(email) => by_email.push((email.to_lowercase(), *i, contact)),
            None => {
                results[*i] = Some(retry(
                    format!(
                        "{why}; this contact has no email to look it up by, so it is sent again"
                    ),
                    None,
                ))
            }
        }
    }
    let started_ms = started_at.and_then(time::parse_ms);
    for chunk in by_email.chunks(MAX_LOOKUP_EMAILS) {
        let emails: Vec<&str> = chunk.iter().map(|(e, _, _)| e.as_str()).collect();
        let response = api
            .request(
                Request::post(&api.url("/v3/marketing/contacts/search/emails"))
                    .json(&json!({ "emails": emails })),
            )
            .send()?;
        let found = if response.status == 404 {
            Value::Null
        } else if response.is_success() {
            response.json::<Value>()?
        } else {
            let shared = whole_request_failure(&response)?.unwrap_or_else(|| {
                retry(
                    format!(
                        "{why}; looking it up failed (HTTP {}), so it is sent again",
                        response.status
                    ),
                    None,
                )
            });
            for (_, i, _) in chunk {
                results[*i] = Some(shared.clone());
            }
            continue;
        };
        for (email, i, sent) in chunk {
            let stored = found
                .get("result")
                .and_then(|r| r.get(email.as_str()))
                .and_then(|e| e.get("contact"))
                // The lookup also matches alternate_emails: only this contact's own counts.
                .filter(|c| {
                    c.get("email")
                        .and_then(Value::as_str)
                        .is_some_and(|e| e.eq_ignore_ascii_case(email))
                });
            let ok = stored.is_some_and(|c| {
                touched_since(c, started_ms) || stored_as_sent(sent, c, &config.list_ids)
            });
            results[*i] = Some(if ok {
                RecordResult::Ok
            } else {
                RecordResult::Rejected(why.to_string())
            });
        }
    }
    Ok(())
}

/// Whether the contact was created or updated at or after the job started.
fn touched_since(contact: &Value, started_ms: Option<i64>) -> bool {
    let Some(started) = started_ms else {
        return false;
    };
    ["updated_at", "created_at"].iter().any(|k| {
        contact
            .get(*k)
            .and_then(Value::as_str)
            .and_then(time::parse_ms)
            .is_some_and(|t| t >= started)
    })
}

/// Whether the stored contact holds every value the upsert sent and is on every list (an
/// upsert that changed nothing may leave `updated_at` alone).
pub fn stored_as_sent(sent: &Value, stored: &Value, list_ids: &[String]) -> bool {
    let Some(sent) = sent.as_object() else {
        return false;
    };
    let same = |a: &Value, b: Option<&Value>| match (a, b) {
        (Value::String(x), Some(Value::String(y))) => x.eq_ignore_ascii_case(y),
        (Value::Number(x), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (Value::Number(x), Some(Value::String(y))) => y.parse::<f64>().ok() == x.as_f64(),
        (x, y) => Some(x) == y,
    };
    let fields_match = sent.iter().all(|(k, v)| match k.as_str() {
        "custom_fields" => v.as_object().is_some_and(|cf| {
            cf.iter()
                .all(|(id, x)| same(x, stored.get("custom_fields").and_then(|c| c.get(id))))
        }),
        "alternate_emails" => v.as_array().is_some_and(|want| {
            let have = stored.get("alternate_emails").and_then(Value::as_array);
            want.iter()
                .all(|w| have.is_some_and(|h| h.iter().any(|x| same(w, Some(x)))))
        }),
        _ => same(v, stored.get(k)),
    });
    let lists = stored.get("list_ids").and_then(Value::as_array);
    fields_match
        && list_ids
            .iter()
            .all(|l| lists.is_some_and(|ls| ls.iter().any(|x| x == l.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_follow_the_documented_statuses() {
        let pending = json!({"id": "j", "status": "pending", "job_type": "upsert_contacts",
                             "results": {"requested_count": 2}, "started_at": "2026-07-15T16:19:27Z"});
        assert_eq!(job_state(&pending, 2), JobState::Pending);
        // Counts complete before the status flips (live recording, 2026-07-15).
        let counted =
            json!({"status": "pending", "results": {"requested_count": 1, "created_count": 1}});
        assert_eq!(job_state(&counted, 1), JobState::Done);
        assert_eq!(
            job_state(&json!({"status": "completed", "results": {}}), 3),
            JobState::Done
        );
        let errored = json!({"status": "errored", "started_at": "2026-07-15T16:19:27Z",
            "results": {"requested_count": 3, "created_count": 2, "errored_count": 1, "errors_url": "https://x/e.csv"}});
        assert_eq!(
            job_state(&errored, 3),
            JobState::Failed {
                all: false,
                errored: 1,
                requested: 3,
                errors_url: Some("https://x/e.csv".into()),
                started_at: Some("2026-07-15T16:19:27Z".into())
            }
        );
        assert!(matches!(
            job_state(
                &json!({"status": "failed", "results": {"errored_count": 3}}),
                3
            ),
            JobState::Failed {
                all: true,
                requested: 3,
                ..
            }
        ));
        // Nothing to go by: still waiting, never "stored".
        assert_eq!(job_state(&json!({}), 1), JobState::Pending);
    }

    #[test]
    fn polls_start_short_and_settle_at_five_seconds() {
        let d: Vec<u64> = poll_delays()
            .take(6)
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(d, vec![500, 1_000, 2_000, 4_000, 5_000, 5_000]);
    }

    #[test]
    fn a_contact_counts_as_stored_when_it_holds_what_was_sent() {
        let lists = vec!["l1".to_string()];
        let sent = json!({"email": "Ada@Example.com", "first_name": "Ada", "postal_code": "94107",
                          "custom_fields": {"e1_T": "pro", "e2_N": 12.5}, "alternate_emails": ["a@b.co"]});
        let stored = json!({"email": "ada@example.com", "first_name": "Ada", "postal_code": "94107",
            "custom_fields": {"e1_T": "pro", "e2_N": 12.5, "w9": "x"}, "alternate_emails": ["a@b.co"],
            "list_ids": ["l1", "l2"], "updated_at": "2020-01-01T00:00:00Z"});
        assert!(stored_as_sent(&sent, &stored, &lists));
        let mut other = stored.clone();
        other["first_name"] = json!("Grace");
        assert!(!stored_as_sent(&sent, &other, &lists));
        let mut off_list = stored.clone();
        off_list["list_ids"] = json!(["l2"]);
        assert!(!stored_as_sent(&sent, &off_list, &lists));
        assert!(touched_since(
            &json!({"updated_at": "2026-07-15T16:20:00Z"}),
            time::parse_ms("2026-07-15T16:19:27Z")
        ));
        assert!(!touched_since(
            &stored,
            time::parse_ms("2026-07-15T16:19:27Z")
        ));
    }
}
