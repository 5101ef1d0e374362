//! The Google Ads API path (`api = "google_ads"`): OfflineUserDataJobService, for developer
//! tokens Google still allowlists for Customer Match.
//!
//! Each delivery is one job: `offlineUserDataJobs:create` (type `CUSTOMER_MATCH_USER_LIST`, the
//! list, consent for upserts only) → `:addOperations` (one `create` or `remove` operation per
//! record, `enablePartialFailure: true`, requests of at most 10,000 user identifiers as Google
//! recommends) → `:run`.

use switchyard_sdk::{
    debug, http::Request, info, serde_json, time, warn, CallError, Context, RecordResult, Retry,
};

use serde_json::{json, Value};

use crate::ads::{self, classify, partial_failures, Failure};
use crate::normalize::{Identifier, UploadKeyType};
use crate::{call_error, Config, Ids};

const API: &str = "https://googleads.googleapis.com";
/// Google's hard limit of user identifiers in one addOperations request.
pub const MAX_IDENTIFIERS_PER_REQUEST: usize = 100_000;
/// Identifiers per addOperations request Google recommends ("~10,000 per call"), which the
/// plugin keeps to.
pub const IDENTIFIERS_PER_REQUEST: usize = 10_000;
/// Google's limit of user identifiers in one operation.
pub const MAX_IDENTIFIERS_PER_OPERATION: usize = 20;
/// Operations per request (one per record).
pub const OPERATIONS_PER_REQUEST: usize = 10_000;
// A record has at most 3 identifiers (email, phone, address), far under both hard limits.
const _: () = assert!(
    IDENTIFIERS_PER_REQUEST <= MAX_IDENTIFIERS_PER_REQUEST && MAX_IDENTIFIERS_PER_OPERATION >= 3
);

fn headers(ctx: &Context<Config>, ids: &Ids, auth: &str, request: Request) -> Request {
    let mut r = request.header("authorization", auth).header(
        "developer-token",
        &ctx.secret_placeholder("developer_token"),
    );
    if let Some(login) = &ids.login {
        r = r.header("login-customer-id", login);
    }
    r
}

fn need_developer_token(ctx: &Context<Config>) -> Result<(), CallError> {
    if ctx.has_secret("developer_token") {
        return Ok(());
    }
    Err(CallError::InvalidConfig(
        "api = \"google_ads\" needs the developer_token secret (an allowlisted Google Ads API developer token); new integrations use the Data Manager API (api = \"data_manager\", the default), which needs none".into(),
    ))
}

/// A GAQL read of the list (proves developer token, OAuth token, account access, that the list
/// is a CRM list of the configured upload key type), then a `validateOnly` job creation (proves
/// the token may upload Customer Match data and the job settings are accepted).
pub fn check(ctx: &Context<Config>, ids: &Ids, auth: &str) -> Result<(), CallError> {
    need_developer_token(ctx)?;
    let version = &ctx.config.api_version;
    let query = format!(
        "SELECT user_list.id, user_list.name, user_list.type, user_list.crm_based_user_list.upload_key_type FROM user_list WHERE user_list.id = {}",
        ids.user_list
    );
    let url = format!(
        "{API}/{version}/customers/{}/googleAds:search",
        ids.customer
    );
    let response = headers(ctx, ids, auth, Request::post(&url))
        .json(&json!({ "query": query }))
        .send()?;
    if !response.is_success() {
        return Err(call_error(classify(&response, time::now_unix())));
    }
    let body: Value = response.json()?;
    let Some(list) = body.pointer("/results/0/userList") else {
        return Err(CallError::InvalidConfig(format!(
            "user list {} not found in customer {}",
            ids.user_list, ids.customer
        )));
    };
    let kind = list.get("type").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != "CRM_BASED" {
        return Err(CallError::InvalidConfig(format!(
            "user list {} is of type {kind}; Customer Match needs a CRM_BASED list",
            ids.user_list
        )));
    }
    let key = ctx.config.upload_key_type;
    if let Some(actual) = list
        .pointer("/crmBasedUserList/uploadKeyType")
        .and_then(Value::as_str)
    {
        if actual != key.google_ads_name() {
            return Err(key_type_mismatch(ids, key, actual));
        }
    }
    let body = json!({ "job": job(ctx, ids, false), "validateOnly": true });
    let response = headers(
        ctx,
        ids,
        auth,
        Request::post(&format!(
            "{API}/{version}/customers/{}/offlineUserDataJobs:create",
            ids.customer
        )),
    )
    .json(&body)
    .send()?;
    if !response.is_success() {
        return Err(call_error(classify(&response, time::now_unix())));
    }
    info!(
        "user list {} ({}) is reachable and takes Customer Match jobs",
        ids.user_list,
        list.get("name").and_then(Value::as_str).unwrap_or("")
    );
    Ok(())
}

pub fn key_type_mismatch(ids: &Ids, key: UploadKeyType, actual: &str) -> CallError {
    CallError::InvalidConfig(format!(
        "user list {} takes {actual} members but upload_key_type is {} ({}): set upload_key_type to the list's key type",
        ids.user_list,
        key.config_name(),
        key.google_ads_name()
    ))
}

/// The job resource; consent only for upserts (Google: "For remove requests, consent is not
/// needed").
fn job(ctx: &Context<Config>, ids: &Ids, remove: bool) -> Value {
    let mut metadata = json!({ "userList": ids.user_list_resource() });
    let mut consent = serde_json::Map::new();
    if !remove {
        if let Some(c) = ctx.config.consent_ad_user_data {
            consent.insert("adUserData".into(), json!(c.google_ads()));
        }
        if let Some(c) = ctx.config.consent_ad_personalization {
            consent.insert("adPersonalization".into(), json!(c.google_ads()));
        }
    }
    if !consent.is_empty() {
        metadata["consent"] = Value::Object(consent);
    }
    json!({ "type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": metadata })
}

pub fn deliver(
    ctx: &Context<Config>,
    ids: &Ids,
    auth: &str,
    remove: bool,
    members: &[(usize, Vec<Identifier>)],
    results: &mut [RecordResult],
) -> Result<(), CallError> {
    need_developer_token(ctx)?;
    let kind = if remove { "remove" } else { "create" };
    let version = &ctx.config.api_version;
    // (record index, userIdentifiers as JSON text): compact, so that a full batch of
    // 10,000 records stays far inside the sandbox's memory cap.
    let ops: Vec<(usize, Vec<String>)> = members
        .iter()
        .map(|(i, found)| {
            (
                *i,
                found.iter().map(|x| x.google_ads().to_string()).collect(),
            )
        })
        .collect();
    let base = format!(
        "{API}/{version}/customers/{}/offlineUserDataJobs",
        ids.customer
    );

    // 1. Create the job.
    let body = json!({ "job": job(ctx, ids, remove), "validateOnly": false });
    let response = headers(ctx, ids, auth, Request::post(&format!("{base}:create")))
        .json(&body)
        .send()?;
    if !response.is_success() {
        return Err(call_error(classify(&response, time::now_unix())));
    }
    let created: Value = response.json()?;
    let job = created
        .get("resourceName")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CallError::Failed("offlineUserDataJobs:create answered without a resourceName".into())
        })?
        .to_string();
    let job_url = format!("{API}/{version}/{job}");
    debug!("created {job} for {} operations", ops.len());

    // 2. Add operations, in requests of at most 10,000 identifiers and 10,000 operations.
    let chunks = chunk(&ops, IDENTIFIERS_PER_REQUEST);
    let mut sent_any = false;
    for (n, range) in chunks.iter().enumerate() {
        let part = &ops[range.clone()];
        let body = add_operations_body(kind, part);
        let response = match headers(
            ctx,
            ids,
            auth,
            Request::post(&format!("{job_url}:addOperations")),
        )
        .header("content-type", "application/json")
        .body(body.into_bytes())
        .send()
        {
            Ok(r) => r,
            Err(e) => {
                let error: CallError = e.into();
                let reason = switchyard_sdk::outcome::describe_call_error(&error);
                retry_from(
                    results,
                    &ops[range.start..],
                    &Retry {
                        reason,
                        after_ms: None,
                    },
                );
                break;
            }
        };
        if response.is_success() {
            sent_any = true;
            let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            let failures = partial_failures(&answer);
            if let Some(e) = failures
                .values()
                .flatten()
                .find(|e| ads::is_not_allowlisted(&e.code))
            {
                return Err(CallError::InvalidConfig(ads::not_allowlisted_message(
                    &e.describe(),
                )));
            }
            let mut rejected = 0;
            for (op, errors) in &failures {
                let message = errors
                    .iter()
                    .map(|e| e.describe())
                    .collect::<Vec<_>>()
                    .join("; ");
                let targets: Vec<usize> = match op {
                    Some(k) => part.get(*k).map(|(i, _)| *i).into_iter().collect(),
                    // An error without an operation index concerns the whole request.
                    None => part.iter().map(|(i, _)| *i).collect(),
                };
                for i in targets {
                    results[i] = RecordResult::Rejected(format!("Google Ads: {message}"));
                    rejected += 1;
                }
            }
            debug!(
                "{job} addOperations {} of {}: {} operations, {rejected} refused",
                n + 1,
                chunks.len(),
                part.len()
            );
            continue;
        }
        let failure = classify(&response, time::now_unix());
        warn!(
            "{job} addOperations {} of {}: {}",
            n + 1,
            chunks.len(),
            failure_text(&failure)
        );
        match failure {
            // Bad credentials or a bad list before anything went in: the whole call fails.
            f @ (Failure::Unauthorized(_) | Failure::InvalidConfig(_)) if !sent_any => {
                return Err(call_error(f))
            }
            Failure::Rejected(by_op, text) => {
                // Without partial failure (or for a request-level refusal) Google names
                // the operations at fault; the others were not applied, so they retry.
                let named: Vec<usize> = by_op.keys().flatten().copied().collect();
                for (k, (i, _)) in part.iter().enumerate() {
                    results[*i] = match by_op.get(&Some(k)) {
                        Some(errors) => RecordResult::Rejected(format!(
                            "Google Ads: {}",
                            errors
                                .iter()
                                .map(|e| e.describe())
                                .collect::<Vec<_>>()
                                .join("; ")
                        )),
                        None if named.is_empty() => {
                            RecordResult::Rejected(format!("Google Ads: {text}"))
                        }
                        None => RecordResult::Retry(Retry {
                            reason: format!(
                                "not applied: another operation of the request was refused ({text})"
                            ),
                            after_ms: None,
                        }),
                    };
                }
            }
            other => {
                let retry = match other {
                    Failure::Retry(r) => r,
                    Failure::Unauthorized(m)
                    | Failure::InvalidConfig(m)
                    | Failure::Rejected(_, m) => Retry {
                        reason: m,
                        after_ms: None,
                    },
                };
                retry_from(results, &ops[range.start..], &retry);
                break;
            }
        }
    }

    // 3. Run the job so that what was added is applied.
    if !sent_any {
        return Ok(());
    }
    let response = headers(ctx, ids, auth, Request::post(&format!("{job_url}:run")))
        .json(&json!({ "validateOnly": false }))
        .send();
    let failure = match response {
        Ok(r) if r.is_success() => {
            let op: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            info!(
                "{job} running ({}): {} records",
                op.get("name").and_then(Value::as_str).unwrap_or("?"),
                results
                    .iter()
                    .filter(|r| matches!(r, RecordResult::Ok))
                    .count()
            );
            return Ok(());
        }
        Ok(r) => failure_text(&classify(&r, time::now_unix())),
        Err(e) => e.to_string(),
    };
    warn!("{job}:run failed: {failure}");
    for r in results.iter_mut() {
        if matches!(r, RecordResult::Ok) {
            *r = RecordResult::Retry(Retry {
                reason: format!("the job was not run: {failure}"),
                after_ms: None,
            });
        }
    }
    Ok(())
}

fn retry_from(results: &mut [RecordResult], ops: &[(usize, Vec<String>)], retry: &Retry) {
    for (i, _) in ops {
        results[*i] = RecordResult::Retry(retry.clone());
    }
}

/// The addOperations request body, written directly (no intermediate JSON tree).
fn add_operations_body(kind: &str, part: &[(usize, Vec<String>)]) -> String {
    let size: usize = part
        .iter()
        .map(|(_, ids)| ids.iter().map(|i| i.len() + 1).sum::<usize>() + 40)
        .sum();
    let mut body = String::with_capacity(size + 100);
    body.push_str(
        r#"{"enablePartialFailure":true,"enableWarnings":false,"validateOnly":false,"operations":["#,
    );
    for (k, (_, ids)) in part.iter().enumerate() {
        if k > 0 {
            body.push(',');
        }
        body.push_str(r#"{""#);
        body.push_str(kind);
        body.push_str(r#"":{"userIdentifiers":["#);
        body.push_str(&ids.join(","));
        body.push_str("]}}");
    }
    body.push_str("]}");
    body
}

/// Splits operations into requests of ≤ 10,000 operations and ≤ `max_identifiers` identifiers.
fn chunk<T>(ops: &[(usize, Vec<T>)], max_identifiers: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut identifiers = 0;
    for (k, (_, ids)) in ops.iter().enumerate() {
        if k > start
            && (k - start >= OPERATIONS_PER_REQUEST || identifiers + ids.len() > max_identifiers)
        {
            out.push(start..k);
            start = k;
            identifiers = 0;
        }
        identifiers += ids.len();
    }
    if start < ops.len() {
        out.push(start..ops.len());
    }
    out
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Unauthorized(m) | Failure::InvalidConfig(m) | Failure::Rejected(_, m) => m.clone(),
        Failure::Retry(r) => r.reason.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_within_googles_limits() {
        let one = |n: usize| (0, vec![Value::Null; n]);
        let ops: Vec<_> = (0..25_000).map(|_| one(1)).collect();
        let c = chunk(&ops, IDENTIFIERS_PER_REQUEST);
        assert_eq!(c, vec![0..10_000, 10_000..20_000, 20_000..25_000]);
        let body = add_operations_body(
            "remove",
            &[
                (
                    0,
                    vec![
                        r#"{"hashedEmail":"ab"}"#.to_string(),
                        r#"{"hashedPhoneNumber":"x"}"#.to_string(),
                    ],
                ),
                (1, vec![r#"{"hashedPhoneNumber":"cd"}"#.to_string()]),
            ],
        );
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed,
            json!({"enablePartialFailure": true, "enableWarnings": false, "validateOnly": false,
            "operations": [{"remove": {"userIdentifiers": [{"hashedEmail": "ab"}, {"hashedPhoneNumber": "x"}]}},
                           {"remove": {"userIdentifiers": [{"hashedPhoneNumber": "cd"}]}}]})
        );
        // Three identifiers per record: requests of ≤ 10,000 identifiers (3,333 records).
        let ops: Vec<_> = (0..10_000).map(|_| one(3)).collect();
        let c = chunk(&ops, IDENTIFIERS_PER_REQUEST);
        assert!(c.iter().all(|r| r.len() * 3 <= IDENTIFIERS_PER_REQUEST));
        assert_eq!(c.iter().map(|r| r.len()).sum::<usize>(), 10_000);
        assert_eq!(c[0], 0..3_333);
        // The hard limit still holds for the largest operations.
        let ops: Vec<_> = (0..9_000)
            .map(|_| one(MAX_IDENTIFIERS_PER_OPERATION))
            .collect();
        let c = chunk(&ops, MAX_IDENTIFIERS_PER_REQUEST);
        assert_eq!(c[0], 0..5_000);
    }
}
