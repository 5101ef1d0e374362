//! A faithful fake of the Mailchimp Marketing API 3.0 parts the `mailchimp` plugin uses (see
//! `/work/shared/reference/api-contracts.md` §2): ping, get list, batch subscribe
//! (`POST /3.0/lists/{id}`), add-or-update / get / update (its address too) / archive a member
//! by subscriber hash, and permanent deletion.
//!
//! Every refusal it models, with where it comes from (checked 2026-12-06):
//!
//! * HTTP Basic auth with the account's API key as password, else 401 `API Key Missing` /
//!   `API Key Invalid` (also what a key for another datacenter gets)
//!   (<https://mailchimp.com/developer/marketing/docs/fundamentals/#api-structure>,
//!   <https://mailchimp.com/developer/marketing/docs/errors/>).
//! * Errors are RFC 7807 `application/problem+json` (`type`, `title`, `status`, `detail`,
//!   `instance`, sometimes `errors[]`) (<https://mailchimp.com/developer/marketing/docs/errors/>).
//! * Batch subscribe: at most 500 members ("Up to 500 members may be added or updated with
//!   each API call", `mailchimp/mailchimp-marketing-typescript-sdk`
//!   `BatchSubscribeOrUnsubscribeListsRequest.ts`), 400 beyond; answers 200 with per-member
//!   `errors[]` (`email_address`, `error`, `error_code` `ERROR_CONTACT_EXISTS`/`ERROR_GENERIC`,
//!   `mailchimp-marketing-python-sdk` `batch_subscribe_or_unsubscribe_lists_response_errors_item*.py`).
//!   Members take `status_if_new` as well as `status` (`...members_item_status_if_new.py`);
//!   `update_existing` is "whether this batch operation will change existing members'
//!   subscription status" (TypeScript SDK). A member without `status` keeps its status.
//!   [U] whether the live API still insists on `status` per batch member; the fake does not.
//! * Add-or-update (`PUT .../members/{hash}`): the hash must be the MD5 of the lower-cased
//!   email (400 "The email address in the request body doesn't match the URL" [U]);
//!   `status_if_new` is "required only if the email address is not already present on the
//!   list" (SDK `UpsertMemberListsRequest`), 400 without it for a new member.
//! * Compliance state: an `unsubscribed` or `cleaned` member cannot be set to `subscribed`
//!   (nor a `cleaned` one to `pending`): 400 `Member In Compliance State`, "EMAIL is in a
//!   compliance state due to unsubscribe, bounce, or compliance review and cannot be
//!   subscribed." (live responses quoted in `ibericode/mailchimp-for-wordpress` #798,
//!   2025-11-04, and `tbar0970/jethro-pmm` #656); in a batch the same text is that member's
//!   error. `unsubscribed` → `pending` is allowed (Mailchimp then mails an opt-in request;
//!   `forem/forem` #6256, `beabee-communityrm/monorepo` #106) [U: not in Mailchimp's docs].
//!   `pending` → `subscribed` is allowed by the API: that is exactly why a client must not
//!   send `status` for existing members.
//! * Permanently deleted addresses cannot come back: 400 `Forgotten Email Not Subscribed`
//!   ("...was permanently deleted and cannot be re-imported...",
//!   <https://mailchimp.com/developer/marketing/docs/errors/>, api-contracts.md §2).
//! * Valid addresses ("looks fake or invalid") and known merge tags (400 `Invalid Resource`).
//! * 429 `Too Many Requests` with no rate-limit headers (Mailchimp sends none; 10 simultaneous
//!   connections per account, <https://mailchimp.com/developer/marketing/docs/fundamentals/>),
//!   optionally `Retry-After` from a knob; 500 from a knob.
//! * The audience's `double_optin` setting is reported by `GET /lists/{id}`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

/// The account's key; its datacenter is `us14`.
pub const API_KEY: &str = "5f4dcc3b5aa765d61d8327deb882cf99-us14";
pub const DC: &str = "us14";
pub const LIST_ID: &str = "a1b2c3d4e5";

const STATUSES: &[&str] = &[
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
];

#[derive(Debug, Clone)]
pub struct Setup {
    pub api_key: String,
    pub list_id: String,
    /// Merge tags defined on the audience.
    pub merge_tags: Vec<String>,
    /// The audience asks new subscribers to confirm (`GET /lists/{id}` → `double_optin`).
    pub double_optin: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            api_key: API_KEY.into(),
            list_id: LIST_ID.into(),
            merge_tags: ["FNAME", "LNAME", "PHONE", "PLAN", "BIRTHDAY"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            double_optin: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub body: Bytes,
}

#[derive(Debug, Default)]
pub struct Inner {
    setup: Option<Setup>,
    /// Members by subscriber hash (archived members keep `status: "archived"`).
    pub members: BTreeMap<String, Value>,
    /// Subscriber hashes permanently deleted: Mailchimp refuses to re-import them.
    pub forgotten: BTreeSet<String>,
    pub seen: Vec<Seen>,
    throttle: u32,
    throttle_retry_after: Option<u64>,
    fail: u32,
    next_id: u64,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub inner: Arc<Mutex<Inner>>,
}

pub fn subscriber_hash(email: &str) -> String {
    hex::encode(Md5::digest(email.to_lowercase().as_bytes()))
}

impl Fake {
    pub async fn start(setup: Setup) -> Fake {
        let inner = Arc::new(Mutex::new(Inner {
            setup: Some(setup),
            ..Inner::default()
        }));
        let app = Router::new()
            .fallback(any(handle))
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(inner.clone());
        let addr = crate::common::serve(app).await;
        Fake { addr, inner }
    }

    pub fn start_in_background(setup: Setup) -> Fake {
        crate::common::in_background(move || async move { Fake::start(setup).await })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The member with this email, by its subscriber hash.
    pub fn member(&self, email: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap()
            .members
            .get(&subscriber_hash(email))
            .cloned()
    }

    /// Addresses of the members on the list (archived ones left out), sorted.
    pub fn active_emails(&self) -> Vec<String> {
        let mut emails: Vec<String> = self
            .inner
            .lock()
            .unwrap()
            .members
            .values()
            .filter(|m| m["status"] != "archived")
            .filter_map(|m| m["email_address"].as_str().map(str::to_lowercase))
            .collect();
        emails.sort();
        emails
    }

    pub fn member_count(&self) -> usize {
        self.inner.lock().unwrap().members.len()
    }

    pub fn is_forgotten(&self, email: &str) -> bool {
        self.inner
            .lock()
            .unwrap()
            .forgotten
            .contains(&subscriber_hash(email))
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Adds a member as if it had joined earlier.
    pub fn seed_member(&self, email: &str, status: &str) {
        let mut inner = self.inner.lock().unwrap();
        let list = inner
            .setup
            .as_ref()
            .map(|s| s.list_id.clone())
            .unwrap_or_default();
        let m = member_object(email, status, &Map::new(), &[], &list);
        inner.members.insert(subscriber_hash(email), m);
    }

    /// Marks an address as permanently deleted earlier.
    pub fn seed_forgotten(&self, email: &str) {
        self.inner
            .lock()
            .unwrap()
            .forgotten
            .insert(subscriber_hash(email));
    }

    /// Answers the next `n` authenticated requests with 429, with `Retry-After` if given.
    pub fn throttle(&self, n: u32, retry_after: Option<u64>) {
        let mut inner = self.inner.lock().unwrap();
        inner.throttle = n;
        inner.throttle_retry_after = retry_after;
    }

    pub fn fail_next(&self, n: u32) {
        self.inner.lock().unwrap().fail = n;
    }
}

fn problem(status: StatusCode, title: &str, detail: &str, errors: Option<Value>) -> Response {
    let mut body = json!({
        "type": "https://mailchimp.com/developer/marketing/docs/errors/",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "instance": "8cf2c011-a212-9b3a-6c51-a4d631a124b4",
    });
    if let Some(e) = errors {
        body["errors"] = e;
    }
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/problem+json; charset=utf-8"),
    );
    r
}

fn invalid_resource(detail: &str, errors: Option<Value>) -> Response {
    problem(StatusCode::BAD_REQUEST, "Invalid Resource", detail, errors)
}

fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Resource Not Found",
        "The requested resource could not be found.",
        None,
    )
}

fn ok_json(value: Value) -> Response {
    axum::Json(value).into_response()
}

pub fn valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|l| !l.is_empty())
}

fn member_object(
    email: &str,
    status: &str,
    merge: &Map<String, Value>,
    tags: &[String],
    list: &str,
) -> Value {
    let hash = subscriber_hash(email);
    json!({
        "id": hash,
        "email_address": email,
        "unique_email_id": &hash[..10],
        "contact_id": &hash[10..],
        "full_name": "",
        "email_type": "html",
        "status": status,
        "merge_fields": merge,
        "tags": tags.iter().map(|t| json!({"id": 1, "name": t})).collect::<Vec<_>>(),
        "tags_count": tags.len(),
        "language": "",
        "vip": false,
        "list_id": list,
    })
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = inner.lock().unwrap();
    st.seen.push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        body: body.clone(),
    });
    let setup = st.setup.clone().unwrap_or_default();
    let mut r = route(&mut st, &setup, &method, &uri, &headers, &body);
    r.headers_mut()
        .insert("x-request-id", HeaderValue::from_static("fake-req-0001"));
    r
}

fn route(
    st: &mut Inner,
    setup: &Setup,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    // 1. Auth: Basic, any user name, the key as password.
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(encoded) = auth.strip_prefix("Basic ") else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "API Key Missing",
            "Your request did not include an API key.",
            None,
        );
    };
    let password = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()));
    if password.as_deref() != Some(setup.api_key.as_str()) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            None,
        );
    }

    // 2. Knobs.
    if st.throttle > 0 {
        st.throttle -= 1;
        let mut r = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            "You have exceeded the limit of 10 simultaneous connections.",
            None,
        );
        if let Some(secs) = st.throttle_retry_after {
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&secs.to_string()).unwrap(),
            );
        }
        return r;
    }
    if st.fail > 0 {
        st.fail -= 1;
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "An unexpected internal error has occurred. Please contact Support for more information.",
            None,
        );
    }

    // 3. Routes.
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let query: BTreeMap<&str, &str> = uri
        .query()
        .map(|q| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
        .unwrap_or_default();
    let skip_merge = query.get("skip_merge_validation") == Some(&"true");
    let list_ok = |id: &str| id == setup.list_id;
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["3.0", "ping"]) => ok_json(json!({"health_status": "Everything's Chimpy!"})),
        ("GET", ["3.0", "lists", id]) if list_ok(id) => {
            let count = st
                .members
                .values()
                .filter(|m| m["status"] == "subscribed")
                .count();
            ok_json(
                json!({"id": id, "name": "Newsletter", "double_optin": setup.double_optin,
                           "stats": {"member_count": count}}),
            )
        }
        ("POST", ["3.0", "lists", id]) if list_ok(id) => {
            batch(st, setup, headers, body, skip_merge)
        }
        ("GET", ["3.0", "lists", id, "members", hash]) if list_ok(id) => {
            match st.members.get(*hash).filter(|m| m["status"] != "archived") {
                Some(m) => ok_json(m.clone()),
                None => not_found(),
            }
        }
        ("PUT", ["3.0", "lists", id, "members", hash]) if list_ok(id) => {
            put_member(st, setup, hash, headers, body, skip_merge)
        }
        ("PATCH", ["3.0", "lists", id, "members", hash]) if list_ok(id) => {
            patch_member(st, hash, headers, body)
        }
        ("DELETE", ["3.0", "lists", id, "members", hash]) if list_ok(id) => {
            match st
                .members
                .get_mut(*hash)
                .filter(|m| m["status"] != "archived")
            {
                Some(m) => {
                    m["status"] = json!("archived");
                    StatusCode::NO_CONTENT.into_response()
                }
                None => not_found(),
            }
        }
        ("POST", ["3.0", "lists", id, "members", hash, "actions", "delete-permanent"])
            if list_ok(id) =>
        {
            match st.members.remove(*hash) {
                Some(_) => {
                    st.forgotten.insert(hash.to_string());
                    StatusCode::NO_CONTENT.into_response()
                }
                None => not_found(),
            }
        }
        (_, ["3.0", "ping"])
        | (_, ["3.0", "lists", _])
        | (_, ["3.0", "lists", _, "members", _]) => {
            if segments.len() >= 3 && !list_ok(segments[2]) {
                return not_found();
            }
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "The requested method and resource are not compatible. See the Allow header for this resource's available methods.",
                None,
            )
        }
        _ => not_found(),
    }
}

fn parse_json(headers: &HeaderMap, body: &Bytes) -> Result<Value, Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "JSON Parse Error",
            "We encountered an unspecified JSON parsing error.",
            None,
        ));
    }
    serde_json::from_slice(body).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "JSON Parse Error",
            "We encountered an unspecified JSON parsing error.",
            None,
        )
    })
}

/// Why Mailchimp would refuse this member's contents, if it would.
fn member_problem(
    st: &Inner,
    setup: &Setup,
    m: &Map<String, Value>,
    skip_merge: bool,
) -> Option<String> {
    let email = m.get("email_address").and_then(Value::as_str).unwrap_or("");
    if !valid_email(email) {
        return Some(format!(
            "{email} looks fake or invalid, please enter a real email address."
        ));
    }
    if st.forgotten.contains(&subscriber_hash(email)) {
        return Some(format!("{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."));
    }
    if let Some(merge) = m.get("merge_fields") {
        let Some(merge) = merge.as_object() else {
            return Some("Your merge fields were invalid.".into());
        };
        if !skip_merge {
            if let Some(tag) = merge.keys().find(|t| !setup.merge_tags.contains(t)) {
                return Some(format!(
                    "Your merge fields were invalid. {tag}: no such merge field"
                ));
            }
        }
        if merge.values().any(|v| v.is_array() || v.is_boolean()) {
            return Some("Your merge fields were invalid.".into());
        }
    }
    None
}

fn tags_of(m: &Map<String, Value>) -> Vec<String> {
    m.get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Writes a member (new or updated); returns whether it was new.
fn store(st: &mut Inner, setup: &Setup, m: &Map<String, Value>, status: &str) -> (bool, Value) {
    let email = m["email_address"].as_str().unwrap_or("").to_string();
    let hash = subscriber_hash(&email);
    let merge = m
        .get("merge_fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let tags = tags_of(m);
    let existing = st
        .members
        .get(&hash)
        .filter(|x| x["status"] != "archived")
        .cloned();
    let new = existing.is_none();
    let mut member =
        existing.unwrap_or_else(|| member_object(&email, status, &Map::new(), &[], &setup.list_id));
    member["status"] = json!(status);
    member["email_address"] = json!(email);
    if let Some(stored) = member["merge_fields"].as_object_mut() {
        for (k, v) in merge {
            stored.insert(k, v);
        }
    }
    if !tags.is_empty() {
        let mut names: BTreeSet<String> = member["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect();
        names.extend(tags);
        member["tags"] = json!(names
            .iter()
            .map(|t| json!({"id": 1, "name": t}))
            .collect::<Vec<_>>());
    }
    for key in ["language", "vip", "email_type"] {
        if let Some(v) = m.get(key) {
            member[key] = v.clone();
        }
    }
    st.members.insert(hash, member.clone());
    (new, member)
}

/// The status a write leaves a member in, or Mailchimp's refusal (title, detail).
fn next_status(
    existing: Option<&str>,
    body: &Map<String, Value>,
    email: &str,
) -> Result<String, (&'static str, String)> {
    let status = body.get("status").and_then(Value::as_str);
    let status_if_new = body.get("status_if_new").and_then(Value::as_str);
    match (existing, status) {
        (Some(current), None) => Ok(current.to_string()),
        (Some(current), Some(wanted)) => {
            let refused = match wanted {
                "subscribed" => current == "unsubscribed" || current == "cleaned",
                "pending" => current == "cleaned",
                _ => false,
            };
            if refused && current != wanted {
                Err(("Member In Compliance State", format!(
                    "{email} is in a compliance state due to unsubscribe, bounce, or compliance review and cannot be subscribed."
                )))
            } else {
                Ok(wanted.to_string())
            }
        }
        (None, Some(s)) => Ok(s.to_string()),
        (None, None) => match status_if_new {
            Some(s) => Ok(s.to_string()),
            None => Err((
                "Invalid Resource",
                format!("{email}: status_if_new is required for an address not yet on the list"),
            )),
        },
    }
}

fn patch_member(st: &mut Inner, hash: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let value = match parse_json(headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(member) = st
        .members
        .get(hash)
        .filter(|m| m["status"] != "archived")
        .cloned()
    else {
        return not_found();
    };
    let mut patch = value.as_object().cloned().unwrap_or_default();
    patch.remove("status_if_new");
    if patch
        .get("status")
        .is_some_and(|s| !s.as_str().is_some_and(|s| STATUSES.contains(&s)))
    {
        return invalid_resource(
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
            Some(json!([{"field": "status", "message": "Schema describes enum, input value was not in enum"}])),
        );
    }
    let email = member["email_address"].as_str().unwrap_or("").to_string();
    // A changed `email_address` renames the member: it moves to the new address's subscriber
    // hash, keeping its status, merge fields and tags (Mailchimp "Update list member",
    // PATCH /lists/{list_id}/members/{subscriber_hash}, body `email_address`; the
    // mailchimp-marketing SDKs' `updateListMember`, used this way by peer connectors, e.g.
    // simstudioai/sim `mailchimp/update_member`). The new address must be valid, not already a
    // member [U: Mailchimp's exact title; the fake answers 400 `Member Exists` as for a POST of
    // an existing address], and not permanently deleted (400 `Forgotten Email Not Subscribed`).
    let new_email = patch
        .get("email_address")
        .and_then(Value::as_str)
        .map(str::to_string)
        .filter(|e| !e.eq_ignore_ascii_case(&email));
    if let Some(new_email) = &new_email {
        if !valid_email(new_email) {
            return invalid_resource(
                &format!("{new_email} looks fake or invalid, please enter a real email address."),
                None,
            );
        }
        let new_hash = subscriber_hash(new_email);
        if st.forgotten.contains(&new_hash) {
            return problem(StatusCode::BAD_REQUEST, "Forgotten Email Not Subscribed", &format!("{new_email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."), None);
        }
        if st
            .members
            .get(&new_hash)
            .is_some_and(|m| m["status"] != "archived")
        {
            return problem(
                StatusCode::BAD_REQUEST,
                "Member Exists",
                &format!("{new_email} is already a list member. Use PUT to insert or update list members."),
                None,
            );
        }
    }
    match next_status(member["status"].as_str(), &patch, &email) {
        Ok(status) => {
            let mut m = member;
            m["status"] = json!(status);
            let key = match &new_email {
                Some(new_email) => {
                    st.members.remove(hash);
                    let new_hash = subscriber_hash(new_email);
                    m["email_address"] = json!(new_email);
                    m["id"] = json!(new_hash);
                    new_hash
                }
                None => hash.to_string(),
            };
            st.members.insert(key, m.clone());
            ok_json(m)
        }
        Err((title, detail)) => problem(StatusCode::BAD_REQUEST, title, &detail, None),
    }
}

fn batch(
    st: &mut Inner,
    setup: &Setup,
    headers: &HeaderMap,
    body: &Bytes,
    skip_merge: bool,
) -> Response {
    let value = match parse_json(headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(members) = value.get("members").and_then(Value::as_array) else {
        return invalid_resource(
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
            Some(json!([{"field": "members", "message": "Required fields were not provided: members"}])),
        );
    };
    if members.len() > 500 {
        return invalid_resource(
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
            Some(json!([{"field": "members", "message": "Schema describes array, array had more than 500 items"}])),
        );
    }
    // Schema errors refuse the whole request.
    let mut schema = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            schema.push(
                json!({"field": format!("members.item:{i}"), "message": "Schema describes object"}),
            );
            continue;
        };
        if !obj.get("email_address").is_some_and(Value::is_string) {
            schema.push(json!({"field": format!("members.item:{i}.email_address"), "message": "This value should not be blank."}));
        }
        for key in ["status", "status_if_new"] {
            match obj.get(key) {
                None => {}
                Some(v) if v.as_str().is_some_and(|s| STATUSES.contains(&s)) => {}
                Some(_) => schema.push(json!({"field": format!("members.item:{i}.{key}"), "message": "Schema describes enum, input value was not in enum"})),
            }
        }
    }
    if !schema.is_empty() {
        return invalid_resource(
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
            Some(json!(schema)),
        );
    }
    let update_existing = value
        .get("update_existing")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (mut new_members, mut updated, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for m in members.iter().filter_map(Value::as_object) {
        let email = m["email_address"].as_str().unwrap_or("");
        if let Some(error) = member_problem(st, setup, m, skip_merge) {
            errors.push(
                json!({"email_address": email, "error": error, "error_code": "ERROR_GENERIC"}),
            );
            continue;
        }
        let existing = st
            .members
            .get(&subscriber_hash(email))
            .filter(|x| x["status"] != "archived")
            .and_then(|x| x["status"].as_str().map(str::to_string));
        if existing.is_some() && !update_existing {
            errors.push(json!({"email_address": email,
                "error": format!("{email} is already a list member, do you want to update? please provide update_existing:true in the request body"),
                "error_code": "ERROR_CONTACT_EXISTS"}));
            continue;
        }
        let status = match next_status(existing.as_deref(), m, email) {
            Ok(s) => s,
            Err((_, detail)) => {
                errors.push(
                    json!({"email_address": email, "error": detail, "error_code": "ERROR_GENERIC"}),
                );
                continue;
            }
        };
        let (new, member) = store(st, setup, m, &status);
        if new {
            new_members.push(member)
        } else {
            updated.push(member)
        }
    }
    ok_json(json!({
        "new_members": new_members,
        "updated_members": updated,
        "errors": errors,
        "total_created": new_members.len(),
        "total_updated": updated.len(),
        "error_count": errors.len(),
        "_links": [],
    }))
}

fn put_member(
    st: &mut Inner,
    setup: &Setup,
    hash: &str,
    headers: &HeaderMap,
    body: &Bytes,
    skip_merge: bool,
) -> Response {
    let value = match parse_json(headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(m) = value.as_object() else {
        return invalid_resource("The resource submitted could not be validated.", None);
    };
    let Some(email) = m.get("email_address").and_then(Value::as_str) else {
        return invalid_resource(
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
            Some(json!([{"field": "email_address", "message": "This value should not be blank."}])),
        );
    };
    // The path takes the hash (or the address itself); it must name the body's address.
    if hash != subscriber_hash(email) && !hash.eq_ignore_ascii_case(email) {
        return invalid_resource(
            "The email address in the request body doesn't match the URL.",
            None,
        );
    }
    for key in ["status", "status_if_new"] {
        if let Some(s) = m.get(key) {
            if !s.as_str().is_some_and(|s| STATUSES.contains(&s)) {
                return invalid_resource(
                    "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
                    Some(json!([{"field": key, "message": "Schema describes enum, input value was not in enum"}])),
                );
            }
        }
    }
    if st.forgotten.contains(&subscriber_hash(email)) {
        return problem(StatusCode::BAD_REQUEST, "Forgotten Email Not Subscribed",
            &format!("{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."), None);
    }
    if let Some(error) = member_problem(st, setup, m, skip_merge) {
        return invalid_resource(&error, None);
    }
    let existing = st
        .members
        .get(&subscriber_hash(email))
        .filter(|x| x["status"] != "archived")
        .and_then(|x| x["status"].as_str().map(str::to_string));
    let status = match next_status(
        existing.as_deref(),
        m,
        email,
    ) {
        Ok(s) => s,
        Err(("Invalid Resource", _)) => {
            return invalid_resource(
                "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
                Some(json!([{"field": "status_if_new", "message": "This value should not be blank."}])),
            )
        }
        Err((title, detail)) => return problem(StatusCode::BAD_REQUEST, title, &detail, None),
    };
    let (_, member) = store(st, setup, m, &status);
    ok_json(member)
}
