//! A faithful fake of the parts of the SendGrid v3 API the `sendgrid` plugin uses
//! (see `/work/shared/reference/api-contracts.md` §1): Marketing Campaigns contacts upsert and
//! its import job, lookup by email, deletion, list membership removal, field definitions,
//! lists, scopes, and `POST /v3/mail/send`.
//!
//! Every refusal it models, with where it comes from (all checked 2026-12-06; "OAS" is
//! `twilio/sendgrid-oai` at dbe0e0d, 2026-01-22, `spec/yaml/tsg_mc_contacts_v3.yaml`,
//! `tsg_mc_lists_v3.yaml`, `tsg_mail_v3.yaml`):
//!
//! * `Authorization: Bearer <key>` or 401 `{"errors":[{"field":null,"message":...}]}`
//!   (OAS `securitySchemes.BearerAuth`, `MarketingContacts401`;
//!   <https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/errors>).
//! * 429 with `X-RateLimit-Limit/Remaining/Reset` (epoch seconds), no `Retry-After`; every
//!   response carries the three headers
//!   (<https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits>).
//! * `PUT /v3/marketing/contacts`: 1..30,000 contacts and at most 6 MB ("up to 30,000
//!   contacts, or 6MB of data, whichever is lower", OAS `UpdateContact`; 413 beyond the size),
//!   at least one identifier per contact, valid emails, field lengths, existing custom field
//!   ids of the right type, UUID list ids that exist; refusals name items
//!   (`contacts[2].email`) and store nothing. Accepted contacts are **not** stored yet: the
//!   answer is `202 {"job_id"}` ("the contacts are queued for processing", OAS) and the
//!   contacts land when the import job finishes.
//! * `GET /v3/marketing/contacts/imports/{id}` (OAS `GetImportContact`): `status` `pending`
//!   ("not started"), `completed` ("without any errors"), `errored` ("with some errors") or
//!   `failed` ("with all errors"); `results` with `requested_count`, `created_count`,
//!   `updated_count`, `errored_count`, `errors_url`; `started_at`, `finished_at`. While pending
//!   only `requested_count` is set and `job_type` is `upsert_contacts`, as SendGrid answered in
//!   the live recording `NangoHQ/integration-templates`
//!   `integrations/sendgrid/tests/upsert-contacts.test.json` (2026-07-15; the OAS says
//!   `upsert`). A job stays pending for [`Fake::pending_polls`] polls (default 1), or for good
//!   after [`Fake::hold_jobs`]; contacts named by [`Fake::fail_in_job`] error inside the job
//!   and are not stored. Unknown job id: 404. [U] the errors file's host and format are not
//!   documented ("download the errors_url file and open it", OAS), so `errors_url` is a
//!   placeholder the plugin only reports.
//! * `POST /v3/marketing/contacts/search/emails` (OAS `ListContactByEmail`): 1..100 addresses,
//!   400 if any is invalid, 404 when none matches, per-address `error: "contact not found"`,
//!   and an address also matches a contact that has it among its `alternate_emails` ("including
//!   any `alternate_emails`") — the contact returned then has another primary `email`.
//! * `DELETE /v3/marketing/contacts?ids=` (OAS `DeleteContact`): `ids` or
//!   `delete_all_contacts=true` required (400), 202 job.
//! * `DELETE /v3/marketing/lists/{id}/contacts?contact_ids=` (OAS lists `DeleteContact`,
//!   "The contacts will not be deleted. Only their list membership will be changed"):
//!   `contact_ids` required (400), 404 when "the specified list ID does not exist or one or
//!   more contact IDs do not exist", 202 job.
//! * `POST /v3/mail/send`: the personalization rules (1..1000, unique addresses, 1000
//!   recipients, valid addresses, subject/content unless a known template is used,
//!   `reply_to` xor `reply_to_list`, at most 10 categories), 413 past 30 MB, with SendGrid's
//!   messages (<https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors>).
//!
//! Knobs answer the next requests with 429 or 500.

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
use serde_json::{json, Map, Value};

/// The key the fake accepts unless told otherwise.
pub const API_KEY: &str = "SG.fake-key.s3cr3t-Q1w2E3r4T5y6";
/// A list that exists in the fake.
pub const LIST_ID: &str = "ca7a3796-e8a8-4029-9ccb-df8937940562";
/// A dynamic template that exists in the fake.
pub const TEMPLATE_ID: &str = "d-13b8f94fbcae4ec6b75270d6cb59f932";
/// Most bytes of a contacts upsert body.
pub const MAX_UPSERT_BYTES: usize = 6_000_000;

const RESERVED: &[(&str, usize)] = &[
    ("first_name", 50),
    ("last_name", 50),
    ("address_line_1", 100),
    ("address_line_2", 100),
    ("city", 60),
    ("state_province_region", 50),
    ("postal_code", 60),
    ("country", 50),
    ("phone_number", 60),
    ("whatsapp", 60),
    ("line", 60),
    ("facebook", 60),
    ("unique_name", 60),
    ("email", 254),
    ("phone_number_id", 254),
    ("external_id", 254),
    ("anonymous_id", 254),
];
const IDENTIFIERS: &[&str] = &["email", "phone_number_id", "external_id", "anonymous_id"];

/// What the fake account holds at start.
#[derive(Debug, Clone)]
pub struct Setup {
    pub api_key: String,
    /// (id, name, field_type: Text | Number | Date)
    pub custom_fields: Vec<(String, String, String)>,
    pub lists: Vec<String>,
    pub templates: Vec<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            api_key: API_KEY.to_string(),
            custom_fields: vec![
                ("e1_T".into(), "plan".into(), "Text".into()),
                ("e2_N".into(), "lifetime_value".into(), "Number".into()),
                ("e3_D".into(), "signup_date".into(), "Date".into()),
            ],
            lists: vec![LIST_ID.to_string()],
            templates: vec![TEMPLATE_ID.to_string()],
        }
    }
}

/// One request as the fake saw it (method and path with query).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub body: Bytes,
}

#[derive(Debug, Default)]
pub struct Inner {
    setup: Option<Setup>,
    /// Contacts by their identifier key (`email:lower` or `external_id:...`), as SendGrid stores
    /// them: `id`, identifiers, reserved fields, `custom_fields`, `list_ids`.
    pub contacts: BTreeMap<String, Value>,
    /// Accepted `POST /v3/mail/send` bodies.
    pub mails: Vec<Value>,
    /// Every job by id (upserts, deletes, list removals).
    pub jobs: BTreeMap<String, Job>,
    pub seen: Vec<Seen>,
    /// Polls a new upsert job answers `pending` before it finishes.
    pending_polls: u32,
    /// Upsert jobs never finish.
    hold: bool,
    /// Lower-cased email → the error its import job reports for it.
    fail_in_job: BTreeMap<String, String>,
    throttle: u32,
    throttle_reset_secs: u64,
    fail: u32,
    next_id: u64,
}

/// An asynchronous job, as `GET /v3/marketing/contacts/imports/{id}` reports it.
#[derive(Debug, Clone)]
pub struct Job {
    pub job_type: &'static str,
    pub started_at: String,
    pub polls: u32,
    /// Polls left before it finishes (upserts only; other jobs finish at once).
    pub pending_polls: u32,
    pub held: bool,
    pub requested: usize,
    /// Contacts to write when it finishes: identifier key and the contact as sent.
    pub writes: Vec<(String, Map<String, Value>)>,
    pub list_ids: Vec<String>,
    /// Contacts that error inside the job: (email, message).
    pub errors: Vec<(String, String)>,
    /// Set when it finished: (created, updated, finished_at).
    pub finished: Option<(usize, usize, String)>,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub inner: Arc<Mutex<Inner>>,
}

impl Fake {
    pub async fn start(setup: Setup) -> Fake {
        let inner = Arc::new(Mutex::new(Inner {
            setup: Some(setup),
            pending_polls: 1,
            ..Inner::default()
        }));
        // The fake enforces SendGrid's own size limits, so axum's 2 MB default must not come first.
        let app = Router::new()
            .fallback(any(handle))
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(inner.clone());
        let addr = crate::common::serve(app).await;
        Fake { addr, inner }
    }

    /// Starts the fake on its own runtime thread, for tests that drive the binary.
    pub fn start_in_background(setup: Setup) -> Fake {
        crate::common::in_background(move || async move { Fake::start(setup).await })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The stored contact with this email (any case), if any.
    pub fn contact(&self, email: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap()
            .contacts
            .get(&format!("email:{}", email.to_lowercase()))
            .cloned()
    }

    pub fn contact_count(&self) -> usize {
        self.inner.lock().unwrap().contacts.len()
    }

    pub fn mails(&self) -> Vec<Value> {
        self.inner.lock().unwrap().mails.clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Adds a contact as if it had been imported earlier; returns its id.
    pub fn seed_contact(&self, email: &str, lists: &[&str]) -> String {
        self.seed_contact_with(email, lists, json!({}))
    }

    /// Adds a contact with extra stored fields (`alternate_emails`, `first_name`, ...).
    pub fn seed_contact_with(&self, email: &str, lists: &[&str], extra: Value) -> String {
        let mut inner = self.inner.lock().unwrap();
        inner.next_id += 1;
        let id = fake_uuid(inner.next_id);
        let mut contact = json!({"id": id, "email": email.to_lowercase(), "custom_fields": {},
            "list_ids": lists, "segment_ids": [], "created_at": "2026-01-02T03:04:05Z",
            "updated_at": "2026-01-02T03:04:05Z"});
        if let (Some(c), Some(extra)) = (contact.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                c.insert(k.clone(), v.clone());
            }
        }
        inner
            .contacts
            .insert(format!("email:{}", email.to_lowercase()), contact);
        id
    }

    /// New upsert jobs answer `pending` to their first `n` polls (default 1).
    pub fn pending_polls(&self, n: u32) {
        self.inner.lock().unwrap().pending_polls = n;
    }

    /// New upsert jobs stay `pending` for good (SendGrid's queue is backed up).
    pub fn hold_jobs(&self, hold: bool) {
        self.inner.lock().unwrap().hold = hold;
    }

    /// The import job errors on the contact with this email, with `message`, and does not
    /// store it.
    pub fn fail_in_job(&self, email: &str, message: &str) {
        self.inner
            .lock()
            .unwrap()
            .fail_in_job
            .insert(email.to_lowercase(), message.to_string());
    }

    /// Every job, by id.
    pub fn jobs(&self) -> BTreeMap<String, Job> {
        self.inner.lock().unwrap().jobs.clone()
    }

    /// Answers the next `n` authenticated requests with 429 and `X-RateLimit-Reset` = now +
    /// `reset_in_secs`.
    pub fn throttle(&self, n: u32, reset_in_secs: u64) {
        let mut inner = self.inner.lock().unwrap();
        inner.throttle = n;
        inner.throttle_reset_secs = reset_in_secs;
    }

    /// Answers the next `n` authenticated requests with 500.
    pub fn fail_next(&self, n: u32) {
        self.inner.lock().unwrap().fail = n;
    }
}

fn fake_uuid(n: u64) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        n.wrapping_mul(2654435761) & 0xffff_ffff,
        n
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now as SendGrid writes time stamps (`2021-03-02T15:25:47Z`).
fn now_rfc3339() -> String {
    switchyard_sdk::time::rfc3339(now() as i64)
}

fn errors(status: StatusCode, list: Vec<(Option<String>, String)>) -> Response {
    let errors: Vec<Value> = list
        .into_iter()
        .map(|(field, message)| json!({"field": field, "message": message}))
        .collect();
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

fn error(status: StatusCode, field: Option<&str>, message: &str) -> Response {
    errors(
        status,
        vec![(field.map(str::to_string), message.to_string())],
    )
}

pub fn valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut response = route(&inner, &method, &uri, &headers, &body);
    let reset = now() + 60;
    let h = response.headers_mut();
    h.entry("x-ratelimit-limit")
        .or_insert(HeaderValue::from_static("600"));
    h.entry("x-ratelimit-remaining")
        .or_insert(HeaderValue::from_static("599"));
    h.entry("x-ratelimit-reset")
        .or_insert(HeaderValue::from_str(&reset.to_string()).unwrap());
    response
}

fn route(
    inner: &Arc<Mutex<Inner>>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let mut st = inner.lock().unwrap();
    st.seen.push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        body: body.clone(),
    });
    let setup = st.setup.clone().unwrap_or_default();

    // 1. Auth.
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth.is_empty() {
        return error(StatusCode::UNAUTHORIZED, None, "authorization required");
    }
    if auth != format!("Bearer {}", setup.api_key) {
        return error(
            StatusCode::UNAUTHORIZED,
            None,
            "The provided authorization grant is invalid, expired, or revoked",
        );
    }

    // 2. Fault knobs.
    if st.throttle > 0 {
        st.throttle -= 1;
        let reset = now() + st.throttle_reset_secs;
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, None, "too many requests");
        let h = r.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("150"));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        return r;
    }
    if st.fail > 0 {
        st.fail -= 1;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "internal server error",
        );
    }

    // 3. Method and path.
    let path = uri.path().trim_end_matches('/');
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.replace("%2C", ",").replace("%2c", ",")))
                .collect()
        })
        .unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v3", "scopes"]) => axum::Json(json!({
            "scopes": ["mail.send", "marketing.read", "marketing.write"]
        }))
        .into_response(),
        ("GET", ["v3", "marketing", "field_definitions"]) => {
            let custom: Vec<Value> = setup
                .custom_fields
                .iter()
                .map(|(id, name, t)| json!({"id": id, "name": name, "field_type": t}))
                .collect();
            axum::Json(json!({
                "custom_fields": custom,
                "reserved_fields": RESERVED.iter().map(|(n, _)| json!({"id": n, "name": n, "field_type": "Text"})).collect::<Vec<_>>(),
                "_metadata": {"self": "https://api.sendgrid.com/v3/marketing/field_definitions"}
            }))
            .into_response()
        }
        ("GET", ["v3", "marketing", "lists", id]) => {
            if setup.lists.iter().any(|l| l == id) {
                let count = st
                    .contacts
                    .values()
                    .filter(|c| {
                        c["list_ids"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|x| x == id))
                    })
                    .count();
                axum::Json(json!({"id": id, "name": "Newsletter", "contact_count": count,
                                  "_metadata": {"self": format!("https://api.sendgrid.com/v3/marketing/lists/{id}")}}))
                    .into_response()
            } else {
                error(StatusCode::NOT_FOUND, Some("id"), "resource not found")
            }
        }
        ("PUT", ["v3", "marketing", "contacts"]) => upsert_contacts(&mut st, &setup, headers, body),
        ("DELETE", ["v3", "marketing", "contacts"]) => {
            if query.get("delete_all_contacts").map(String::as_str) == Some("true") {
                st.contacts.clear();
                return job(&mut st, "delete");
            }
            let Some(ids) = query.get("ids").filter(|s| !s.is_empty()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    None,
                    "either `ids` or `delete_all_contacts` must be provided",
                );
            };
            let ids: BTreeSet<&str> = ids.split(',').collect();
            st.contacts
                .retain(|_, c| !ids.contains(c["id"].as_str().unwrap_or("")));
            job(&mut st, "delete")
        }
        ("GET", ["v3", "marketing", "contacts", "imports", id]) => import_status(&mut st, id),
        ("POST", ["v3", "marketing", "contacts", "search", "emails"]) => {
            search_emails(&st, headers, body)
        }
        ("DELETE", ["v3", "marketing", "lists", list, "contacts"]) => {
            if !setup.lists.iter().any(|l| l == list) {
                return error(StatusCode::NOT_FOUND, Some("id"), "resource not found");
            }
            let Some(ids) = query.get("contact_ids").filter(|s| !s.is_empty()) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    Some("contact_ids"),
                    "contact_ids is required",
                );
            };
            let ids: BTreeSet<&str> = ids.split(',').collect();
            let known: BTreeSet<String> = st
                .contacts
                .values()
                .filter_map(|c| c["id"].as_str().map(str::to_string))
                .collect();
            if ids.iter().any(|id| !known.contains(*id)) {
                return error(StatusCode::NOT_FOUND, None, "resource not found");
            }
            for c in st.contacts.values_mut() {
                if ids.contains(c["id"].as_str().unwrap_or("")) {
                    if let Some(lists) = c["list_ids"].as_array_mut() {
                        lists.retain(|l| l != list);
                    }
                }
            }
            job(&mut st, "delete")
        }
        ("POST", ["v3", "mail", "send"]) => mail_send(&mut st, &setup, headers, body),
        (_, ["v3", "scopes"])
        | (_, ["v3", "marketing", "field_definitions"])
        | (_, ["v3", "marketing", "contacts"])
        | (_, ["v3", "marketing", "contacts", "search", "emails"])
        | (_, ["v3", "mail", "send"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, None, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, None, "not found"),
    }
}

/// A job that finishes at once (deletes, list removals); 202 with its id.
fn job(st: &mut Inner, job_type: &'static str) -> Response {
    st.next_id += 1;
    let id = fake_uuid(st.next_id);
    let at = now_rfc3339();
    st.jobs.insert(
        id.clone(),
        Job {
            job_type,
            started_at: at.clone(),
            polls: 0,
            pending_polls: 0,
            held: false,
            requested: 0,
            writes: Vec::new(),
            list_ids: Vec::new(),
            errors: Vec::new(),
            finished: Some((0, 0, at)),
        },
    );
    (StatusCode::ACCEPTED, axum::Json(json!({ "job_id": id }))).into_response()
}

/// `GET /v3/marketing/contacts/imports/{id}`: pending until its polls are used up, then it
/// writes its contacts and reports what happened.
fn import_status(st: &mut Inner, id: &str) -> Response {
    let Some(mut job) = st.jobs.get(id).cloned() else {
        return error(StatusCode::NOT_FOUND, None, "not found");
    };
    job.polls += 1;
    if job.finished.is_none() && !job.held && job.polls > job.pending_polls {
        let (mut created, mut updated) = (0, 0);
        for (key, contact) in &job.writes {
            if store_contact(st, key, contact, &job.list_ids) {
                created += 1;
            } else {
                updated += 1;
            }
        }
        job.finished = Some((created, updated, now_rfc3339()));
    }
    st.jobs.insert(id.to_string(), job.clone());
    let mut body = json!({"id": id, "job_type": job.job_type, "started_at": job.started_at,
                          "results": {"requested_count": job.requested}});
    match &job.finished {
        None => body["status"] = json!("pending"),
        Some((created, updated, finished_at)) => {
            let errored = job.errors.len();
            body["status"] = json!(if errored == 0 {
                "completed"
            } else if created + updated == 0 {
                "failed"
            } else {
                "errored"
            });
            body["finished_at"] = json!(finished_at);
            let r = &mut body["results"];
            r["created_count"] = json!(created);
            r["updated_count"] = json!(updated);
            r["deleted_count"] = json!(0);
            r["errored_count"] = json!(errored);
            if errored > 0 {
                // [U] host and format undocumented: a placeholder the plugin only reports.
                r["errors_url"] = json!(format!(
                    "https://example.invalid/sendgrid-import-errors/{id}.csv"
                ));
            }
        }
    }
    axum::Json(body).into_response()
}

/// Writes one contact as SendGrid stores it; whether it was new.
fn store_contact(st: &mut Inner, key: &str, c: &Map<String, Value>, lists: &[String]) -> bool {
    st.next_id += 1;
    let fresh_id = fake_uuid(st.next_id);
    let at = now_rfc3339();
    let new = !st.contacts.contains_key(key);
    let entry = st.contacts.entry(key.to_string()).or_insert_with(|| {
        json!({"id": fresh_id, "custom_fields": {}, "list_ids": [], "segment_ids": [],
               "created_at": at})
    });
    entry["updated_at"] = json!(at);
    for (k, v) in c {
        match k.as_str() {
            "custom_fields" => {
                if let (Some(stored), Some(new)) =
                    (entry["custom_fields"].as_object_mut(), v.as_object())
                {
                    for (id, val) in new {
                        stored.insert(id.clone(), val.clone());
                    }
                }
            }
            "email" => entry["email"] = json!(v.as_str().unwrap_or("").to_lowercase()),
            _ => entry[k] = v.clone(),
        }
    }
    if let Some(stored) = entry["list_ids"].as_array_mut() {
        for l in lists {
            if !stored.iter().any(|x| x == l) {
                stored.push(json!(l));
            }
        }
    }
    new
}

fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, Response> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            None,
            "Content-Type should be application/json.",
        ));
    }
    serde_json::from_slice(body).map_err(|_| error(StatusCode::BAD_REQUEST, None, "invalid JSON"))
}

fn upsert_contacts(st: &mut Inner, setup: &Setup, headers: &HeaderMap, body: &Bytes) -> Response {
    if body.len() > MAX_UPSERT_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, None, "content too large");
    }
    let value = match json_body(headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(obj) = value.as_object() else {
        return error(
            StatusCode::BAD_REQUEST,
            None,
            "request body must be an object",
        );
    };
    let mut errs: Vec<(Option<String>, String)> = Vec::new();
    for key in obj.keys() {
        if key != "contacts" && key != "list_ids" {
            errs.push((Some(key.clone()), "unknown field".into()));
        }
    }
    let mut lists = Vec::new();
    match obj.get("list_ids") {
        None => {}
        Some(Value::Array(ids)) => {
            for (i, id) in ids.iter().enumerate() {
                match id.as_str() {
                    Some(s) if is_uuid(s) => {
                        if setup.lists.iter().any(|l| l == s) {
                            lists.push(s.to_string());
                        } else {
                            errs.push((
                                Some(format!("list_ids[{i}]")),
                                format!("list {s} does not exist"),
                            ));
                        }
                    }
                    _ => errs.push((
                        Some(format!("list_ids[{i}]")),
                        "must be a valid uuid".into(),
                    )),
                }
            }
        }
        Some(_) => errs.push((
            Some("list_ids".into()),
            "must be an array of list ids".into(),
        )),
    }
    let contacts = match obj.get("contacts") {
        Some(Value::Array(c)) if c.is_empty() => {
            return error(
                StatusCode::BAD_REQUEST,
                Some("contacts"),
                "contacts must contain at least 1 item",
            );
        }
        Some(Value::Array(c)) if c.len() > 30_000 => {
            return error(
                StatusCode::BAD_REQUEST,
                Some("contacts"),
                "contacts must contain at most 30000 items",
            );
        }
        Some(Value::Array(c)) => c,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                Some("contacts"),
                "contacts is required",
            )
        }
    };
    let custom_types: BTreeMap<&str, &str> = setup
        .custom_fields
        .iter()
        .map(|(id, _, t)| (id.as_str(), t.as_str()))
        .collect();
    for (i, contact) in contacts.iter().enumerate() {
        let Some(c) = contact.as_object() else {
            errs.push((Some(format!("contacts[{i}]")), "must be an object".into()));
            continue;
        };
        if !IDENTIFIERS.iter().any(|k| {
            c.get(*k)
                .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))
        }) {
            errs.push((
                Some(format!("contacts[{i}]")),
                "contact must have at least one identifier: email, phone_number_id, external_id or anonymous_id".into(),
            ));
        }
        for (key, v) in c {
            let field = Some(format!("contacts[{i}].{key}"));
            if let Some((_, max)) = RESERVED.iter().find(|(n, _)| n == key) {
                match v.as_str() {
                    None => errs.push((field, "must be a string".into())),
                    Some(s) if s.chars().count() > *max => {
                        errs.push((field, format!("must be at most {max} characters")))
                    }
                    Some(s) if key == "email" && !valid_email(s) => {
                        errs.push((field, "Email address is invalid".into()))
                    }
                    _ => {}
                }
            } else if key == "alternate_emails" {
                match v.as_array() {
                    Some(a)
                        if a.len() <= 5
                            && a.iter().all(|e| e.as_str().is_some_and(valid_email)) => {}
                    _ => errs.push((
                        field,
                        "must be a list of at most 5 valid email addresses".into(),
                    )),
                }
            } else if key == "custom_fields" {
                let Some(cf) = v.as_object() else {
                    errs.push((field, "must be an object".into()));
                    continue;
                };
                let unknown: Vec<&str> = cf
                    .keys()
                    .filter(|k| !custom_types.contains_key(k.as_str()))
                    .map(String::as_str)
                    .collect();
                if !unknown.is_empty() {
                    errs.push((
                        field.clone(),
                        format!("invalid custom field ids supplied - {}", unknown.join(",")),
                    ));
                }
                for (id, value) in cf {
                    let ok = match custom_types.get(id.as_str()) {
                        Some(&"Number") => value.is_number(),
                        Some(_) => value.is_string(),
                        None => true,
                    };
                    if !ok {
                        errs.push((
                            Some(format!("contacts[{i}].custom_fields.{id}")),
                            format!(
                                "invalid value for custom field type {}",
                                custom_types[id.as_str()]
                            ),
                        ));
                    }
                }
            } else {
                errs.push((field, "unknown field".into()));
            }
        }
    }
    if !errs.is_empty() {
        return errors(StatusCode::BAD_REQUEST, errs);
    }
    let mut writes = Vec::new();
    let mut failures = Vec::new();
    for contact in contacts {
        let c = contact.as_object().cloned().unwrap_or_default();
        let key = IDENTIFIERS
            .iter()
            .find_map(|k| {
                c.get(*k).and_then(Value::as_str).map(|v| {
                    if *k == "email" {
                        format!("email:{}", v.to_lowercase())
                    } else {
                        format!("{k}:{v}")
                    }
                })
            })
            .unwrap_or_default();
        let email = c
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase();
        match st.fail_in_job.get(&email) {
            Some(message) => failures.push((email, message.clone())),
            None => writes.push((key, c)),
        }
    }
    st.next_id += 1;
    let id = fake_uuid(st.next_id);
    let job = Job {
        job_type: "upsert_contacts",
        started_at: now_rfc3339(),
        polls: 0,
        pending_polls: st.pending_polls,
        held: st.hold,
        requested: contacts.len(),
        writes,
        list_ids: lists,
        errors: failures,
        finished: None,
    };
    st.jobs.insert(id.clone(), job);
    (StatusCode::ACCEPTED, axum::Json(json!({ "job_id": id }))).into_response()
}

fn search_emails(st: &Inner, headers: &HeaderMap, body: &Bytes) -> Response {
    let value = match json_body(headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(emails) = value.get("emails").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            Some("emails"),
            "emails is required",
        );
    };
    if emails.is_empty() || emails.len() > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            Some("emails"),
            "emails must contain between 1 and 100 items",
        );
    }
    let mut errs = Vec::new();
    for (i, e) in emails.iter().enumerate() {
        match e.as_str() {
            Some("") => {}
            Some(s) if valid_email(s) => {}
            _ => errs.push((Some(format!("emails[{i}]")), "invalid email".to_string())),
        }
    }
    if !errs.is_empty() {
        return errors(StatusCode::BAD_REQUEST, errs);
    }
    let mut result = Map::new();
    let mut found = 0;
    for e in emails
        .iter()
        .filter_map(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        let lower = e.to_lowercase();
        // An address matches a contact's primary email or one of its alternate_emails.
        let by_alternate = || {
            st.contacts.values().find(|c| {
                c["alternate_emails"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x.as_str().is_some_and(|x| x.eq_ignore_ascii_case(&lower)))
                })
            })
        };
        match st
            .contacts
            .get(&format!("email:{lower}"))
            .or_else(by_alternate)
        {
            Some(c) => {
                found += 1;
                result.insert(lower, json!({ "contact": c }));
            }
            None => {
                result.insert(lower, json!({ "error": "contact not found" }));
            }
        }
    }
    if found == 0 {
        return error(StatusCode::NOT_FOUND, None, "No contacts found");
    }
    axum::Json(json!({ "result": result })).into_response()
}

fn mail_send(st: &mut Inner, setup: &Setup, headers: &HeaderMap, body: &Bytes) -> Response {
    if body.len() > 30 * 1024 * 1024 {
        return error(StatusCode::PAYLOAD_TOO_LARGE, None, "content too large");
    }
    let value = match json_body(headers, body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let bad = |field: Option<&str>, message: &str| error(StatusCode::BAD_REQUEST, field, message);
    let Some(ps) = value.get("personalizations").and_then(Value::as_array) else {
        return bad(
            Some("personalizations"),
            "The personalizations field is required and must have at least one personalization.",
        );
    };
    if ps.is_empty() {
        return bad(
            Some("personalizations"),
            "You must have at least one personalization.",
        );
    }
    if ps.len() > 1000 {
        return bad(Some("personalizations"), &format!("The personalization block is limited to 1000 personalizations per API request. You have provided {} personalizations. Please consolidate your personalizations and try again.", ps.len()));
    }
    match value.get("from").and_then(|f| f.get("email")).and_then(Value::as_str) {
        None => return bad(Some("from"), "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter."),
        Some(e) if !valid_email(e) => return bad(Some("from.email"), "The from email does not contain a valid address."),
        _ => {}
    }
    if value.get("reply_to").is_some() && value.get("reply_to_list").is_some() {
        return bad(
            Some("reply_to"),
            "The reply_to and reply_to_list fields are mutually exclusive; use only one.",
        );
    }
    if let Some(cats) = value.get("categories") {
        let list: Vec<&str> = cats
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let unique: BTreeSet<&str> = list.iter().copied().collect();
        if list.len() > 10 || unique.len() != list.len() || list.iter().any(|c| c.len() > 255) {
            return bad(Some("categories"), "You may not have more than 10 unique categories per request, each at most 255 characters.");
        }
    }
    let template = value.get("template_id").and_then(Value::as_str);
    if let Some(t) = template {
        if !setup.templates.iter().any(|x| x == t) {
            return bad(
                Some("template_id"),
                "The template_id is not a valid template ID.",
            );
        }
    } else {
        let subject_ok = value
            .get("subject")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
            || ps.iter().all(|p| {
                p.get("subject")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            });
        if !subject_ok {
            return bad(Some("subject"), "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.");
        }
        let content_ok = value
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                !c.is_empty()
                    && c.iter().all(|i| {
                        i.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                            && i.get("value")
                                .and_then(Value::as_str)
                                .is_some_and(|s| !s.is_empty())
                    })
            });
        if !content_ok {
            return bad(Some("content"), "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.");
        }
    }
    let mut errs: Vec<(Option<String>, String)> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut duplicates: Vec<String> = Vec::new();
    let mut recipients = 0;
    for (i, p) in ps.iter().enumerate() {
        let Some(to) = p
            .get("to")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
        else {
            errs.push((Some(format!("personalizations.{i}.to")), "The to array is required for all personalization objects, and must have at least one email object with a valid email address.".into()));
            continue;
        };
        for kind in ["to", "cc", "bcc"] {
            for (j, r) in p
                .get(kind)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                recipients += 1;
                match r.get("email").and_then(Value::as_str) {
                    Some(e) if valid_email(e) => {
                        if !seen.insert(e.to_lowercase()) {
                            duplicates.push(e.to_string());
                        }
                    }
                    _ => errs.push((
                        Some(format!("personalizations.{i}.{kind}.{j}.email")),
                        "Does not contain a valid address.".into(),
                    )),
                }
            }
        }
        let _ = to;
        if let Some(d) = p.get("dynamic_template_data") {
            if !d.is_object() {
                errs.push((
                    Some(format!("personalizations.{i}.dynamic_template_data")),
                    "dynamic_template_data must be an object".into(),
                ));
            }
        }
        if let Some(args) = p.get("custom_args") {
            if !args
                .as_object()
                .is_some_and(|a| a.values().all(Value::is_string))
            {
                errs.push((
                    Some(format!("personalizations.{i}.custom_args")),
                    "custom_args values must be strings".into(),
                ));
            }
        }
    }
    if recipients > 1000 {
        return bad(
            None,
            "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
        );
    }
    if !duplicates.is_empty() {
        errs.push((None, format!("Each unique email address in the personalizations array should only be included once. You have included {} more than once.", duplicates.join(", "))));
    }
    if !errs.is_empty() {
        return errors(StatusCode::BAD_REQUEST, errs);
    }
    st.next_id += 1;
    let message_id = format!("fake-msg-{}", st.next_id);
    st.mails.push(value);
    let mut r = StatusCode::ACCEPTED.into_response();
    r.headers_mut()
        .insert("x-message-id", HeaderValue::from_str(&message_id).unwrap());
    r
}
