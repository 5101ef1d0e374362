//! Google Ads Customer Match destination.
//!
//! Adds people to (`upsert`) or removes them from (`delete`) a Customer Match user list with
//! the REST OfflineUserDataJobService: `offlineUserDataJobs:create` (type
//! `CUSTOMER_MATCH_USER_LIST`, the list's resource name, optional consent) →
//! `offlineUserDataJobs/{id}:addOperations` (one `create` or `remove` operation per record,
//! `enablePartialFailure: true`, at most 100,000 user identifiers per request) → `:run`.
//!
//! Record fields read (all optional, at least one identifier needed):
//!
//! | field | user identifier |
//! |---|---|
//! | `email` | `hashedEmail`: trimmed, lowercased; for gmail.com/googlemail.com dots and `+suffix` dropped; SHA-256 hex |
//! | `phone` | `hashedPhoneNumber`: E.164 with `+` (`default_phone_country_code` for national numbers); SHA-256 hex |
//! | `first_name`, `last_name`, `country` (or `country_code`), `zip` (or `postal_code`) | `addressInfo`: `hashedFirstName`, `hashedLastName` (trimmed, lowercased, SHA-256 hex), `countryCode` (ISO alpha-2, `default_country` when missing), `postalCode` (as is); sent only when all four are known |
//! | `mobile_id` | `mobileId` (IDFA/AAID, as is) |
//! | `crm_id` | `thirdPartyUserId` (as is) |
//!
//! A value that already is a 64-character SHA-256 hex digest is sent as is (lowercased).
//! Operations the API refuses in `partialFailureError` (matched by
//! `location.fieldPathElements[operations].index`) are rejected with Google's message; quota
//! errors (HTTP 429 / `RESOURCE_EXHAUSTED`, `quotaError.*`) and transient errors are retried,
//! after the `retryDelay` Google gives; `UNAUTHENTICATED` / `PERMISSION_DENIED` fail the call as
//! unauthorized.

mod ads;
pub mod normalize;

use serde::Deserialize;
use switchyard_sdk::{
    debug, http::Request, info, schemars, serde_json, time, warn, Action, CallError, Capabilities,
    Context, Destination, OutboundRecord, Plugin, RecordResult, Retry,
};

use ads::{classify, partial_failures, Failure};
use serde_json::{json, Value};

const API: &str = "https://googleads.googleapis.com";
const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Google's limit of user identifiers in one addOperations request.
pub const MAX_IDENTIFIERS_PER_REQUEST: usize = 100_000;
/// Google's limit of user identifiers in one operation.
pub const MAX_IDENTIFIERS_PER_OPERATION: usize = 20;
/// Operations per request Google recommends (and the plugin's batch size).
pub const OPERATIONS_PER_REQUEST: usize = 10_000;

fn default_version() -> String {
    "v26".to_string()
}

/// Consent the user list's members gave (EU user consent policy).
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentStatus {
    Granted,
    Denied,
    Unspecified,
}

impl ConsentStatus {
    fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::Granted => "GRANTED",
            ConsentStatus::Denied => "DENIED",
            ConsentStatus::Unspecified => "UNSPECIFIED",
        }
    }
}

/// Settings of one `[destinations.NAME]` block using this plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Google Ads account that owns the list, 10 digits (dashes are ignored).
    pub customer_id: String,
    /// The Customer Match user list id (digits), as in `customers/{customer_id}/userLists/{id}`.
    pub user_list_id: String,
    /// The manager account to act through (`login-customer-id`), when access goes via an MCC.
    #[serde(default)]
    pub login_customer_id: Option<String>,
    /// Google Ads API version, e.g. `v26`.
    #[serde(default = "default_version")]
    pub api_version: String,
    /// Country calling code (digits, e.g. `1`) for phone numbers written without one.
    #[serde(default)]
    pub default_phone_country_code: Option<String>,
    /// ISO 3166-1 alpha-2 country (e.g. `US`) for the address of records without `country`.
    #[serde(default)]
    pub default_country: Option<String>,
    /// Consent for using the members' data for advertising (`ad_user_data`).
    #[serde(default)]
    pub consent_ad_user_data: Option<ConsentStatus>,
    /// Consent for personalised advertising (`ad_personalization`).
    #[serde(default)]
    pub consent_ad_personalization: Option<ConsentStatus>,
}

struct CustomerMatch;

impl Plugin for CustomerMatch {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("google-ads-customer-match")
            .allowed_host("googleads.googleapis.com")
            .allowed_host("oauth2.googleapis.com")
            .secret(
                "developer_token",
                "Google Ads API developer token (sent as the developer-token header)",
                true,
            )
            .secret(
                "access_token",
                "OAuth 2.0 access token with the adwords scope; or set refresh_token, client_id and client_secret instead",
                false,
            )
            .secret(
                "refresh_token",
                "OAuth 2.0 refresh token (with client_id and client_secret): a fresh access token is fetched per call",
                false,
            )
            .secret("client_id", "OAuth 2.0 client id (with refresh_token)", false)
            .secret("client_secret", "OAuth 2.0 client secret (with refresh_token)", false)
            .max_batch_size(OPERATIONS_PER_REQUEST as u32)
            // Each delivery is a create/addOperations/run job; Google throttles per developer
            // token and recommends few, large requests.
            .default_rate_per_second(1.0)
            .actions(&[Action::Upsert, Action::Delete])
    }

    /// A read of the user list with `googleAds:search` (GAQL): proves the developer token,
    /// the OAuth token and access to the customer, and that the list exists and is a CRM list.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let ids = Ids::from_config(&ctx.config)?;
        let auth = bearer(ctx)?;
        let query = format!(
            "SELECT user_list.id, user_list.name, user_list.type FROM user_list WHERE user_list.id = {}",
            ids.user_list
        );
        let url = format!(
            "{API}/{}/customers/{}/googleAds:search",
            ctx.config.api_version, ids.customer
        );
        let response = headers(ctx, &ids, &auth, Request::post(&url))
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
        info!(
            "user list {} ({}) is reachable",
            ids.user_list,
            list.get("name").and_then(Value::as_str).unwrap_or("")
        );
        Ok(())
    }
}

impl Destination for CustomerMatch {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let ids = Ids::from_config(&ctx.config)?;
        let kind =
            match action {
                Action::Upsert => "create",
                Action::Delete => "remove",
                Action::Track => return Err(CallError::InvalidConfig(
                    "google-ads-customer-match syncs list membership (upsert/delete), not events"
                        .into(),
                )),
            };
        let opts = normalize::Options {
            default_country_code: ctx.config.default_phone_country_code.clone(),
            default_country: ctx.config.default_country.clone(),
        };
        let mut results = vec![RecordResult::Ok; batch.len()];
        // (record index, userIdentifiers as JSON text): compact, so that a full batch of
        // 10,000 records stays far inside the sandbox's memory cap.
        let mut ops: Vec<(usize, Vec<String>)> = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match normalize::user_identifiers(&record.fields, &opts) {
                Ok(identifiers) => {
                    ops.push((i, identifiers.iter().map(Value::to_string).collect()))
                }
                Err(reason) => {
                    debug!("record {}: rejected before sending: {reason}", record.key);
                    results[i] = RecordResult::Rejected(reason);
                }
            }
        }
        if ops.is_empty() {
            return Ok(results);
        }
        let auth = bearer(ctx)?;
        let base = format!(
            "{API}/{}/customers/{}/offlineUserDataJobs",
            ctx.config.api_version, ids.customer
        );

        // 1. Create the job.
        let mut metadata = json!({ "userList": ids.user_list_resource() });
        let mut consent = serde_json::Map::new();
        if let Some(c) = ctx.config.consent_ad_user_data {
            consent.insert("adUserData".into(), json!(c.as_str()));
        }
        if let Some(c) = ctx.config.consent_ad_personalization {
            consent.insert("adPersonalization".into(), json!(c.as_str()));
        }
        if !consent.is_empty() {
            metadata["consent"] = Value::Object(consent);
        }
        let body = json!({
            "job": { "type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": metadata },
            "validateOnly": false,
        });
        let response = headers(ctx, &ids, &auth, Request::post(&format!("{base}:create")))
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
                CallError::Failed(
                    "offlineUserDataJobs:create answered without a resourceName".into(),
                )
            })?
            .to_string();
        let job_url = format!("{API}/{}/{job}", ctx.config.api_version);
        debug!("created {job} for {} operations", ops.len());

        // 2. Add operations, in requests of at most 100,000 identifiers and 10,000 operations.
        let chunks = chunk(&ops);
        let mut sent_any = false;
        for (n, range) in chunks.iter().enumerate() {
            let part = &ops[range.clone()];
            let body = add_operations_body(kind, part);
            let response = match headers(
                ctx,
                &ids,
                &auth,
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
                    for (i, _) in &ops[range.start..] {
                        results[*i] = RecordResult::Retry(Retry {
                            reason: reason.clone(),
                            after_ms: None,
                        });
                    }
                    break;
                }
            };
            if response.is_success() {
                sent_any = true;
                let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
                let failures = partial_failures(&answer);
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
                                errors.iter().map(|e| e.describe()).collect::<Vec<_>>().join("; ")
                            )),
                            None if named.is_empty() => {
                                RecordResult::Rejected(format!("Google Ads: {text}"))
                            }
                            None => RecordResult::Retry(Retry {
                                reason: format!("not applied: another operation of the request was refused ({text})"),
                                after_ms: None,
                            }),
                        };
                    }
                }
                other => {
                    let retry = match other {
                        Failure::Retry(r) => r,
                        Failure::Unauthorized(m) | Failure::InvalidConfig(m) => Retry {
                            reason: m,
                            after_ms: None,
                        },
                        Failure::Rejected(_, m) => Retry {
                            reason: m,
                            after_ms: None,
                        },
                    };
                    for (i, _) in &ops[range.start..] {
                        results[*i] = RecordResult::Retry(retry.clone());
                    }
                    break;
                }
            }
        }

        // 3. Run the job so that what was added is applied.
        if !sent_any {
            return Ok(results);
        }
        let response = headers(ctx, &ids, &auth, Request::post(&format!("{job_url}:run")))
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
                return Ok(results);
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
        Ok(results)
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

/// Splits operations into requests of ≤ 10,000 operations and ≤ 100,000 identifiers.
fn chunk<T>(ops: &[(usize, Vec<T>)]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut identifiers = 0;
    for (k, (_, ids)) in ops.iter().enumerate() {
        if k > start
            && (k - start >= OPERATIONS_PER_REQUEST
                || identifiers + ids.len() > MAX_IDENTIFIERS_PER_REQUEST)
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

fn call_error(f: Failure) -> CallError {
    match f {
        Failure::Unauthorized(m) => CallError::Unauthorized(m),
        Failure::InvalidConfig(m) => CallError::InvalidConfig(m),
        Failure::Retry(r) => CallError::Transient(r),
        Failure::Rejected(_, m) => CallError::Failed(m),
    }
}

/// Customer, list and manager ids, validated.
struct Ids {
    customer: String,
    user_list: String,
    login: Option<String>,
}

impl Ids {
    fn from_config(c: &Config) -> Result<Ids, CallError> {
        let customer_id = |what: &str, raw: &str| -> Result<String, CallError> {
            let digits: String = raw.chars().filter(|c| *c != '-').collect();
            if digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
                Ok(digits)
            } else {
                Err(CallError::InvalidConfig(format!(
                    "{what} `{raw}` must be a 10-digit Google Ads customer id such as 123-456-7890"
                )))
            }
        };
        let customer = customer_id("customer_id", &c.customer_id)?;
        let login = c
            .login_customer_id
            .as_deref()
            .map(|l| customer_id("login_customer_id", l))
            .transpose()?;
        let list = c.user_list_id.trim();
        let list = list.rsplit('/').next().unwrap_or(list);
        if list.is_empty() || !list.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CallError::InvalidConfig(format!(
                "user_list_id `{}` must be the list's numeric id",
                c.user_list_id
            )));
        }
        let v = c.api_version.strip_prefix('v').unwrap_or("");
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CallError::InvalidConfig(format!(
                "api_version `{}` must look like v26",
                c.api_version
            )));
        }
        if let Some(cc) = &c.default_phone_country_code {
            let d = cc.trim_start_matches('+');
            if d.is_empty() || d.len() > 3 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CallError::InvalidConfig(format!(
                    "default_phone_country_code `{cc}` must be 1 to 3 digits, e.g. 1 or 44"
                )));
            }
        }
        if let Some(country) = &c.default_country {
            if normalize::country_code(country).is_none() {
                return Err(CallError::InvalidConfig(format!(
                    "default_country `{country}` must be an ISO 3166-1 alpha-2 code such as US"
                )));
            }
        }
        Ok(Ids {
            customer,
            user_list: list.to_string(),
            login,
        })
    }

    fn user_list_resource(&self) -> String {
        format!("customers/{}/userLists/{}", self.customer, self.user_list)
    }
}

/// The `Authorization` value: a fresh access token from the refresh token when one is
/// configured (the plugin must then see the OAuth client secrets), else the `access_token`
/// secret as a placeholder the hub fills in.
fn bearer(ctx: &Context<Config>) -> Result<String, CallError> {
    if ctx.has_secret("refresh_token") {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", ctx.secret("client_id")?),
            ("client_secret", ctx.secret("client_secret")?),
            ("refresh_token", ctx.secret("refresh_token")?),
        ];
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = Request::post(TOKEN_URL)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.into_bytes())
            .send()?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if !response.is_success() {
            let error = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("error");
            let description = answer
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            let message = format!(
                "OAuth token refresh: HTTP {}: {error} {description}",
                response.status
            );
            return Err(
                if switchyard_sdk::outcome::is_retryable_status(response.status) {
                    CallError::Transient(switchyard_sdk::outcome::retry(&response))
                } else {
                    CallError::Unauthorized(message)
                },
            );
        }
        let token = answer
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                CallError::Failed("OAuth token refresh answered without access_token".into())
            })?;
        return Ok(format!("Bearer {token}"));
    }
    if !ctx.has_secret("access_token") {
        return Err(CallError::InvalidConfig(
            "set the access_token secret, or refresh_token with client_id and client_secret".into(),
        ));
    }
    Ok(format!("Bearer {}", ctx.secret_placeholder("access_token")))
}

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

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

switchyard_sdk::export_destination!(CustomerMatch);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> Config {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ids_are_validated_and_normalised() {
        let ids = Ids::from_config(&cfg(json!({"customer_id": "123-456-7890", "user_list_id": "456", "login_customer_id": "9876543210"}))).unwrap();
        assert_eq!(ids.customer, "1234567890");
        assert_eq!(ids.login.as_deref(), Some("9876543210"));
        assert_eq!(
            ids.user_list_resource(),
            "customers/1234567890/userLists/456"
        );
        let ids = Ids::from_config(&cfg(json!({"customer_id": "1234567890", "user_list_id": "customers/1234567890/userLists/77"}))).unwrap();
        assert_eq!(ids.user_list, "77");
        assert!(
            Ids::from_config(&cfg(json!({"customer_id": "12345", "user_list_id": "1"}))).is_err()
        );
        assert!(Ids::from_config(&cfg(
            json!({"customer_id": "1234567890", "user_list_id": "abc"})
        ))
        .is_err());
        assert!(Ids::from_config(&cfg(
            json!({"customer_id": "1234567890", "user_list_id": "1", "api_version": "26"})
        ))
        .is_err());
        assert!(serde_json::from_value::<Config>(
            json!({"customer_id": "1", "user_list_id": "1", "extra": true})
        )
        .is_err());
    }

    #[test]
    fn requests_stay_within_googles_limits() {
        let one = |n: usize| (0, vec![Value::Null; n]);
        let ops: Vec<_> = (0..25_000).map(|_| one(1)).collect();
        let c = chunk(&ops);
        assert_eq!(c, vec![0..10_000, 10_000..20_000, 20_000..25_000]);
        let body = add_operations_body(
            "remove",
            &[
                (
                    0,
                    vec![
                        r#"{"hashedEmail":"ab"}"#.to_string(),
                        r#"{"mobileId":"x"}"#.to_string(),
                    ],
                ),
                (1, vec![r#"{"hashedPhoneNumber":"cd"}"#.to_string()]),
            ],
        );
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed,
            json!({"enablePartialFailure": true, "enableWarnings": false, "validateOnly": false,
            "operations": [{"remove": {"userIdentifiers": [{"hashedEmail": "ab"}, {"mobileId": "x"}]}},
                           {"remove": {"userIdentifiers": [{"hashedPhoneNumber": "cd"}]}}]})
        );
        let ops: Vec<_> = (0..9_000).map(|_| one(20)).collect();
        let c = chunk(&ops);
        assert!(c
            .iter()
            .all(|r| r.len() * 20 <= MAX_IDENTIFIERS_PER_REQUEST));
        assert_eq!(c.iter().map(|r| r.len()).sum::<usize>(), 9_000);
        assert_eq!(c[0], 0..5_000);
    }
}
