//! A faithful fake of the two Google APIs the Customer Match plugin can use, on one server:
//!
//! **Google Ads REST API** (api-contracts.md §4): `offlineUserDataJobs:create`,
//! `offlineUserDataJobs/{id}:addOperations`, `:run`, `googleAds:search` (only `SELECT ... FROM
//! user_list WHERE user_list.id = N`), and the OAuth token endpoint (`POST /token`,
//! refresh-token grant) of oauth2.googleapis.com.
//!
//! Enforced like the real API, with its `google.rpc.Status` + `GoogleAdsFailure` error shape:
//! - `Authorization: Bearer` (401 UNAUTHENTICATED `authenticationError`), `developer-token`
//!   (missing: 401 `DEVELOPER_TOKEN_PARAMETER_MISSING`; unknown: 403
//!   `authorizationError.DEVELOPER_TOKEN_PROHIBITED` — the exact enum names here are [U]);
//!   `login-customer-id` of 10 digits (400 `headerError.INVALID_LOGIN_CUSTOMER_ID`) and, for a
//!   client account reached through a manager, required (403 `USER_PERMISSION_DENIED`);
//! - **developer tokens not allowlisted for Customer Match** ([`NEW_DEVELOPER_TOKEN`]): reads
//!   (`googleAds:search`) still work, but `offlineUserDataJobs:create` (also with
//!   `validateOnly`) and `:addOperations` are refused with
//!   `notAllowlistedError.CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE`. Source: Google Ads
//!   developer blog, "Changes to Customer Match Support in the Google Ads API", 2026-03-04
//!   (https://developers.google.com/ads/blog/posts/2026/03/changes-to-customer-match-support-in),
//!   and the Customer Match troubleshooting page
//!   (https://developers.google.com/google-ads/api/docs/remarketing/audience-segments/customer-match/troubleshoot),
//!   both as quoted in connector-review.md (checked 2026-12-06). The HTTP status (403
//!   PERMISSION_DENIED) and message text are [U];
//! - customer ids of 10 digits without dashes, the user list belonging to the customer
//!   (`INVALID_USER_LIST_ID`), job type `CUSTOMER_MATCH_USER_LIST`, consent enum values;
//! - JSON bodies only, unknown fields refused (400 "Invalid JSON payload received. Unknown
//!   name"), a `UserIdentifier` setting exactly one oneof field, each operation exactly one of
//!   `create` / `remove` / `removeAll`;
//! - **the list's upload key type**: a `CONTACT_INFO` list takes only `hashedEmail`,
//!   `hashedPhoneNumber` and `addressInfo`, a `CRM_ID` list only `thirdPartyUserId`, a
//!   `MOBILE_ADVERTISING_ID` list only `mobileId`; an operation with any other identifier fails
//!   as a whole with `offlineUserDataJobError.INCOMPATIBLE_UPLOAD_KEY_TYPE` ("Upload data is not
//!   compatible with the upload key type of the associated user list",
//!   https://developers.google.com/google-ads/api/reference/rpc/latest/OfflineUserDataJobErrorEnum.OfflineUserDataJobError
//!   and CustomerMatchUploadKeyTypeEnum, checked 2026-12-06: "Mixed data types are not allowed
//!   on the same list");
//! - ≤ 20 identifiers per operation and ≤ 100,000 per request (`TOO_MANY_USER_IDENTIFIERS`,
//!   request-level 400 with the operation's location);
//! - hashed fields: 64-char lowercase hex (`INVALID_SHA256_FORMAT`), `addressInfo` with all of
//!   hashed first/last name, 2-letter `countryCode` and `postalCode` (`fieldError.REQUIRED`,
//!   `INVALID_COUNTRY_CODE`). Such operation errors are returned in `partialFailureError` (HTTP
//!   200) when `enablePartialFailure` is true — only the failing operations are dropped — and as
//!   a 400 refusing the whole request otherwise;
//! - job state: operations only while PENDING, `run` only once (`offlineUserDataJobError`
//!   `INVALID_JOB_STATUS` [U name]); the operations are applied to the list at `run`. A job with
//!   `create` operations and `adUserData: DENIED` consent ends FAILED
//!   (`CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS`, Customer Match get-started guide as quoted in
//!   connector-review.md G3) and applies nothing.
//!
//! **Data Manager API** (`https://datamanager.googleapis.com/v1/...`): `audienceMembers:ingest`,
//! `audienceMembers:remove` and `accountTypes/GOOGLE_ADS/accounts/{id}/userLists/{id}` (GET).
//! Sources, all checked 2026-12-06: the REST reference pages
//! https://developers.google.com/data-manager/api/reference/rest/v1/audienceMembers/ingest,
//! .../audienceMembers/remove, .../AudienceMember, .../UserData, .../Destination,
//! .../ErrorReason, .../accountTypes.accounts.userLists/list (and the UserList resource);
//! limits https://developers.google.com/data-manager/api/limits; error shape from the
//! "Send audience members" quickstart
//! (https://developers.google.com/data-manager/api/get-started/quickstart/send-audience-members)
//! and https://developers.google.com/data-manager/api/devguides/concepts/understand-errors;
//! RudderStack `rudderlabs/rudder-transformer`
//! `src/v0/destinations/google_adwords_remarketing_lists/dataManager/{config.ts,util.ts,networkHandler.ts}`
//! (stored 2026-08). Refused like the real API:
//! - no developer token; `Authorization: Bearer` (401 UNAUTHENTICATED) with the
//!   `https://www.googleapis.com/auth/datamanager` scope (403 PERMISSION_DENIED,
//!   `ACCESS_TOKEN_SCOPE_INSUFFICIENT`, the standard Google API answer for a token without the
//!   method's scope);
//! - errors as `google.rpc.Status` with `google.rpc.ErrorInfo` (`domain:
//!   datamanager.googleapis.com`, `reason` from ErrorReason) and `google.rpc.BadRequest`
//!   `fieldViolations` naming the member (`audience_members.audience_members[N]...`); a request
//!   with any bad member is refused as a whole (400 INVALID_ARGUMENT), nothing is applied;
//! - `destinations` 1–10 (`TOO_MANY_DESTINATIONS`), `operatingAccount {accountType:
//!   GOOGLE_ADS, accountId}` the caller can reach (403 PERMISSION_DENIED; a client account
//!   needs its manager as `loginAccount`), `productDestinationId` a list of that account
//!   (`INVALID_USER_LIST_ID` [U status 400]);
//! - `audienceMembers` 1–10,000 (`TOO_MANY_AUDIENCE_MEMBERS`), each exactly one data field
//!   (`userData`, `mobileData`, `userIdData`, ...; oneof), one data type per request
//!   (`MULTIPLE_DATA_TYPES_NOT_ALLOWED`), the type the list's upload key type takes
//!   (`CONTACT_ID` → userData, `MOBILE_ID` → mobileData, `USER_ID` → userIdData;
//!   `INVALID_USER_LIST_TYPE` [U which reason Google uses]); ≤ 10 user identifiers
//!   (`TOO_MANY_USER_IDENTIFIERS`), each exactly one of `emailAddress` / `phoneNumber` /
//!   `address`; hex-encoded values (`INVALID_HEX_ENCODING`) that are SHA-256 digests
//!   (`INVALID_SHA256_FORMAT`), `address` with `givenName`, `familyName`, `regionCode`,
//!   `postalCode` (`REQUIRED_FIELD_MISSING`), `encoding` required with userData;
//! - `ingest` needs `termsOfService.customerMatchTermsOfServiceStatus: ACCEPTED` ("This must be
//!   accepted for all uploads to Customer Match userlists"; `TERMS_AND_CONDITIONS_NOT_SIGNED`,
//!   [U status 400]); consent values `CONSENT_GRANTED | CONSENT_DENIED |
//!   CONSENT_STATUS_UNSPECIFIED`; `remove` has neither `consent` nor `termsOfService` (unknown
//!   names refused);
//! - `validateOnly: true`: validated, nothing applied;
//! - quota: 429 RESOURCE_EXHAUSTED (300 requests/min, 100,000/day per Cloud project), here via
//!   [`Fault::dm_quota`] with a `google.rpc.RetryInfo` `retryDelay` and/or `Retry-After`.
//!
//! Knobs: [`Fake::fail_next`] (e.g. 429 RESOURCE_EXHAUSTED with `retryDelay`), [`Fake::pass_next`],
//! [`Fake::reject_identifier`] (an operation or member containing that value fails with the
//! given error).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Map, Value};

pub const DEVELOPER_TOKEN: &str = "devtok-ABCdef123456";
/// A valid developer token that never used Customer Match before 2026-04-01: not allowlisted.
pub const NEW_DEVELOPER_TOKEN: &str = "devtok-NEW-2026-xyz";
/// An access token with only the adwords scope (no datamanager scope).
pub const ADWORDS_ONLY_TOKEN: &str = "ya29.adwords-only-token-Qq12";
pub const ACCESS_TOKEN: &str = "ya29.fake-access-token-Zx81";
pub const CLIENT_ID: &str = "1234-abc.apps.googleusercontent.com";
pub const CLIENT_SECRET: &str = "GOCSPX-fake-client-secret";
pub const REFRESH_TOKEN: &str = "1//0fake-refresh-token";
/// An account the token's user reaches directly.
pub const CUSTOMER_ID: &str = "1234567890";
pub const USER_LIST_ID: &str = "4567";
/// A `CRM_ID` (Data Manager: `USER_ID`) list of [`CUSTOMER_ID`].
pub const CRM_USER_LIST_ID: &str = "4568";
/// A `MOBILE_ADVERTISING_ID` (Data Manager: `MOBILE_ID`) list of [`CUSTOMER_ID`].
pub const MOBILE_USER_LIST_ID: &str = "4569";
/// A client account reached only through the manager account [`MANAGER_ID`].
pub const CLIENT_CUSTOMER_ID: &str = "5550001111";
pub const CLIENT_USER_LIST_ID: &str = "8901";
pub const MANAGER_ID: &str = "9998887777";
pub const MAX_IDS_PER_OPERATION: usize = 20;
pub const MAX_IDS_PER_REQUEST: usize = 100_000;
/// Largest request body the fake reads (100,000 hashed identifiers fit).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Data Manager limits (https://developers.google.com/data-manager/api/limits).
pub const DM_MAX_MEMBERS: usize = 10_000;
pub const DM_MAX_IDENTIFIERS: usize = 10;
pub const DM_MAX_DESTINATIONS: usize = 10;
pub const DM_SCOPE: &str = "https://www.googleapis.com/auth/datamanager";
const VERSION: &str = "v26";

#[derive(Debug, Clone)]
pub struct Job {
    pub customer: String,
    pub user_list: String,
    pub status: String,
    pub consent: Option<Value>,
    /// ("create" | "remove", userIdentifiers) accepted so far.
    pub operations: Vec<(String, Vec<Value>)>,
    pub add_requests: usize,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Fault {
    /// 429 RESOURCE_EXHAUSTED with a QuotaErrorDetails retryDelay.
    pub fn quota(retry_delay: &str) -> Fault {
        Fault {
            status: 429,
            body: status_body(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                vec![json!({
                    "errorCode": {"quotaError": "RESOURCE_TEMPORARILY_EXHAUSTED"},
                    "message": "Too many requests. Retry in 30 seconds.",
                    "details": {"quotaErrorDetails": {"rateScope": "DEVELOPER",
                        "rateName": "Number of operations for basic access", "retryDelay": retry_delay}}
                })],
            ),
            headers: vec![],
        }
    }

    /// Data Manager 429 RESOURCE_EXHAUSTED: `google.rpc.RetryInfo` with `retry_delay` (when
    /// given) and a `Retry-After` header (when given).
    pub fn dm_quota(retry_delay: Option<&str>, retry_after: Option<&str>) -> Fault {
        let mut details = vec![json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "RESOURCE_EXHAUSTED", "domain": "datamanager.googleapis.com"})];
        if let Some(d) = retry_delay {
            details.push(
                json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": d}),
            );
        }
        Fault {
            status: 429,
            body: json!({"error": {"code": 429, "message": "Too many requests.",
                                   "status": "RESOURCE_EXHAUSTED", "details": details}}),
            headers: retry_after
                .map(|r| vec![("retry-after".to_string(), r.to_string())])
                .unwrap_or_default(),
        }
    }

    pub fn status(status: u16, name: &str, code: Value, message: &str) -> Fault {
        Fault {
            status,
            body: status_body(
                status,
                name,
                message,
                vec![json!({"errorCode": code, "message": message})],
            ),
            headers: vec![],
        }
    }
}

#[derive(Default)]
pub struct FakeState {
    pub developer_tokens: BTreeSet<String>,
    pub access_tokens: BTreeSet<String>,
    /// customer → manager through which it must be reached (None: directly).
    pub customers: BTreeMap<String, Option<String>>,
    /// resource name → (name, members: each a list of userIdentifiers).
    pub lists: BTreeMap<String, (String, Vec<Vec<Value>>)>,
    pub jobs: BTreeMap<u64, Job>,
    pub next_job: u64,
    pub faults: VecDeque<Option<Fault>>,
    /// list resource → Google Ads upload key type (`CONTACT_INFO`, `CRM_ID`,
    /// `MOBILE_ADVERTISING_ID`).
    pub key_types: BTreeMap<String, String>,
    /// Developer tokens allowlisted for Customer Match uploads through the Google Ads API.
    pub allowlisted: BTreeSet<String>,
    /// Access tokens without the datamanager scope.
    pub adwords_only: BTreeSet<String>,
    /// list resource → Data Manager audience members (each the member's data object).
    pub dm_members: BTreeMap<String, Vec<Value>>,
    /// (path, body) of every Data Manager POST.
    pub dm_bodies: Vec<(String, Value)>,
    /// identifier value → (errorCode, message) that makes an operation fail.
    pub rejects: BTreeMap<String, (Value, String)>,
    pub requests: Vec<(String, String, HeaderMap)>,
    pub token_grants: usize,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

pub fn list_resource(customer: &str, list: &str) -> String {
    format!("customers/{customer}/userLists/{list}")
}

pub async fn start() -> Fake {
    let mut st = FakeState {
        next_job: 700,
        ..Default::default()
    };
    st.developer_tokens.insert(DEVELOPER_TOKEN.into());
    st.developer_tokens.insert(NEW_DEVELOPER_TOKEN.into());
    st.allowlisted.insert(DEVELOPER_TOKEN.into());
    st.access_tokens.insert(ACCESS_TOKEN.into());
    st.access_tokens.insert(ADWORDS_ONLY_TOKEN.into());
    st.adwords_only.insert(ADWORDS_ONLY_TOKEN.into());
    st.customers.insert(CUSTOMER_ID.into(), None);
    st.customers.insert(MANAGER_ID.into(), None);
    st.customers
        .insert(CLIENT_CUSTOMER_ID.into(), Some(MANAGER_ID.into()));
    st.lists.insert(
        list_resource(CUSTOMER_ID, USER_LIST_ID),
        ("Switchyard VIPs".into(), vec![]),
    );
    st.lists.insert(
        list_resource(CLIENT_CUSTOMER_ID, CLIENT_USER_LIST_ID),
        ("Client list".into(), vec![]),
    );
    for (id, name, key) in [
        (CRM_USER_LIST_ID, "CRM ids", "CRM_ID"),
        (MOBILE_USER_LIST_ID, "App users", "MOBILE_ADVERTISING_ID"),
    ] {
        let resource = list_resource(CUSTOMER_ID, id);
        st.lists.insert(resource.clone(), (name.into(), vec![]));
        st.key_types.insert(resource, key.into());
    }
    let state = Arc::new(Mutex::new(st));
    let app = Router::new()
        .fallback(any(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
    let addr = crate::common::serve(app).await;
    Fake { addr, state }
}

pub fn start_in_background() -> Fake {
    crate::common::in_background(move || async move { start().await })
}

impl Fake {
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn fail_next(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push_back(Some(fault));
    }
    pub fn pass_next(&self) {
        self.state.lock().unwrap().faults.push_back(None);
    }
    pub fn reject_identifier(&self, value: &str, code: Value, message: &str) {
        self.state
            .lock()
            .unwrap()
            .rejects
            .insert(value.into(), (code, message.into()));
    }
    /// Members added through the Data Manager API (each the member's data object, e.g.
    /// `{"userData": {"userIdentifiers": [...]}}`).
    pub fn dm_members(&self, customer: &str, list: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .dm_members
            .get(&list_resource(customer, list))
            .cloned()
            .unwrap_or_default()
    }
    /// (path, body) of every Data Manager POST.
    pub fn dm_bodies(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().dm_bodies.clone()
    }
    pub fn members(&self, customer: &str, list: &str) -> Vec<Vec<Value>> {
        self.state.lock().unwrap().lists[&list_resource(customer, list)]
            .1
            .clone()
    }
    pub fn jobs(&self) -> Vec<Job> {
        self.state.lock().unwrap().jobs.values().cloned().collect()
    }
    /// (method, path) of every request.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|(m, p, _)| (m.clone(), p.clone()))
            .collect()
    }
    pub fn headers_of(&self, n: usize) -> HeaderMap {
        self.state.lock().unwrap().requests[n].2.clone()
    }
    pub fn token_grants(&self) -> usize {
        self.state.lock().unwrap().token_grants
    }
}

fn status_body(code: u16, status: &str, message: &str, errors: Vec<Value>) -> Value {
    let mut error = json!({"code": code, "message": message, "status": status});
    if !errors.is_empty() {
        error["details"] = json!([{
            "@type": format!("type.googleapis.com/google.ads.googleads.{VERSION}.errors.GoogleAdsFailure"),
            "errors": errors,
            "requestId": "fake-req-8Yk2",
        }]);
    }
    json!({ "error": error })
}

fn reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/json; charset=UTF-8"),
            ("request-id", "fake-req-8Yk2"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn ads_error(
    status: u16,
    name: &str,
    code: Value,
    message: &str,
    location: Option<Value>,
) -> Response {
    let mut e = json!({"errorCode": code, "message": message});
    if let Some(l) = location {
        e["location"] = l;
    }
    let top = if status == 400 {
        "Request contains an invalid argument."
    } else {
        message
    };
    reply(status, status_body(status, name, top, vec![e]))
}

fn bad_json(message: &str) -> Response {
    reply(
        400,
        json!({"error": {"code": 400, "message": format!("Invalid JSON payload received. {message}"),
                         "status": "INVALID_ARGUMENT"}}),
    )
}

fn loc(path: &[(&str, Option<usize>)]) -> Value {
    let elements: Vec<Value> = path
        .iter()
        .map(|(name, index)| match index {
            Some(i) => json!({"fieldName": name, "index": i}),
            None => json!({"fieldName": name}),
        })
        .collect();
    json!({ "fieldPathElements": elements })
}

fn is_hash(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), Response> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad_json(&format!(
                "Unknown name \"{k}\" at '{at}': Cannot find field."
            )));
        }
    }
    Ok(())
}

async fn handle(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = state.lock().unwrap();
    st.requests
        .push((method.to_string(), uri.path().to_string(), headers.clone()));
    let path = uri.path().to_string();

    if path == "/token" {
        return token(&mut st, &method, &headers, &body);
    }
    if path.starts_with("/v1/") {
        return data_manager(&mut st, &method, &path, &headers, &body);
    }

    // 1. Authentication and headers.
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(bearer) = bearer else {
        return ads_error(
            401,
            "UNAUTHENTICATED",
            json!({"authenticationError": "NOT_ADS_USER"}),
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            None,
        );
    };
    if !st.access_tokens.contains(bearer) {
        return ads_error(
            401,
            "UNAUTHENTICATED",
            json!({"authenticationError": "OAUTH_TOKEN_INVALID"}),
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            None,
        );
    }
    let Some(dev) = headers.get("developer-token").and_then(|v| v.to_str().ok()) else {
        return ads_error(
            401,
            "UNAUTHENTICATED",
            json!({"authenticationError": "DEVELOPER_TOKEN_PARAMETER_MISSING"}),
            "The developer token is not set in the request header.",
            None,
        );
    };
    if !st.developer_tokens.contains(dev) {
        return ads_error(
            403,
            "PERMISSION_DENIED",
            json!({"authorizationError": "DEVELOPER_TOKEN_PROHIBITED"}),
            "Developer token is not allowed with the project sent in the request.",
            None,
        );
    }
    let login = match headers
        .get("login-customer-id")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => None,
        Some(l) if l.len() == 10 && l.bytes().all(|b| b.is_ascii_digit()) => Some(l.to_string()),
        Some(_) => {
            return ads_error(
                400,
                "INVALID_ARGUMENT",
                json!({"headerError": "INVALID_LOGIN_CUSTOMER_ID"}),
                "The login customer ID could not be validated.",
                None,
            )
        }
    };

    // 2. Route: /v26/customers/{cid}/...
    let Some(rest) = path.strip_prefix(&format!("/{VERSION}/customers/")) else {
        return reply(
            404,
            json!({"error": {"code": 404, "message": format!("Method not found: {path}"), "status": "NOT_FOUND"}}),
        );
    };
    let (cid, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if cid.len() != 10 || !cid.bytes().all(|b| b.is_ascii_digit()) {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"requestError": "INVALID_CUSTOMER_ID"}),
            "Customer ID is invalid.",
            None,
        );
    }
    match st.customers.get(cid) {
        None => {
            return ads_error(
                403,
                "PERMISSION_DENIED",
                json!({"authorizationError": "USER_PERMISSION_DENIED"}),
                "User doesn't have permission to access customer.",
                None,
            )
        }
        Some(Some(manager)) if login.as_deref() != Some(manager.as_str()) => {
            return ads_error(
                403,
                "PERMISSION_DENIED",
                json!({"authorizationError": "USER_PERMISSION_DENIED"}),
                "User doesn't have permission to access customer. Note: If you're accessing a client customer, the manager's customer id must be set in the 'login-customer-id' header.",
                None,
            )
        }
        _ => {}
    }
    let cid = cid.to_string();
    if method != Method::POST {
        return reply(
            404,
            json!({"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}),
        );
    }
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) if is_json => v,
        _ => return bad_json("The request body must be a JSON object (application/json)."),
    };

    if let Some(Some(f)) = st.faults.pop_front() {
        return fault_response(f);
    }

    if tail == "googleAds:search" {
        return search(&st, &cid, &body);
    }
    // Since 2026-04-01 Customer Match uploads need an allowlisted developer token.
    if tail.starts_with("offlineUserDataJobs") && !st.allowlisted.contains(dev) {
        return ads_error(
            403,
            "PERMISSION_DENIED",
            json!({"notAllowlistedError": "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"}),
            "Customer is not allowlisted for accessing this feature.",
            None,
        );
    }
    if tail == "offlineUserDataJobs:create" {
        return create_job(&mut st, &cid, &body);
    }
    if let Some(job) = tail.strip_prefix("offlineUserDataJobs/") {
        if let Some((id, verb)) = job.split_once(':') {
            if let Ok(id) = id.parse::<u64>() {
                let known = st.jobs.get(&id).is_some_and(|j| j.customer == cid);
                if !known {
                    return reply(
                        404,
                        json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}),
                    );
                }
                return match verb {
                    "addOperations" => add_operations(&mut st, id, &body),
                    "run" => run_job(&mut st, id, &body),
                    _ => reply(
                        404,
                        json!({"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}),
                    ),
                };
            }
        }
    }
    reply(
        404,
        json!({"error": {"code": 404, "message": format!("Method not found: {path}"), "status": "NOT_FOUND"}}),
    )
}

fn token(st: &mut FakeState, method: &Method, headers: &HeaderMap, body: &[u8]) -> Response {
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if *method != Method::POST || !form {
        return reply(
            400,
            json!({"error": "invalid_request", "error_description": "Invalid request"}),
        );
    }
    let params: BTreeMap<String, String> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if params.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return reply(
            400,
            json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}),
        );
    }
    if params.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || params.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return reply(
            401,
            json!({"error": "invalid_client", "error_description": "The OAuth client was not found."}),
        );
    }
    if params.get("refresh_token").map(String::as_str) != Some(REFRESH_TOKEN) {
        return reply(
            400,
            json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
        );
    }
    st.token_grants += 1;
    let token = format!("ya29.refreshed-{}", st.token_grants);
    st.access_tokens.insert(token.clone());
    reply(
        200,
        json!({"access_token": token, "expires_in": 3599, "scope": format!("https://www.googleapis.com/auth/adwords {DM_SCOPE}"), "token_type": "Bearer"}),
    )
}

fn search(st: &FakeState, cid: &str, body: &Value) -> Response {
    let Some(query) = body.get("query").and_then(Value::as_str) else {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"queryError": "EXPECTED_SELECT"}),
            "Expected SELECT.",
            None,
        );
    };
    let q = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(id) = q
        .strip_prefix("SELECT ")
        .and_then(|s| s.split_once(" FROM user_list WHERE user_list.id = "))
        .map(|(_, id)| id.trim().to_string())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
    else {
        return ads_error(400, "INVALID_ARGUMENT", json!({"queryError": "UNEXPECTED_END_OF_QUERY"}), "Error in query: the fake supports only SELECT ... FROM user_list WHERE user_list.id = N.", None);
    };
    let resource = list_resource(cid, &id);
    let results: Vec<Value> = st
        .lists
        .get(&resource)
        .map(|(name, _)| {
            json!({"userList": {"resourceName": resource, "id": id, "name": name, "type": "CRM_BASED",
                "crmBasedUserList": {"uploadKeyType": key_type(st, &resource), "dataSourceType": "FIRST_PARTY"}}})
        })
        .into_iter()
        .collect();
    reply(
        200,
        json!({"results": results, "fieldMask": "userList.id,userList.name,userList.type,userList.crmBasedUserList.uploadKeyType", "queryResourceConsumption": "10"}),
    )
}

fn create_job(st: &mut FakeState, cid: &str, body: &Value) -> Response {
    let obj = body.as_object().unwrap();
    if let Err(r) = check_keys(
        obj,
        &["job", "validateOnly", "enableMatchRateRangePreview"],
        "",
    ) {
        return r;
    }
    let Some(job) = obj.get("job").and_then(Value::as_object) else {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"fieldError": "REQUIRED"}),
            "The required field was not present.",
            Some(loc(&[("job", None)])),
        );
    };
    if let Err(r) = check_keys(
        job,
        &["type", "customerMatchUserListMetadata", "externalId"],
        "job",
    ) {
        return r;
    }
    if job.get("type").and_then(Value::as_str) != Some("CUSTOMER_MATCH_USER_LIST") {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"offlineUserDataJobError": "INVALID_JOB_TYPE"}),
            "The type of the job is not supported here.",
            Some(loc(&[("job", None), ("type", None)])),
        );
    }
    let Some(meta) = job
        .get("customerMatchUserListMetadata")
        .and_then(Value::as_object)
    else {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"fieldError": "REQUIRED"}),
            "The required field was not present.",
            Some(loc(&[
                ("job", None),
                ("customer_match_user_list_metadata", None),
            ])),
        );
    };
    if let Err(r) = check_keys(
        meta,
        &["userList", "consent"],
        "job.customer_match_user_list_metadata",
    ) {
        return r;
    }
    let list = meta.get("userList").and_then(Value::as_str).unwrap_or("");
    if !list.starts_with(&format!("customers/{cid}/userLists/")) || !st.lists.contains_key(list) {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"offlineUserDataJobError": "INVALID_USER_LIST_ID"}),
            "The user list ID provided for the job is invalid.",
            Some(loc(&[
                ("job", None),
                ("customer_match_user_list_metadata", None),
                ("user_list", None),
            ])),
        );
    }
    if let Some(consent) = meta.get("consent") {
        let Some(c) = consent.as_object() else {
            return bad_json("Invalid value at 'job.customer_match_user_list_metadata.consent'.");
        };
        if let Err(r) = check_keys(
            c,
            &["adUserData", "adPersonalization"],
            "job.customer_match_user_list_metadata.consent",
        ) {
            return r;
        }
        for v in c.values() {
            if !["UNSPECIFIED", "UNKNOWN", "GRANTED", "DENIED"].contains(&v.as_str().unwrap_or(""))
            {
                return bad_json(&format!("Invalid value at 'job.customer_match_user_list_metadata.consent' ({v}), not a ConsentStatus."));
            }
        }
    }
    if obj.get("validateOnly").and_then(Value::as_bool) == Some(true) {
        return reply(200, json!({}));
    }
    st.next_job += 1;
    let id = st.next_job;
    st.jobs.insert(
        id,
        Job {
            customer: cid.into(),
            user_list: list.into(),
            status: "PENDING".into(),
            consent: meta.get("consent").cloned(),
            operations: vec![],
            add_requests: 0,
        },
    );
    reply(
        200,
        json!({"resourceName": format!("customers/{cid}/offlineUserDataJobs/{id}")}),
    )
}

/// An operation that passed: its kind (`create`, `remove`, `removeAll`) and user identifiers.
type ValidOperation = (String, Vec<Value>);
/// An operation-level error: (errorCode, message, location).
type OperationError = (Value, String, Value);

/// Validates one operation: an operation-level error fails that operation alone; malformed JSON
/// fails the whole request (the outer `Err`, the response to send).
fn check_operation(
    st: &FakeState,
    key: &str,
    k: usize,
    op: &Value,
) -> Result<Result<ValidOperation, OperationError>, Response> {
    let Some(obj) = op.as_object() else {
        return Err(bad_json(&format!("Invalid value at 'operations[{k}]'.")));
    };
    check_keys(
        obj,
        &["create", "remove", "removeAll"],
        &format!("operations[{k}]"),
    )?;
    if obj.len() != 1 {
        return Err(bad_json(&format!(
            "Oneof field 'operation' is already set at 'operations[{k}]'."
        )));
    }
    let (kind, inner) = obj.iter().next().unwrap();
    if kind == "removeAll" {
        return Ok(Ok(("removeAll".into(), vec![])));
    }
    let Some(inner) = inner.as_object() else {
        return Err(bad_json(&format!(
            "Invalid value at 'operations[{k}].{kind}'."
        )));
    };
    check_keys(
        inner,
        &[
            "userIdentifiers",
            "transactionAttribute",
            "userAttribute",
            "consent",
        ],
        &format!("operations[{k}].{kind}"),
    )?;
    let ids = inner
        .get("userIdentifiers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let op_loc = |extra: &[(&str, Option<usize>)]| {
        let mut p = vec![("operations", Some(k)), (kind.as_str(), None)];
        p.extend_from_slice(extra);
        loc(&p)
    };
    if ids.is_empty() {
        return Ok(Err((
            json!({"offlineUserDataJobError": "MISSING_USER_IDENTIFIER"}),
            "User identifier is required.".into(),
            op_loc(&[]),
        )));
    }
    for (j, id) in ids.iter().enumerate() {
        let at = format!("operations[{k}].{kind}.user_identifiers[{j}]");
        let Some(o) = id.as_object() else {
            return Err(bad_json(&format!("Invalid value at '{at}'.")));
        };
        check_keys(
            o,
            &[
                "hashedEmail",
                "hashedPhoneNumber",
                "mobileId",
                "thirdPartyUserId",
                "addressInfo",
                "userIdentifierSource",
            ],
            &at,
        )?;
        let set: Vec<&String> = o.keys().filter(|k| *k != "userIdentifierSource").collect();
        if set.len() != 1 {
            return Err(bad_json(&format!(
                "Oneof field 'identifier' is already set. Cannot set '{}' at '{at}'.",
                set.get(1).map(|s| s.as_str()).unwrap_or("(none)")
            )));
        }
        let field = set[0].as_str();
        let value = &o[field];
        let fits = match key {
            "CRM_ID" => field == "thirdPartyUserId",
            "MOBILE_ADVERTISING_ID" => field == "mobileId",
            _ => matches!(field, "hashedEmail" | "hashedPhoneNumber" | "addressInfo"),
        };
        if !fits {
            return Ok(Err((
                json!({"offlineUserDataJobError": "INCOMPATIBLE_UPLOAD_KEY_TYPE"}),
                "Upload data is not compatible with the upload key type of the associated user list.".into(),
                op_loc(&[("user_identifiers", Some(j))]),
            )));
        }
        let id_loc = |name: &str| op_loc(&[("user_identifiers", Some(j)), (name, None)]);
        let malformed = (
            json!({"offlineUserDataJobError": "INVALID_SHA256_FORMAT"}),
            "The SHA256 encoded value is malformed.".to_string(),
        );
        match field {
            "hashedEmail" | "hashedPhoneNumber" => {
                if !is_hash(value) {
                    let name = if field == "hashedEmail" {
                        "hashed_email"
                    } else {
                        "hashed_phone_number"
                    };
                    return Ok(Err((malformed.0, malformed.1, id_loc(name))));
                }
            }
            "addressInfo" => {
                let Some(a) = value.as_object() else {
                    return Err(bad_json(&format!("Invalid value at '{at}.address_info'.")));
                };
                check_keys(
                    a,
                    &[
                        "hashedFirstName",
                        "hashedLastName",
                        "city",
                        "state",
                        "countryCode",
                        "postalCode",
                        "hashedStreetAddress",
                    ],
                    &format!("{at}.address_info"),
                )?;
                for (f, name) in [
                    ("hashedFirstName", "hashed_first_name"),
                    ("hashedLastName", "hashed_last_name"),
                ] {
                    match a.get(f) {
                        None => {
                            return Ok(Err((
                                json!({"fieldError": "REQUIRED"}),
                                "The required field was not present.".into(),
                                id_loc(name),
                            )))
                        }
                        Some(v) if !is_hash(v) => {
                            return Ok(Err((
                                malformed.0.clone(),
                                malformed.1.clone(),
                                id_loc(name),
                            )))
                        }
                        _ => {}
                    }
                }
                let cc = a.get("countryCode").and_then(Value::as_str).unwrap_or("");
                if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Ok(Err((
                        json!({"offlineUserDataJobError": "INVALID_COUNTRY_CODE"}),
                        "Country code is invalid.".into(),
                        id_loc("country_code"),
                    )));
                }
                if a.get("postalCode")
                    .and_then(Value::as_str)
                    .is_none_or(|p| p.trim().is_empty())
                {
                    return Ok(Err((
                        json!({"fieldError": "REQUIRED"}),
                        "The required field was not present.".into(),
                        id_loc("postal_code"),
                    )));
                }
            }
            _ => {
                if value.as_str().is_none_or(str::is_empty) {
                    return Ok(Err((
                        json!({"fieldError": "REQUIRED"}),
                        "The required field was not present.".into(),
                        id_loc(field),
                    )));
                }
            }
        }
        // Values a test marked as refused.
        let values: Vec<String> = match value {
            Value::String(s) => vec![s.clone()],
            Value::Object(m) => m
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        };
        for v in values {
            if let Some((code, message)) = st.rejects.get(&v) {
                return Ok(Err((
                    code.clone(),
                    message.clone(),
                    op_loc(&[("user_identifiers", Some(j))]),
                )));
            }
        }
    }
    Ok(Ok((kind.clone(), ids)))
}

fn add_operations(st: &mut FakeState, id: u64, body: &Value) -> Response {
    let obj = body.as_object().unwrap();
    if let Err(r) = check_keys(
        obj,
        &[
            "operations",
            "enablePartialFailure",
            "enableWarnings",
            "validateOnly",
        ],
        "",
    ) {
        return r;
    }
    let status = st.jobs[&id].status.clone();
    if status != "PENDING" {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"offlineUserDataJobError": "INVALID_JOB_STATUS"}),
            &format!("Operations cannot be added to a job in status {status}."),
            None,
        );
    }
    let Some(ops) = obj.get("operations").and_then(Value::as_array) else {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"fieldError": "REQUIRED"}),
            "The required field was not present.",
            Some(loc(&[("operations", None)])),
        );
    };
    if ops.is_empty() {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"mutateError": "EMPTY_OPERATIONS"}),
            "The request contains no operations.",
            None,
        );
    }
    // Request-level limits first.
    let mut total = 0;
    for (k, op) in ops.iter().enumerate() {
        let n = op
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|i| i.get("userIdentifiers"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        total += n;
        if n > MAX_IDS_PER_OPERATION || total > MAX_IDS_PER_REQUEST {
            return ads_error(400, "INVALID_ARGUMENT", json!({"offlineUserDataJobError": "TOO_MANY_USER_IDENTIFIERS"}), "Maximum number of user identifiers allowed per request is 100,000 and per operation is 20.", Some(loc(&[("operations", Some(k))])));
        }
    }
    let partial = obj.get("enablePartialFailure").and_then(Value::as_bool) == Some(true);
    let key = key_type(st, &st.jobs[&id].user_list).to_string();
    let mut good = Vec::new();
    let mut errors = Vec::new();
    for (k, op) in ops.iter().enumerate() {
        match check_operation(st, &key, k, op) {
            Err(response) => return response,
            Ok(Ok(accepted)) => good.push(accepted),
            Ok(Err((code, message, location))) => {
                errors.push(json!({"errorCode": code, "message": message, "location": location}))
            }
        }
    }
    if !errors.is_empty() && !partial {
        return reply(
            400,
            status_body(
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                errors,
            ),
        );
    }
    if obj.get("validateOnly").and_then(Value::as_bool) == Some(true) {
        return reply(200, json!({}));
    }
    let job = st.jobs.get_mut(&id).unwrap();
    job.operations.extend(good);
    job.add_requests += 1;
    if errors.is_empty() {
        return reply(200, json!({}));
    }
    let n = errors.len();
    let failure = status_body(
        3,
        "INVALID_ARGUMENT",
        &format!(
            "Multiple errors in ‘details’. First error: {}",
            errors[0]["message"].as_str().unwrap_or("")
        ),
        errors,
    );
    let mut pf = failure["error"].clone();
    pf["code"] = json!(3);
    if let Some(o) = pf.as_object_mut() {
        o.remove("status");
    }
    let _ = n;
    reply(200, json!({ "partialFailureError": pf }))
}

fn run_job(st: &mut FakeState, id: u64, body: &Value) -> Response {
    if let Err(r) = check_keys(body.as_object().unwrap(), &["validateOnly"], "") {
        return r;
    }
    let job = st.jobs[&id].clone();
    if job.status != "PENDING" {
        return ads_error(
            400,
            "INVALID_ARGUMENT",
            json!({"offlineUserDataJobError": "INVALID_JOB_STATUS"}),
            &format!("The job cannot be run in status {}.", job.status),
            None,
        );
    }
    let denied = job
        .consent
        .as_ref()
        .and_then(|c| c.get("adUserData"))
        .and_then(Value::as_str)
        == Some("DENIED");
    if denied && job.operations.iter().any(|(kind, _)| kind == "create") {
        st.jobs.get_mut(&id).unwrap().status = "FAILED".into();
        return reply(
            200,
            json!({"name": format!("customers/{}/operations/{id}-run", job.customer),
                   "metadata": {"failureReason": "CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS"}}),
        );
    }
    let (_, members) = st.lists.get_mut(&job.user_list).unwrap();
    // Operations apply in order; runs of the same kind are applied together (linear time).
    let mut k = 0;
    while k < job.operations.len() {
        let kind = job.operations[k].0.clone();
        let mut end = k;
        while end < job.operations.len() && job.operations[end].0 == kind {
            end += 1;
        }
        let run = &job.operations[k..end];
        match kind.as_str() {
            "create" => {
                let mut present: std::collections::HashSet<String> = members
                    .iter()
                    .map(|m| Value::from(m.clone()).to_string())
                    .collect();
                for (_, ids) in run {
                    if present.insert(Value::from(ids.clone()).to_string()) {
                        members.push(ids.clone());
                    }
                }
            }
            "remove" => {
                // A member goes when it shares any identifier with a removed user.
                let gone: std::collections::HashSet<String> = run
                    .iter()
                    .flat_map(|(_, ids)| ids.iter().map(Value::to_string))
                    .collect();
                members.retain(|m| !m.iter().any(|x| gone.contains(&x.to_string())));
            }
            _ => members.clear(),
        }
        k = end;
    }
    st.jobs.get_mut(&id).unwrap().status = "SUCCESS".into();
    reply(
        200,
        json!({"name": format!("customers/{}/operations/{id}-run", job.customer),
               "metadata": {"@type": format!("type.googleapis.com/google.ads.googleads.{VERSION}.resources.OfflineUserDataJobMetadata")}}),
    )
}

fn key_type<'a>(st: &'a FakeState, list: &str) -> &'a str {
    st.key_types
        .get(list)
        .map(String::as_str)
        .unwrap_or("CONTACT_INFO")
}

// ---------------------------------------------------------------------------------------------
// Data Manager API

const DM_DOMAIN: &str = "datamanager.googleapis.com";

/// A Data Manager error: `google.rpc.Status` with ErrorInfo and, when given, BadRequest
/// field violations `(field, reason, description)`.
fn dm_error(
    status: u16,
    name: &str,
    reason: &str,
    message: &str,
    violations: &[(String, String, String)],
) -> Response {
    let mut details = vec![json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                  "reason": reason, "domain": DM_DOMAIN})];
    if !violations.is_empty() {
        let v: Vec<Value> = violations
            .iter()
            .map(|(field, reason, description)| {
                let mut o = json!({"field": field, "reason": reason});
                if !description.is_empty() {
                    o["description"] = json!(description);
                }
                o
            })
            .collect();
        details.push(
            json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": v}),
        );
    }
    reply(
        status,
        json!({"error": {"code": status, "message": message, "status": name, "details": details}}),
    )
}

fn dm_invalid(reason: &str, violations: &[(String, String, String)]) -> Response {
    dm_error(
        400,
        "INVALID_ARGUMENT",
        reason,
        "There was a problem with the request.",
        violations,
    )
}

/// A required list field of 1 to `max` entries (REQUIRED_FIELD_MISSING / `too_many`).
fn dm_list(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    max: usize,
    too_many: &str,
    message: &str,
) -> Result<Vec<Value>, Response> {
    let items = obj
        .get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let missing = "REQUIRED_FIELD_MISSING";
    if items.is_empty() {
        return Err(dm_invalid(
            missing,
            &[(field.into(), missing.into(), String::new())],
        ));
    }
    if items.len() > max {
        return Err(dm_invalid(
            too_many,
            &[(field.into(), too_many.into(), message.into())],
        ));
    }
    Ok(items)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn data_manager(
    st: &mut FakeState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    // OAuth with the datamanager scope; no developer token involved.
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(bearer) = bearer.filter(|b| st.access_tokens.contains(*b)) else {
        return reply(
            401,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                             "status": "UNAUTHENTICATED",
                             "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_TYPE_UNSUPPORTED", "domain": "googleapis.com"}]}}),
        );
    };
    if st.adwords_only.contains(bearer) {
        return reply(
            403,
            json!({"error": {"code": 403, "message": "Request had insufficient authentication scopes.",
                             "status": "PERMISSION_DENIED",
                             "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com",
                                          "metadata": {"method": "google.ads.datamanager.v1.IngestionService", "service": DM_DOMAIN}}]}}),
        );
    }

    if *method == Method::GET {
        if let Some(Some(f)) = st.faults.pop_front() {
            return fault_response(f);
        }
        return dm_get_user_list(st, path, headers);
    }
    if *method != Method::POST {
        return reply(
            404,
            json!({"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}),
        );
    }
    let remove = match path {
        "/v1/audienceMembers:ingest" => false,
        "/v1/audienceMembers:remove" => true,
        _ => {
            return reply(
                404,
                json!({"error": {"code": 404, "message": format!("Method not found: {path}"), "status": "NOT_FOUND"}}),
            )
        }
    };
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) if is_json => v,
        _ => return bad_json("The request body must be a JSON object (application/json)."),
    };
    st.dm_bodies.push((path.to_string(), body.clone()));
    if let Some(Some(f)) = st.faults.pop_front() {
        return fault_response(f);
    }
    let obj = body.as_object().unwrap();
    let mut allowed = vec![
        "destinations",
        "audienceMembers",
        "validateOnly",
        "encoding",
        "encryptionInfo",
    ];
    if !remove {
        allowed.extend(["consent", "termsOfService"]);
    }
    if let Err(r) = check_keys(obj, &allowed, "") {
        return r;
    }

    // Destinations.
    let destinations = match dm_list(
        obj,
        "destinations",
        "destinations",
        DM_MAX_DESTINATIONS,
        "TOO_MANY_DESTINATIONS",
        "Maximum number of destinations allowed per request is 10.",
    ) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut lists = Vec::new();
    for (d, dest) in destinations.iter().enumerate() {
        let at = format!("destinations[{d}]");
        let Some(o) = dest.as_object() else {
            return bad_json(&format!("Invalid value at '{at}'."));
        };
        if let Err(r) = check_keys(
            o,
            &[
                "reference",
                "loginAccount",
                "linkedAccount",
                "operatingAccount",
                "productDestinationId",
            ],
            &at,
        ) {
            return r;
        }
        let account = |name: &str| -> Result<Option<String>, Response> {
            let Some(a) = o.get(name) else {
                return Ok(None);
            };
            let Some(a) = a.as_object() else {
                return Err(bad_json(&format!("Invalid value at '{at}.{name}'.")));
            };
            check_keys(
                a,
                &["accountType", "product", "accountId"],
                &format!("{at}.{name}"),
            )?;
            let kind = a
                .get("accountType")
                .or_else(|| a.get("product"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if kind != "GOOGLE_ADS" {
                return Err(dm_invalid(
                    "INVALID_DESTINATION",
                    &[(
                        format!("destinations.{at}.{name}"),
                        "INVALID_DESTINATION".into(),
                        "This fake knows only GOOGLE_ADS accounts.".into(),
                    )],
                ));
            }
            let id = a.get("accountId").and_then(Value::as_str).unwrap_or("");
            if id.len() != 10 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(dm_invalid(
                    "INVALID_DESTINATION",
                    &[(
                        format!("destinations.{at}.{name}.account_id"),
                        "INVALID_FORMAT".into(),
                        "Account ID must be 10 digits without dashes.".into(),
                    )],
                ));
            }
            Ok(Some(id.to_string()))
        };
        let operating = match account("operatingAccount") {
            Ok(Some(id)) => id,
            Ok(None) => {
                return dm_invalid(
                    "REQUIRED_FIELD_MISSING",
                    &[(
                        format!("destinations.{at}.operating_account"),
                        "REQUIRED_FIELD_MISSING".into(),
                        String::new(),
                    )],
                )
            }
            Err(r) => return r,
        };
        let login = match account("loginAccount") {
            Ok(l) => l,
            Err(r) => return r,
        };
        let reachable = match st.customers.get(&operating) {
            None => false,
            Some(None) => login.is_none() || login.as_deref() == Some(operating.as_str()),
            Some(Some(manager)) => login.as_deref() == Some(manager.as_str()),
        };
        if !reachable {
            return dm_error(
                403,
                "PERMISSION_DENIED",
                "PERMISSION_DENIED",
                "The caller does not have permission",
                &[],
            );
        }
        let list = o
            .get("productDestinationId")
            .and_then(Value::as_str)
            .unwrap_or("");
        let resource = list_resource(&operating, list);
        if list.is_empty() || !st.lists.contains_key(&resource) {
            return dm_invalid(
                "INVALID_USER_LIST_ID",
                &[(
                    format!("destinations.{at}.product_destination_id"),
                    "INVALID_USER_LIST_ID".into(),
                    "User list is not valid.".into(),
                )],
            );
        }
        lists.push(resource);
    }

    if !remove {
        let tos = body
            .pointer("/termsOfService/customerMatchTermsOfServiceStatus")
            .and_then(Value::as_str);
        if tos != Some("ACCEPTED") {
            return dm_invalid(
                "TERMS_AND_CONDITIONS_NOT_SIGNED",
                &[(
                    "terms_of_service".into(),
                    "TERMS_AND_CONDITIONS_NOT_SIGNED".into(),
                    "Required terms and conditions are not accepted.".into(),
                )],
            );
        }
        if let Some(c) = obj.get("consent") {
            let Some(c) = c.as_object() else {
                return bad_json("Invalid value at 'consent'.");
            };
            if let Err(r) = check_keys(c, &["adUserData", "adPersonalization"], "consent") {
                return r;
            }
            for v in c.values() {
                if ![
                    "CONSENT_GRANTED",
                    "CONSENT_DENIED",
                    "CONSENT_STATUS_UNSPECIFIED",
                ]
                .contains(&v.as_str().unwrap_or(""))
                {
                    return bad_json(&format!(
                        "Invalid value at 'consent' ({v}), not a ConsentStatus."
                    ));
                }
            }
        }
    }
    let encoding = obj.get("encoding").and_then(Value::as_str);
    if let Some(e) = encoding {
        if !["HEX", "BASE64"].contains(&e) {
            return bad_json(&format!("Invalid value at 'encoding' (\"{e}\")."));
        }
    }

    // Members.
    let members = match dm_list(
        obj,
        "audienceMembers",
        "audience_members",
        DM_MAX_MEMBERS,
        "TOO_MANY_AUDIENCE_MEMBERS",
        "Maximum number of audience members allowed per request is 10,000.",
    ) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let mut violations: Vec<(String, String, String)> = Vec::new();
    let mut kinds = BTreeSet::new();
    let mut data = Vec::with_capacity(members.len());
    for (n, m) in members.iter().enumerate() {
        let at = format!("audience_members.audience_members[{n}]");
        let Some(o) = m.as_object() else {
            return bad_json(&format!("Invalid value at 'audience_members[{n}]'."));
        };
        if let Err(r) = check_keys(
            o,
            &[
                "destinationReferences",
                "consent",
                "userData",
                "pairData",
                "mobileData",
                "userIdData",
                "ppidData",
            ],
            &format!("audience_members[{n}]"),
        ) {
            return r;
        }
        let set: Vec<&String> = o
            .keys()
            .filter(|k| !matches!(k.as_str(), "destinationReferences" | "consent"))
            .collect();
        if set.len() != 1 {
            return bad_json(&format!(
                "Oneof field 'data' is already set. Cannot set '{}' at 'audience_members[{n}]'.",
                set.get(1).map(|s| s.as_str()).unwrap_or("(none)")
            ));
        }
        let kind = set[0].as_str();
        kinds.insert(kind.to_string());
        let value = &o[kind];
        let mut bad = |reason: &str, field: &str, description: &str| {
            violations.push((
                format!("{at}{field}"),
                reason.to_string(),
                description.to_string(),
            ));
        };
        let mut values: Vec<String> = Vec::new();
        match kind {
            "userData" => {
                let ids = value
                    .get("userIdentifiers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if ids.is_empty() {
                    bad("REQUIRED_FIELD_MISSING", ".user_data.user_identifiers", "");
                } else if ids.len() > DM_MAX_IDENTIFIERS {
                    bad(
                        "TOO_MANY_USER_IDENTIFIERS",
                        ".user_data.user_identifiers",
                        "Maximum number of user identifiers allowed per audience member is 10.",
                    );
                }
                if encoding.is_none() {
                    return dm_invalid(
                        "REQUIRED_FIELD_MISSING",
                        &[(
                            "encoding".into(),
                            "REQUIRED_FIELD_MISSING".into(),
                            "Encoding is required for UserData uploads.".into(),
                        )],
                    );
                }
                for id in &ids {
                    let Some(io) = id.as_object() else {
                        return bad_json("Invalid value at 'user_identifiers'.");
                    };
                    if let Err(r) = check_keys(
                        io,
                        &["emailAddress", "phoneNumber", "address"],
                        &format!("audience_members[{n}].user_data.user_identifiers"),
                    ) {
                        return r;
                    }
                    if io.len() != 1 {
                        return bad_json("Oneof field 'identifier' is already set.");
                    }
                    let (field, v) = io.iter().next().unwrap();
                    let hashes: Vec<String> = match field.as_str() {
                        "address" => {
                            let a = v.as_object().cloned().unwrap_or_default();
                            if let Err(r) = check_keys(
                                &a,
                                &["givenName", "familyName", "regionCode", "postalCode"],
                                "address",
                            ) {
                                return r;
                            }
                            for f in ["givenName", "familyName", "regionCode", "postalCode"] {
                                if a.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                                    bad(
                                        "REQUIRED_FIELD_MISSING",
                                        ".user_data.user_identifiers",
                                        &format!("{f} is required."),
                                    );
                                }
                            }
                            let rc = a.get("regionCode").and_then(Value::as_str).unwrap_or("");
                            if rc.len() != 2 || !rc.bytes().all(|b| b.is_ascii_uppercase()) {
                                bad(
                                    "INVALID_FORMAT",
                                    ".user_data.user_identifiers",
                                    "Region code must be ISO-3166-1 alpha-2.",
                                );
                            }
                            if let Some(p) = a.get("postalCode").and_then(Value::as_str) {
                                values.push(p.to_string());
                            }
                            ["givenName", "familyName"]
                                .iter()
                                .filter_map(|f| {
                                    a.get(*f).and_then(Value::as_str).map(str::to_string)
                                })
                                .collect()
                        }
                        _ => vec![v.as_str().unwrap_or("").to_string()],
                    };
                    for h in hashes {
                        if encoding == Some("HEX") && !is_hex(&h) {
                            bad(
                                "INVALID_HEX_ENCODING",
                                ".user_data.user_identifiers",
                                "Email is not hex encoded.",
                            );
                        } else if encoding == Some("HEX") && h.len() != 64 {
                            bad("INVALID_SHA256_FORMAT", "", "");
                        }
                        values.push(h);
                    }
                }
            }
            "mobileData" => {
                let ids = value
                    .get("mobileIds")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if ids.is_empty() {
                    bad("REQUIRED_FIELD_MISSING", ".mobile_data.mobile_ids", "");
                } else if ids.len() > DM_MAX_IDENTIFIERS {
                    bad(
                        "TOO_MANY_USER_IDENTIFIERS",
                        ".mobile_data.mobile_ids",
                        "At most 10 mobileIds can be provided in a single AudienceMember.",
                    );
                }
                for id in ids {
                    let v = id.as_str().unwrap_or("");
                    if v.is_empty() || v.len() > 64 {
                        bad(
                            "INVALID_MOBILE_ID_FORMAT",
                            ".mobile_data.mobile_ids",
                            "Mobile ID format is not valid.",
                        );
                    }
                    values.push(v.to_string());
                }
            }
            "userIdData" => {
                let v = value.get("userId").and_then(Value::as_str).unwrap_or("");
                if v.is_empty() {
                    bad("REQUIRED_FIELD_MISSING", ".user_id_data.user_id", "");
                }
                values.push(v.to_string());
            }
            _ => bad(
                "INVALID_AUDIENCE_MEMBER",
                "",
                "This fake takes userData, mobileData and userIdData.",
            ),
        }
        for v in values {
            if let Some((code, message)) = st.rejects.get(&v) {
                let reason = code
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| code.to_string());
                bad(&reason, "", message);
            }
        }
        let mut one = Map::new();
        one.insert(kind.to_string(), value.clone());
        data.push(Value::Object(one));
    }
    if kinds.len() > 1 {
        return dm_invalid(
            "MULTIPLE_DATA_TYPES_NOT_ALLOWED",
            &[(
                "audience_members".into(),
                "MULTIPLE_DATA_TYPES_NOT_ALLOWED".into(),
                "Multiple data types are not allowed to be ingested in a single request.".into(),
            )],
        );
    }
    // The list's upload key type decides the data type it takes.
    let kind = kinds.into_iter().next().unwrap_or_default();
    for list in &lists {
        let fits = match key_type(st, list) {
            "CRM_ID" => kind == "userIdData",
            "MOBILE_ADVERTISING_ID" => kind == "mobileData",
            _ => kind == "userData",
        };
        if !fits {
            return dm_invalid(
                "INVALID_USER_LIST_TYPE",
                &[(
                    "audience_members".into(),
                    "INVALID_USER_LIST_TYPE".into(),
                    "Type of the user list is not applicable for this request.".into(),
                )],
            );
        }
    }
    if !violations.is_empty() {
        return dm_invalid("INVALID_ARGUMENT", &violations);
    }
    if obj.get("validateOnly").and_then(Value::as_bool) == Some(true) {
        return reply(200, json!({}));
    }
    for list in lists {
        let stored = st.dm_members.entry(list).or_default();
        if remove {
            // A member goes when it shares any identifier with a removed one.
            let gone: BTreeSet<String> = data.iter().flat_map(identifier_texts).collect();
            stored.retain(|m| !identifier_texts(m).iter().any(|x| gone.contains(x)));
        } else {
            let mut present: std::collections::HashSet<String> =
                stored.iter().map(Value::to_string).collect();
            for m in &data {
                if present.insert(m.to_string()) {
                    stored.push(m.clone());
                }
            }
        }
    }
    st.next_job += 1;
    reply(200, json!({"requestId": format!("dm-req-{}", st.next_job)}))
}

/// Each identifier of a stored member as JSON text.
fn identifier_texts(member: &Value) -> Vec<String> {
    if let Some(ids) = member
        .pointer("/userData/userIdentifiers")
        .and_then(Value::as_array)
    {
        return ids.iter().map(Value::to_string).collect();
    }
    if let Some(ids) = member
        .pointer("/mobileData/mobileIds")
        .and_then(Value::as_array)
    {
        return ids.iter().map(Value::to_string).collect();
    }
    member
        .pointer("/userIdData/userId")
        .map(|v| vec![v.to_string()])
        .unwrap_or_default()
}

/// `GET /v1/accountTypes/GOOGLE_ADS/accounts/{id}/userLists/{list}` with an optional
/// `login-account: accountTypes/GOOGLE_ADS/accounts/{manager}` header.
fn dm_get_user_list(st: &FakeState, path: &str, headers: &HeaderMap) -> Response {
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let ["accountTypes", "GOOGLE_ADS", "accounts", account, "userLists", list] = parts[..] else {
        return reply(
            404,
            json!({"error": {"code": 404, "message": format!("Method not found: {path}"), "status": "NOT_FOUND"}}),
        );
    };
    let login = headers
        .get("login-account")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("accountTypes/GOOGLE_ADS/accounts/"));
    let reachable = match st.customers.get(account) {
        None => false,
        Some(None) => true,
        Some(Some(manager)) => login == Some(manager.as_str()),
    };
    if !reachable {
        return dm_error(
            403,
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "The caller does not have permission",
            &[],
        );
    }
    let resource = list_resource(account, list);
    let Some((name, _)) = st.lists.get(&resource) else {
        return dm_error(404, "NOT_FOUND", "NOT_FOUND", "Resource not found.", &[]);
    };
    let key = match key_type(st, &resource) {
        "CRM_ID" => "USER_ID",
        "MOBILE_ADVERTISING_ID" => "MOBILE_ID",
        _ => "CONTACT_ID",
    };
    reply(
        200,
        json!({"name": format!("accountTypes/GOOGLE_ADS/accounts/{account}/userLists/{list}"), "id": list,
               "displayName": name, "membershipStatus": "OPEN",
               "ingestedUserListInfo": {"uploadKeyTypes": [key]}}),
    )
}

fn fault_response(f: Fault) -> Response {
    let mut r = reply(f.status, f.body);
    for (k, v) in f.headers {
        r.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    r
}
