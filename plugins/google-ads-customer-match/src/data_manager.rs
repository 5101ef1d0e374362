//! The Data Manager API path (`api = "data_manager"`, the default).
//!
//! `POST https://datamanager.googleapis.com/v1/audienceMembers:ingest` (upsert) and
//! `audienceMembers:remove` (delete), one request per batch of ≤ 10,000 members, identifiers
//! SHA-256 hex (`encoding: HEX`), OAuth with the `datamanager` scope and no developer token.
//! A request either applies as a whole or is refused with a `google.rpc.Status` whose
//! `google.rpc.BadRequest` field violations name the members at fault
//! (`audience_members.audience_members[N]...`): those are rejected, the rest retried.
//! References (checked 2026-12-06) are listed in the README.

use std::collections::BTreeMap;

use switchyard_sdk::{
    debug, http::Request, http::Response, info, outcome, pii, serde_json, time, warn, CallError,
    Context, RecordResult, Retry,
};

use serde_json::{json, Value};

use crate::normalize::{Identifier, UploadKeyType};
use crate::{Config, Ids};

const API: &str = "https://datamanager.googleapis.com/v1";
/// At most 10,000 audience members per request (IngestAudienceMembersRequest).
pub const MAX_MEMBERS: usize = 10_000;
/// At most 10 user identifiers per audience member (UserData).
pub const MAX_IDENTIFIERS: usize = 10;

/// One member's data as JSON text: `userData` (contact info), `userIdData` (CRM id) or
/// `mobileData` (mobile id), as the list's key type wants.
pub fn member_json(found: &[Identifier], key: UploadKeyType) -> String {
    let member = match key {
        UploadKeyType::CrmId => {
            let id = found.iter().find_map(|i| match i {
                Identifier::CrmId(id) => Some(id.as_str()),
                _ => None,
            });
            json!({ "userIdData": { "userId": id.unwrap_or_default() } })
        }
        UploadKeyType::MobileId => {
            let ids: Vec<&str> = found
                .iter()
                .filter_map(|i| match i {
                    Identifier::MobileId(m) => Some(m.as_str()),
                    _ => None,
                })
                .take(MAX_IDENTIFIERS)
                .collect();
            json!({ "mobileData": { "mobileIds": ids } })
        }
        UploadKeyType::ContactInfo => {
            let ids: Vec<Value> = found
                .iter()
                .filter_map(|i| match i {
                    Identifier::Email(h) => Some(json!({ "emailAddress": h })),
                    Identifier::Phone(h) => Some(json!({ "phoneNumber": h })),
                    Identifier::Address {
                        first,
                        last,
                        country,
                        postal,
                    } => Some(json!({ "address": {
                        "givenName": first, "familyName": last, "regionCode": country, "postalCode": postal
                    }})),
                    Identifier::MobileId(_) | Identifier::CrmId(_) => None,
                })
                .take(MAX_IDENTIFIERS)
                .collect();
            json!({ "userData": { "userIdentifiers": ids } })
        }
    };
    member.to_string()
}

fn account(id: &str) -> Value {
    json!({ "accountType": "GOOGLE_ADS", "accountId": id })
}

/// The request's single Destination: the list in the operating account, reached through the
/// manager (`loginAccount`) when one is configured.
fn destination(ids: &Ids) -> Value {
    let mut d = json!({ "operatingAccount": account(&ids.customer), "productDestinationId": ids.user_list });
    if let Some(login) = &ids.login {
        d["loginAccount"] = account(login);
    }
    d
}

/// The request body, members written as text (no JSON tree of 10,000 members in memory).
/// Consent and terms of service go with ingests only: `remove` has neither field.
pub fn body(
    c: &Config,
    ids: &Ids,
    remove: bool,
    members: &[String],
    validate_only: bool,
) -> String {
    let mut head = serde_json::Map::new();
    head.insert("destinations".into(), json!([destination(ids)]));
    if c.upload_key_type == UploadKeyType::ContactInfo {
        head.insert("encoding".into(), json!("HEX"));
    }
    if !remove {
        let mut consent = serde_json::Map::new();
        if let Some(s) = c.consent_ad_user_data {
            consent.insert("adUserData".into(), json!(s.data_manager()));
        }
        if let Some(s) = c.consent_ad_personalization {
            consent.insert("adPersonalization".into(), json!(s.data_manager()));
        }
        if !consent.is_empty() {
            head.insert("consent".into(), Value::Object(consent));
        }
        if c.customer_match_terms_accepted {
            head.insert(
                "termsOfService".into(),
                json!({ "customerMatchTermsOfServiceStatus": "ACCEPTED" }),
            );
        }
    }
    head.insert("validateOnly".into(), json!(validate_only));
    let head = Value::Object(head).to_string();
    let size: usize = members.iter().map(|m| m.len() + 1).sum();
    let mut out = String::with_capacity(head.len() + size + 32);
    out.push_str(&head[..head.len() - 1]);
    out.push_str(r#","audienceMembers":["#);
    for (k, m) in members.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        out.push_str(m);
    }
    out.push_str("]}");
    out
}

fn post(auth: &str, remove: bool, body: String) -> Result<Response, CallError> {
    let verb = if remove { "remove" } else { "ingest" };
    Ok(Request::post(&format!("{API}/audienceMembers:{verb}"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body.into_bytes())
        .send()?)
}

pub fn deliver(
    ctx: &Context<Config>,
    ids: &Ids,
    auth: &str,
    remove: bool,
    members: &[(usize, Vec<Identifier>)],
    results: &mut [RecordResult],
) -> Result<(), CallError> {
    let key = ctx.config.upload_key_type;
    let verb = if remove { "remove" } else { "ingest" };
    let mut sent_any = false;
    let chunks: Vec<&[(usize, Vec<Identifier>)]> = members.chunks(MAX_MEMBERS).collect();
    for (n, part) in chunks.iter().enumerate() {
        let texts: Vec<String> = part.iter().map(|(_, f)| member_json(f, key)).collect();
        let response = match post(auth, remove, body(&ctx.config, ids, remove, &texts, false)) {
            Ok(r) => r,
            Err(e) if !sent_any => return Err(e),
            Err(e) => {
                let reason = outcome::describe_call_error(&e);
                retry_rest(
                    results,
                    &chunks[n..],
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
            debug!(
                "audienceMembers:{verb} {} of {}: {} members, requestId {}",
                n + 1,
                chunks.len(),
                part.len(),
                answer
                    .get("requestId")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            );
            continue;
        }
        let failure = classify(&response, time::now_unix());
        warn!(
            "audienceMembers:{verb} {} of {}: {}",
            n + 1,
            chunks.len(),
            failure.text()
        );
        match failure {
            Failure::Members(by_member, text) => {
                // The request was refused as a whole: the named members are rejected, the
                // others were not applied and go again.
                for (k, (i, _)) in part.iter().enumerate() {
                    results[*i] = match by_member.get(&k) {
                        Some(reason) => RecordResult::Rejected(format!("Data Manager: {reason}")),
                        None => RecordResult::Retry(Retry {
                            reason: format!(
                                "not applied: another member of the request was refused ({text})"
                            ),
                            after_ms: None,
                        }),
                    };
                }
            }
            Failure::Retry(r) => {
                retry_rest(results, &chunks[n..], &r);
                break;
            }
            f if !sent_any => return Err(f.into_call_error()),
            f => {
                let retry = Retry {
                    reason: f.text(),
                    after_ms: None,
                };
                retry_rest(results, &chunks[n..], &retry);
                break;
            }
        }
    }
    if sent_any {
        info!(
            "audienceMembers:{verb}: {} members accepted",
            results
                .iter()
                .filter(|r| matches!(r, RecordResult::Ok))
                .count()
        );
    }
    Ok(())
}

fn retry_rest(results: &mut [RecordResult], chunks: &[&[(usize, Vec<Identifier>)]], retry: &Retry) {
    for part in chunks {
        for (i, _) in part.iter() {
            results[*i] = RecordResult::Retry(retry.clone());
        }
    }
}

/// Reads the list (`userLists.get`) to compare its upload key type with the config, then sends
/// a `validateOnly` ingest of one placeholder member: proves the OAuth scope, account access,
/// list, consent and terms without changing the list.
pub fn check(ctx: &Context<Config>, ids: &Ids, auth: &str) -> Result<(), CallError> {
    let key = ctx.config.upload_key_type;
    let url = format!(
        "{API}/accountTypes/GOOGLE_ADS/accounts/{}/userLists/{}",
        ids.customer, ids.user_list
    );
    let mut request = Request::get(&url).header("authorization", auth);
    if let Some(login) = &ids.login {
        request = request.header(
            "login-account",
            &format!("accountTypes/GOOGLE_ADS/accounts/{login}"),
        );
    }
    let response = request.send()?;
    if response.status == 404 {
        return Err(CallError::InvalidConfig(format!(
            "user list {} not found in Google Ads account {} (Data Manager userLists.get: HTTP 404)",
            ids.user_list, ids.customer
        )));
    }
    if !response.is_success() {
        return Err(classify(&response, time::now_unix()).into_call_error());
    }
    let list: Value = response.json()?;
    let kinds: Vec<&str> = list
        .pointer("/ingestedUserListInfo/uploadKeyTypes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !kinds.is_empty() && !kinds.contains(&key.data_manager_name()) {
        return Err(CallError::InvalidConfig(format!(
            "user list {} takes {} members but upload_key_type is {} ({}): set upload_key_type to the list's key type",
            ids.user_list,
            kinds.join(", "),
            key.config_name(),
            key.data_manager_name()
        )));
    }
    if !ctx.config.customer_match_terms_accepted {
        return Err(terms_error("customer_match_terms_accepted is not set"));
    }
    let placeholder = match key {
        UploadKeyType::ContactInfo => {
            Identifier::Email(pii::sha256_hex("switchyard-check@example.com"))
        }
        UploadKeyType::CrmId => Identifier::CrmId("switchyard-check".into()),
        UploadKeyType::MobileId => {
            Identifier::MobileId("00000000-0000-0000-0000-000000000000".into())
        }
    };
    let member = member_json(&[placeholder], key);
    let response = post(auth, false, body(&ctx.config, ids, false, &[member], true))?;
    if !response.is_success() {
        return Err(classify(&response, time::now_unix()).into_call_error());
    }
    info!(
        "user list {} ({}) takes {} members; a validateOnly ingest passed",
        ids.user_list,
        list.get("displayName")
            .and_then(Value::as_str)
            .unwrap_or(""),
        key.data_manager_name()
    );
    Ok(())
}

fn terms_error(what: &str) -> CallError {
    CallError::InvalidConfig(format!(
        "{what}: uploads to Customer Match lists need Google's Customer Match terms accepted (https://support.google.com/adspolicy/answer/6299717); once the account accepted them set customer_match_terms_accepted = true"
    ))
}

/// What a refused Data Manager request means.
#[derive(Debug, Clone)]
pub enum Failure {
    Unauthorized(String),
    InvalidConfig(String),
    Retry(Retry),
    /// Refused for these members (index in the request → reason); the text of the whole error.
    Members(BTreeMap<usize, String>, String),
    /// Refused for a reason tied to no member.
    Failed(String),
}

impl Failure {
    fn text(&self) -> String {
        match self {
            Failure::Unauthorized(m)
            | Failure::InvalidConfig(m)
            | Failure::Members(_, m)
            | Failure::Failed(m) => m.clone(),
            Failure::Retry(r) => r.reason.clone(),
        }
    }

    fn into_call_error(self) -> CallError {
        match self {
            Failure::Unauthorized(m) => CallError::Unauthorized(m),
            Failure::InvalidConfig(m) => CallError::InvalidConfig(m),
            Failure::Retry(r) => CallError::Transient(r),
            Failure::Members(_, m) | Failure::Failed(m) => CallError::Failed(m),
        }
    }
}

/// Reasons (ErrorReason) that mean the destination settings are wrong, not the data.
const CONFIG_REASONS: &[&str] = &[
    "INVALID_DESTINATION",
    "INVALID_USER_LIST_ID",
    "INVALID_USER_LIST_TYPE",
    "MULTIPLE_DATA_TYPES_NOT_ALLOWED",
    "DATA_PARTNER_USER_LIST_MUTATE_NOT_ALLOWED",
    "NOT_FOUND",
];

/// The member index a BadRequest field path names: `audience_members.audience_members[3].…`.
fn member_index(field: &str) -> Option<usize> {
    let at = field.rfind("audience_members[")? + "audience_members[".len();
    let digits: String = field[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Classifies a non-2xx Data Manager response (`google.rpc.Status` in `error`, with
/// ErrorInfo, BadRequest, RetryInfo and RequestInfo details).
pub fn classify(response: &Response, now_unix: u64) -> Failure {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    let status = body.get("error").cloned().unwrap_or(Value::Null);
    let name = status
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let message = status
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| outcome::api_message(&response.body));
    let mut reasons = Vec::new();
    let mut violations: Vec<(Option<usize>, String)> = Vec::new();
    let mut retry_delay_ms = None;
    let mut request_id = None;
    for d in status
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = d.get("@type").and_then(Value::as_str).unwrap_or("");
        if kind.ends_with("google.rpc.ErrorInfo") {
            if let Some(r) = d.get("reason").and_then(Value::as_str) {
                reasons.push(r.to_string());
            }
        } else if kind.ends_with("google.rpc.BadRequest") {
            for v in d
                .get("fieldViolations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let field = v.get("field").and_then(Value::as_str).unwrap_or("");
                let reason = v.get("reason").and_then(Value::as_str).unwrap_or("");
                let description = v.get("description").and_then(Value::as_str).unwrap_or("");
                let mut text = reason.to_string();
                if !description.is_empty() {
                    text.push_str(&format!(": {description}"));
                }
                if !field.is_empty() {
                    text.push_str(&format!(" ({field})"));
                }
                violations.push((member_index(field), text));
                if !reason.is_empty() {
                    reasons.push(reason.to_string());
                }
            }
        } else if kind.ends_with("google.rpc.RetryInfo") {
            retry_delay_ms = d
                .get("retryDelay")
                .and_then(Value::as_str)
                .and_then(crate::ads::parse_duration_ms);
        } else if kind.ends_with("google.rpc.RequestInfo") {
            request_id = d
                .get("requestId")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
    }
    let mut text = format!("HTTP {}", response.status);
    if !name.is_empty() {
        text.push_str(&format!(" {name}"));
    }
    text.push_str(&format!(": {message}"));
    let details: Vec<&str> = violations.iter().map(|(_, t)| t.as_str()).collect();
    if !details.is_empty() {
        text.push_str(&format!(" ({})", details.join("; ")));
    } else if !reasons.is_empty() {
        text.push_str(&format!(" ({})", reasons.join(", ")));
    }
    if let Some(id) = request_id {
        text.push_str(&format!(" [request-id {id}]"));
    }

    let has = |r: &str| reasons.iter().any(|x| x == r);
    if response.status == 429 || name == "RESOURCE_EXHAUSTED" {
        return Failure::Retry(Retry {
            reason: text,
            after_ms: retry_delay_ms.or_else(|| outcome::retry_after_ms(response, now_unix)),
        });
    }
    if response.status >= 500
        || response.status == 409
        || matches!(
            name.as_str(),
            "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "ABORTED"
        )
        || outcome::is_retryable_status(response.status)
    {
        return Failure::Retry(Retry {
            reason: text,
            after_ms: retry_delay_ms.or_else(|| outcome::retry_after_ms(response, now_unix)),
        });
    }
    if response.status == 401 || name == "UNAUTHENTICATED" {
        return Failure::Unauthorized(text);
    }
    if has("ACCESS_TOKEN_SCOPE_INSUFFICIENT") {
        return Failure::Unauthorized(format!(
            "{text}: the OAuth token needs the https://www.googleapis.com/auth/datamanager scope"
        ));
    }
    if response.status == 403 || name == "PERMISSION_DENIED" {
        return Failure::Unauthorized(format!(
            "{text}: the Google account of the OAuth token cannot reach this Google Ads account (set login_customer_id when access goes through a manager)"
        ));
    }
    if has("TERMS_AND_CONDITIONS_NOT_SIGNED") {
        return Failure::InvalidConfig(match terms_error(&text) {
            CallError::InvalidConfig(m) => m,
            _ => text,
        });
    }
    let by_member: BTreeMap<usize, String> = {
        let mut m: BTreeMap<usize, String> = BTreeMap::new();
        for (k, t) in &violations {
            if let Some(k) = k {
                let entry = m.entry(*k).or_default();
                if !entry.is_empty() {
                    entry.push_str("; ");
                }
                entry.push_str(t);
            }
        }
        m
    };
    if !by_member.is_empty() {
        return Failure::Members(by_member, text);
    }
    if response.status == 404 || CONFIG_REASONS.iter().any(|r| has(r)) {
        return Failure::InvalidConfig(text);
    }
    Failure::Failed(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::UploadKeyType;

    fn cfg(v: Value) -> Config {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn body_shape_per_action_and_key_type() {
        let c = cfg(
            json!({"customer_id": "123-456-7890", "user_list_id": "456", "login_customer_id": "9998887777",
                           "consent_ad_user_data": "GRANTED", "customer_match_terms_accepted": true}),
        );
        let ids = Ids::from_config(&c).unwrap();
        let member = member_json(
            &[
                Identifier::Email("ab".into()),
                Identifier::Address {
                    first: "f".into(),
                    last: "l".into(),
                    country: "US".into(),
                    postal: "94045".into(),
                },
            ],
            UploadKeyType::ContactInfo,
        );
        let ingest: Value =
            serde_json::from_str(&body(&c, &ids, false, std::slice::from_ref(&member), false))
                .unwrap();
        assert_eq!(
            ingest,
            json!({"destinations": [{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"},
                                     "loginAccount": {"accountType": "GOOGLE_ADS", "accountId": "9998887777"},
                                     "productDestinationId": "456"}],
                   "encoding": "HEX", "consent": {"adUserData": "CONSENT_GRANTED"},
                   "termsOfService": {"customerMatchTermsOfServiceStatus": "ACCEPTED"}, "validateOnly": false,
                   "audienceMembers": [{"userData": {"userIdentifiers": [{"emailAddress": "ab"},
                       {"address": {"givenName": "f", "familyName": "l", "regionCode": "US", "postalCode": "94045"}}]}}]})
        );
        // remove: no consent, no terms (the request has neither field).
        let remove: Value = serde_json::from_str(&body(&c, &ids, true, &[member], true)).unwrap();
        assert!(
            remove.get("consent").is_none() && remove.get("termsOfService").is_none(),
            "{remove}"
        );
        assert_eq!(remove["validateOnly"], true);
        assert_eq!(
            member_json(&[Identifier::CrmId("c-1".into())], UploadKeyType::CrmId),
            r#"{"userIdData":{"userId":"c-1"}}"#
        );
        assert_eq!(
            member_json(&[Identifier::MobileId("m".into())], UploadKeyType::MobileId),
            r#"{"mobileData":{"mobileIds":["m"]}}"#
        );
    }

    fn resp(status: u16, body: Value, headers: &[(&str, &str)]) -> Response {
        Response::new(status, headers, body.to_string())
    }

    /// The error shape of Google's "Send audience members" quickstart.
    #[test]
    fn errors_map_per_member_and_retry_after_google_delay() {
        let bad = json!({"error":{"code":400,"message":"There was a problem with the request.","status":"INVALID_ARGUMENT","details":[
            {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"INVALID_ARGUMENT","domain":"datamanager.googleapis.com"},
            {"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[
                {"field":"audience_members.audience_members[0].user_data.user_identifiers","description":"Email is not hex encoded.","reason":"INVALID_HEX_ENCODING"},
                {"field":"audience_members.audience_members[12]","reason":"INVALID_SHA256_FORMAT"}]}]}});
        match classify(&resp(400, bad, &[]), 0) {
            Failure::Members(m, _) => {
                assert_eq!(m.len(), 2);
                assert!(
                    m[&0].starts_with("INVALID_HEX_ENCODING: Email is not hex encoded."),
                    "{}",
                    m[&0]
                );
                assert!(m[&12].starts_with("INVALID_SHA256_FORMAT"), "{}", m[&12]);
            }
            other => panic!("{other:?}"),
        }
        let quota = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Too many requests.", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}});
        assert!(matches!(
            classify(&resp(429, quota, &[]), 0),
            Failure::Retry(Retry {
                after_ms: Some(12_000),
                ..
            })
        ));
        let header = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Too many requests."}});
        assert!(matches!(
            classify(&resp(429, header, &[("retry-after", "7")]), 0),
            Failure::Retry(Retry {
                after_ms: Some(7_000),
                ..
            })
        ));
        let terms = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "m", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TERMS_AND_CONDITIONS_NOT_SIGNED"}]}});
        assert!(
            matches!(classify(&resp(400, terms, &[]), 0), Failure::InvalidConfig(m) if m.contains("customer_match_terms_accepted"))
        );
        let list = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "m", "details": [
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "destinations.destinations[0].product_destination_id", "reason": "INVALID_USER_LIST_ID"}]}]}});
        assert!(matches!(
            classify(&resp(400, list, &[]), 0),
            Failure::InvalidConfig(_)
        ));
        let scope = json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "Request had insufficient authentication scopes.", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com"}]}});
        assert!(
            matches!(classify(&resp(403, scope, &[]), 0), Failure::Unauthorized(m) if m.contains("auth/datamanager"))
        );
        assert!(matches!(
            classify(&resp(409, json!({"error": {"status": "ABORTED"}}), &[]), 0),
            Failure::Retry(_)
        ));
        assert!(matches!(
            classify(
                &resp(
                    400,
                    json!({"error": {"status": "INVALID_ARGUMENT", "message": "x"}}),
                    &[]
                ),
                0
            ),
            Failure::Failed(_)
        ));
        assert_eq!(
            member_index("audience_members.audience_members[345].user_data"),
            Some(345)
        );
        assert_eq!(member_index("destinations[0]"), None);
    }
}
