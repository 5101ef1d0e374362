//! SendGrid destination (Twilio SendGrid v3 API).
//!
//! * `upsert`: `PUT /v3/marketing/contacts` (at most 30,000 contacts or 6 MB per request, the
//!   API's own limits), adding every contact to the configured `list_ids`. SendGrid answers
//!   `202 {"job_id"}`, which only means queued: [`jobs`] follows the import job and turns its
//!   outcome into per-record results (a job not done in `import_wait_secs` is retried, never
//!   claimed).
//! * `delete`: looks the contacts up by email (`POST /v3/marketing/contacts/search/emails`, 100
//!   addresses per request; only a contact whose primary `email` is the address counts) and, by
//!   default, removes them from the configured lists only
//!   (`DELETE /v3/marketing/lists/{id}/contacts?contact_ids=...`). Erasing them from the whole
//!   account (`DELETE /v3/marketing/contacts?ids=...`) takes `delete_mode = "delete_contact"`.
//!   An address SendGrid does not know is already gone: `ok`.
//! * a changed address (the hub sends `previous_fields` when `email`, this plugin's key field,
//!   changed): SendGrid cannot change a contact's email, so the new address is upserted as a
//!   contact of its own and, once its import job succeeded, the contact under the old address
//!   is removed as `delete` removes one (found by email, then removed by id, per
//!   `delete_mode`).
//! * `erase` (a privacy erasure, contract 1.1.0): the same lookup, then always
//!   `DELETE /v3/marketing/contacts?ids=...` ("Delete Contacts",
//!   <https://www.twilio.com/docs/sendgrid/api-reference/contacts/delete-contacts>): the person
//!   leaves the whole account, whatever `delete_mode` says for audience removals.
//! * `track`: one transactional email per record through `POST /v3/mail/send` with a dynamic
//!   template (`template_id`, or `event_templates[event]`); the record's fields are the template's
//!   `dynamic_template_data`. Up to 1,000 records share one request (one personalization each).
//!
//! Fields read from a record (`fields`, a JSON object):
//!
//! * identifiers: `email` (needed for delete and track), `phone_number_id`, `external_id`,
//!   `anonymous_id` (an upsert needs at least one);
//! * SendGrid's reserved fields: `first_name`, `last_name`, `alternate_emails` (list),
//!   `address_line_1`, `address_line_2`, `city`, `state_province_region`, `postal_code`,
//!   `country`, `phone_number`, `whatsapp`, `line`, `facebook`, `unique_name`;
//! * any field named in the config's `custom_fields` map, sent under its custom field id.
//!
//! Any other field of an upsert record is rejected with a message naming it (nothing is dropped
//! silently); `null` values are left out. For `track`, `email` is the recipient, `name` (optional)
//! the recipient's display name, `event` selects the template, and the whole field object is the
//! template data.
//!
//! Errors: when SendGrid refuses a request because of some items (`{"errors":[{"field":
//! "contacts[3].email","message":...}]}`, or `personalizations.3.to.0.email` for mail), those
//! records are rejected with SendGrid's message and the others are sent again without them.
//! 429 and 5xx are retried after `X-RateLimit-Reset`; 401/403 fail the batch as unauthorized.
//! The API key only ever travels as a `{{secret:api_key}}` placeholder, and no email address
//! is logged.

mod jobs;

use std::collections::{BTreeMap, HashSet};

use jobs::Submitted;
use serde::Deserialize;
use switchyard_sdk::http::{Request, Response};
use switchyard_sdk::serde_json::{self, json, Map, Value};
use switchyard_sdk::{
    outcome, schemars, Action, CallError, Capabilities, Context, Destination, OutboundRecord,
    Plugin, RecordResult,
};

/// Most contacts one `PUT /v3/marketing/contacts` takes.
pub const MAX_CONTACTS_PER_REQUEST: usize = 30_000;
/// Most bytes of one contacts upsert body ("30,000 contacts or 6MB, whichever is lower").
pub const MAX_UPSERT_BODY_BYTES: usize = 6_000_000;
/// Most addresses one `POST /v3/marketing/contacts/search/emails` takes.
pub const MAX_LOOKUP_EMAILS: usize = 100;
/// Most personalizations (and recipients) of one `POST /v3/mail/send`.
pub const MAX_PERSONALIZATIONS: usize = 1_000;
/// How long an upsert waits for its import job by default. SendGrid took 33 s to finish a
/// one-contact job in a live recording (NangoHQ/integration-templates, 2026-07-15), and the
/// hub stops a plugin call after 60 s.
pub const DEFAULT_IMPORT_WAIT_SECS: u64 = 40;
/// The longest wait the config may ask for, leaving room in the 60 s call for the requests.
pub const MAX_IMPORT_WAIT_SECS: u64 = 50;
/// When contacts whose import job did not finish in time are sent again.
pub const PENDING_RETRY_MS: u64 = 60_000;

/// Reserved contact fields sent as they are (besides `email` and the other identifiers).
const RESERVED_TEXT_FIELDS: &[&str] = &[
    "first_name",
    "last_name",
    "address_line_1",
    "address_line_2",
    "city",
    "state_province_region",
    "postal_code",
    "country",
    "phone_number",
    "whatsapp",
    "line",
    "facebook",
    "unique_name",
];
const IDENTIFIERS: &[&str] = &["email", "phone_number_id", "external_id", "anonymous_id"];

/// Settings of one `[destinations.NAME]` block using the `sendgrid` plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Marketing Campaigns list ids (UUIDs) every upserted contact is added to. Optional for
    /// upserts; required when `delete_mode = "remove_from_lists"`.
    #[serde(default)]
    pub list_ids: Vec<String>,
    /// Record field name → SendGrid custom field id, e.g. `{"plan": "e1_T"}`. The custom fields
    /// must already exist in SendGrid (Marketing → Custom Fields, or
    /// `GET /v3/marketing/field_definitions`).
    #[serde(default)]
    pub custom_fields: BTreeMap<String, String>,
    /// What `delete` (a profile leaving the synced audience) does: `remove_from_lists`
    /// (default) takes the contact off `list_ids` and keeps it in SendGrid;
    /// `delete_contact` erases the contact from the whole SendGrid account (every list,
    /// segment and custom field, including lists this destination never touched), only when
    /// named here.
    #[serde(default)]
    pub delete_mode: DeleteMode,
    /// Seconds an upsert waits for SendGrid's asynchronous import job to finish before its
    /// contacts are retried later (1-50; a plugin call may take 60 s in all).
    #[serde(default = "default_import_wait_secs")]
    pub import_wait_secs: u64,
    /// Dynamic template (`d-...`) sent for `track` records whose event has no entry in
    /// `event_templates`.
    #[serde(default)]
    pub template_id: Option<String>,
    /// Event name → dynamic template id, e.g. `{"Order Completed": "d-..."}`.
    #[serde(default)]
    pub event_templates: BTreeMap<String, String>,
    /// Verified sender address for `track` emails.
    #[serde(default)]
    pub from_email: Option<String>,
    /// Sender display name for `track` emails.
    #[serde(default)]
    pub from_name: Option<String>,
    /// Categories attached to `track` emails (at most 10).
    #[serde(default)]
    pub categories: Vec<String>,
    /// `global` (api.sendgrid.com, default) or `eu` (api.eu.sendgrid.com, for EU subusers).
    #[serde(default)]
    pub region: Region,
    /// Make the calls on behalf of this subuser (`on-behalf-of` header).
    #[serde(default)]
    pub on_behalf_of: Option<String>,
}

fn default_import_wait_secs() -> u64 {
    DEFAULT_IMPORT_WAIT_SECS
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    /// Remove the contact from `list_ids` only (`DELETE /v3/marketing/lists/{id}/contacts`).
    #[default]
    RemoveFromLists,
    /// Erase the contact from the whole SendGrid account (`DELETE /v3/marketing/contacts`).
    DeleteContact,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    #[default]
    Global,
    Eu,
}

struct SendGrid;

impl Plugin for SendGrid {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("sendgrid")
            .allowed_host("api.sendgrid.com")
            .allowed_host("api.eu.sendgrid.com")
            .secret(
                "api_key",
                "SendGrid API key (Settings → API Keys) with Marketing and/or Mail Send access",
                true,
            )
            .max_batch_size(MAX_CONTACTS_PER_REQUEST as u32)
            // SendGrid does not publish per-endpoint limits; it signals them with 429 and
            // X-RateLimit-Reset, which the hub honours. Two requests a second is a safe start.
            .default_rate_per_second(2.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Track, Action::Erase])
            // Contacts are found by email: a changed `email` replaces the contact.
            .key_fields(&["email"])
    }

    /// `GET /v3/scopes` proves the key; configured custom field ids and lists are looked up
    /// too, so a typo fails here rather than in every delivery.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        validate_config(&ctx.config)?;
        let api = Api::new(ctx);
        let response = api.request(Request::get(&api.url("/v3/scopes"))).send()?;
        outcome::call_result(&response)?;
        if !ctx.config.custom_fields.is_empty() {
            let response = api
                .request(Request::get(&api.url("/v3/marketing/field_definitions")))
                .send()?;
            outcome::call_result(&response)?;
            let defs: Value = response.json()?;
            let known: HashSet<&str> = defs
                .get("custom_fields")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.get("id").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            for (field, id) in &ctx.config.custom_fields {
                if !known.contains(id.as_str()) {
                    return Err(CallError::InvalidConfig(format!(
                        "custom_fields.{field}: SendGrid has no custom field with id `{id}`"
                    )));
                }
            }
        }
        for list in &ctx.config.list_ids {
            let response = require_list(&api, list)?;
            outcome::call_result(&response)?;
        }
        Ok(())
    }
}

impl Destination for SendGrid {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        validate_config(&ctx.config)?;
        let api = Api::new(ctx);
        let mut results: Vec<Option<RecordResult>> = vec![None; batch.len()];
        match action {
            Action::Upsert => {
                upsert(&api, &ctx.config, &batch, &mut results)?;
                retire_old_addresses(&api, &ctx.config, &batch, &mut results)?;
            }
            Action::Delete => delete(
                &api,
                &ctx.config,
                ctx.config.delete_mode,
                &batch,
                &mut results,
            )?,
            Action::Track => track(&api, &ctx.config, &batch, &mut results)?,
            // A privacy erasure: the contact goes from the whole account, whatever
            // `delete_mode` says for audience removals.
            Action::Erase => delete(
                &api,
                &ctx.config,
                DeleteMode::DeleteContact,
                &batch,
                &mut results,
            )?,
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    RecordResult::Rejected("plugin bug: record was never sent".to_string())
                })
            })
            .collect())
    }
}

switchyard_sdk::export_destination!(SendGrid);

// ---- config ----

pub fn validate_config(config: &Config) -> Result<(), CallError> {
    for id in &config.list_ids {
        if !is_uuid(id) {
            return Err(CallError::InvalidConfig(format!(
                "list_ids: `{id}` is not a SendGrid list id (a UUID like ca7a3796-e8a8-4029-9ccb-df8937940562)"
            )));
        }
    }
    for (field, id) in &config.custom_fields {
        if IDENTIFIERS.contains(&field.as_str())
            || RESERVED_TEXT_FIELDS.contains(&field.as_str())
            || field == "alternate_emails"
        {
            return Err(CallError::InvalidConfig(format!(
                "custom_fields.{field}: `{field}` is a reserved SendGrid field, map it directly"
            )));
        }
        if id.trim().is_empty() {
            return Err(CallError::InvalidConfig(format!(
                "custom_fields.{field}: empty custom field id"
            )));
        }
    }
    if !(1..=MAX_IMPORT_WAIT_SECS).contains(&config.import_wait_secs) {
        return Err(CallError::InvalidConfig(format!(
            "import_wait_secs: {} is outside 1-{MAX_IMPORT_WAIT_SECS} (a plugin call may take 60 s in all)",
            config.import_wait_secs
        )));
    }
    if config.categories.len() > 10 {
        return Err(CallError::InvalidConfig(format!(
            "categories: SendGrid allows at most 10, got {}",
            config.categories.len()
        )));
    }
    Ok(())
}

pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---- HTTP ----

struct Api<'a> {
    base: &'static str,
    ctx: &'a Context<Config>,
}

impl<'a> Api<'a> {
    fn new(ctx: &'a Context<Config>) -> Self {
        let base = match ctx.config.region {
            Region::Global => "https://api.sendgrid.com",
            Region::Eu => "https://api.eu.sendgrid.com",
        };
        Api { base, ctx }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, request: Request) -> Request {
        // The host replaces the placeholder as the request leaves the sandbox.
        let mut request = request
            .bearer_auth(&self.ctx.secret_placeholder("api_key"))
            .header("accept", "application/json");
        if let Some(subuser) = &self.ctx.config.on_behalf_of {
            request = request.header("on-behalf-of", subuser);
        }
        request
    }
}

/// What a non-2xx response means for the whole request: `Err` for bad credentials, a shared
/// retry for 429/5xx, or `None` when the caller should read the API's item errors.
fn whole_request_failure(response: &Response) -> Result<Option<RecordResult>, CallError> {
    match response.status {
        401 | 403 => Err(CallError::Unauthorized(format!(
            "HTTP {}: {}",
            response.status,
            outcome::api_message(&response.body)
        ))),
        s if outcome::is_retryable_status(s) => Ok(Some(RecordResult::Retry(retry(response)))),
        _ => Ok(None),
    }
}

/// A retry for a 429/5xx. SendGrid puts `X-RateLimit-Reset` on every response, but it only
/// says when to come back on a 429; a 5xx waits for `Retry-After` or the hub's own backoff.
pub fn retry(response: &Response) -> switchyard_sdk::Retry {
    let mut retry = outcome::retry(response);
    if response.status != 429 && response.header("retry-after").is_none() {
        retry.after_ms = None;
    }
    retry
}

/// One entry of SendGrid's `errors` array.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub field: Option<String>,
    pub message: String,
}

pub fn api_errors(body: &[u8]) -> Vec<ApiError> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    value
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| {
                    let message = e.get("message").and_then(Value::as_str)?.to_string();
                    let field = e
                        .get("field")
                        .and_then(Value::as_str)
                        .filter(|f| !f.is_empty() && *f != "null")
                        .map(str::to_string);
                    Some(ApiError { field, message })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The item index and the rest of a field path such as `contacts[3].email` or
/// `personalizations.3.to.0.email` for the array `array`.
pub fn item_index(field: &str, array: &str) -> Option<(usize, String)> {
    let rest = field.strip_prefix(array)?;
    let (digits, tail) = if let Some(r) = rest.strip_prefix('[') {
        let end = r.find(']')?;
        (&r[..end], &r[end + 1..])
    } else if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        (&r[..end], &r[end..])
    } else {
        return None;
    };
    let index = digits.parse().ok()?;
    Some((index, tail.trim_start_matches('.').to_string()))
}

/// Splits a 4xx answer into per-item rejections (by index into the request's `array`) and the
/// message for the whole request when no error names an item.
pub fn item_rejections(
    response: &Response,
    array: &str,
    len: usize,
) -> (BTreeMap<usize, String>, String) {
    let mut by_item: BTreeMap<usize, String> = BTreeMap::new();
    let mut whole = Vec::new();
    for error in api_errors(&response.body) {
        match error.field.as_deref().and_then(|f| item_index(f, array)) {
            Some((i, rest)) if i < len => {
                let text = if rest.is_empty() {
                    error.message
                } else {
                    format!("{rest}: {}", error.message)
                };
                by_item
                    .entry(i)
                    .and_modify(|m| {
                        m.push_str("; ");
                        m.push_str(&text);
                    })
                    .or_insert(text);
            }
            _ => whole.push(match error.field {
                Some(f) => format!("{f}: {}", error.message),
                None => error.message,
            }),
        }
    }
    let whole = if whole.is_empty() {
        outcome::api_message(&response.body)
    } else {
        whole.join("; ")
    };
    (
        by_item
            .into_iter()
            .map(|(i, m)| (i, format!("HTTP {}: {m}", response.status)))
            .collect(),
        format!("HTTP {}: {whole}", response.status),
    )
}

fn parse_fields(record: &OutboundRecord) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(&record.fields) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("fields are not a JSON object".to_string()),
        Err(e) => Err(format!("fields are not valid JSON: {e}")),
    }
}

// ---- upsert ----

/// Turns a record's fields into a SendGrid contact, or says why it cannot be one.
pub fn build_contact(
    fields: &Map<String, Value>,
    custom_fields: &BTreeMap<String, String>,
) -> Result<Value, String> {
    let mut contact = Map::new();
    let mut custom = Map::new();
    for (name, value) in fields {
        if value.is_null() {
            continue;
        }
        if IDENTIFIERS.contains(&name.as_str()) || RESERVED_TEXT_FIELDS.contains(&name.as_str()) {
            let text = scalar_text(value)
                .ok_or_else(|| format!("field `{name}` must be a string, got {}", kind(value)))?;
            let text = text.trim().to_string();
            if !text.is_empty() {
                contact.insert(name.clone(), Value::String(text));
            }
        } else if name == "alternate_emails" {
            let list: Vec<Value> = match value {
                Value::Array(items) => items
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(|v| {
                        v.as_str()
                            .map(|s| Value::String(s.trim().to_string()))
                            .ok_or_else(|| {
                                "field `alternate_emails` must be a list of strings".to_string()
                            })
                    })
                    .collect::<Result<_, _>>()?,
                Value::String(s) => vec![Value::String(s.trim().to_string())],
                other => {
                    return Err(format!(
                        "field `alternate_emails` must be a list of strings, got {}",
                        kind(other)
                    ))
                }
            };
            if !list.is_empty() {
                contact.insert(name.clone(), Value::Array(list));
            }
        } else if let Some(id) = custom_fields.get(name) {
            match value {
                Value::String(_) | Value::Number(_) => {
                    custom.insert(id.clone(), value.clone());
                }
                Value::Bool(b) => {
                    custom.insert(id.clone(), Value::String(b.to_string()));
                }
                other => {
                    return Err(format!(
                        "custom field `{name}` must be text, a number or a date, got {}",
                        kind(other)
                    ))
                }
            }
        } else {
            return Err(format!(
                "field `{name}` is neither a SendGrid reserved field nor in this destination's custom_fields map"
            ));
        }
    }
    if !IDENTIFIERS.iter().any(|k| contact.contains_key(*k)) {
        return Err(
            "no identifier: a SendGrid contact needs `email`, `phone_number_id`, `external_id` or `anonymous_id`"
                .to_string(),
        );
    }
    if !custom.is_empty() {
        contact.insert("custom_fields".to_string(), Value::Object(custom));
    }
    Ok(Value::Object(contact))
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Splits contacts (record index, contact) into request bodies within the count and size limits.
pub fn chunk_contacts(
    contacts: Vec<(usize, Value)>,
    list_overhead: usize,
) -> Vec<Vec<(usize, Value)>> {
    let mut chunks = Vec::new();
    let mut current: Vec<(usize, Value)> = Vec::new();
    // `{"list_ids":[...],"contacts":[]}` plus a comma per contact.
    let base = 32 + list_overhead;
    let mut size = base;
    for (i, contact) in contacts {
        let len = serde_json::to_vec(&contact).map(|v| v.len()).unwrap_or(0) + 1;
        if !current.is_empty()
            && (current.len() >= MAX_CONTACTS_PER_REQUEST || size + len > MAX_UPSERT_BODY_BYTES)
        {
            chunks.push(std::mem::take(&mut current));
            size = base;
        }
        size += len;
        current.push((i, contact));
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn upsert(
    api: &Api,
    config: &Config,
    batch: &[OutboundRecord],
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    let mut contacts = Vec::new();
    for (i, record) in batch.iter().enumerate() {
        match parse_fields(record).and_then(|f| build_contact(&f, &config.custom_fields)) {
            Ok(contact) => contacts.push((i, contact)),
            Err(reason) => results[i] = Some(RecordResult::Rejected(reason)),
        }
    }
    let overhead = serde_json::to_vec(&config.list_ids)
        .map(|v| v.len())
        .unwrap_or(0);
    let mut queue = chunk_contacts(contacts, overhead);
    let mut requests = 0;
    let mut submitted: Vec<Submitted> = Vec::new();
    let started = switchyard_sdk::time::now();
    while let Some(mut chunk) = queue.pop() {
        loop {
            if chunk.is_empty() {
                break;
            }
            requests += 1;
            if requests > 20 {
                // Something keeps going wrong item by item; let the hub try the rest later.
                for (i, _) in &chunk {
                    results[*i] = Some(RecordResult::Retry(switchyard_sdk::Retry {
                        reason:
                            "SendGrid kept refusing items of this batch; retrying the rest later"
                                .into(),
                        after_ms: None,
                    }));
                }
                break;
            }
            let mut body = json!({
                "contacts": chunk.iter().map(|(_, c)| c).collect::<Vec<_>>(),
            });
            if !config.list_ids.is_empty() {
                body["list_ids"] = json!(config.list_ids);
            }
            let response = api
                .request(Request::put(&api.url("/v3/marketing/contacts")).json(&body))
                .send()?;
            if response.is_success() {
                // 202 means queued, not stored: the import job says what became of them.
                let job = response
                    .json::<Value>()
                    .ok()
                    .and_then(|v| v.get("job_id").and_then(Value::as_str).map(str::to_string));
                switchyard_sdk::debug!(
                    "queued {} contacts: HTTP {}, job {}",
                    chunk.len(),
                    response.status,
                    job.as_deref().unwrap_or("(none)")
                );
                match job {
                    Some(job) => submitted.push(Submitted {
                        job,
                        contacts: chunk,
                    }),
                    None => {
                        for (i, _) in &chunk {
                            results[*i] = Some(RecordResult::Retry(switchyard_sdk::Retry {
                                reason: format!(
                                    "SendGrid answered HTTP {} without a job_id, so the import cannot be followed; sending again later",
                                    response.status
                                ),
                                after_ms: None,
                            }));
                        }
                    }
                }
                break;
            }
            if let Some(shared) = whole_request_failure(&response)? {
                switchyard_sdk::warn!("contacts upsert: HTTP {}, retrying later", response.status);
                for (i, _) in &chunk {
                    results[*i] = Some(shared.clone());
                }
                break;
            }
            if response.status == 413 && chunk.len() > 1 {
                let second = chunk.split_off(chunk.len() / 2);
                queue.push(second);
                continue;
            }
            let (by_item, whole) = item_rejections(&response, "contacts", chunk.len());
            switchyard_sdk::debug!(
                "contacts upsert refused: HTTP {}, {} items named",
                response.status,
                by_item.len()
            );
            if by_item.is_empty() {
                for (i, _) in &chunk {
                    results[*i] = Some(RecordResult::Rejected(whole.clone()));
                }
                break;
            }
            // Nothing of the request was stored: reject the named items, send the rest again.
            let mut kept = Vec::with_capacity(chunk.len());
            for (pos, (i, contact)) in chunk.into_iter().enumerate() {
                match by_item.get(&pos) {
                    Some(reason) => results[i] = Some(RecordResult::Rejected(reason.clone())),
                    None => kept.push((i, contact)),
                }
            }
            chunk = kept;
        }
    }
    let deadline = started + std::time::Duration::from_secs(config.import_wait_secs);
    jobs::follow(api, config, submitted, deadline, results)
}

// ---- changed addresses ----

/// After an upsert: a record whose `email` (this plugin's key field) changed arrives with the
/// fields last acknowledged (`previous_fields`). SendGrid cannot change a contact's email (a
/// contact is found by its identifiers, "a contact ID cannot be used to update", and updating one
/// needs all its existing identifiers: api-contracts.md §1a, SendGrid OAS
/// `tsg_mc_contacts_v3.yaml` `PUT /v3/marketing/contacts`), so the new address became a new
/// contact, and once its import job succeeded the contact under the old address is removed the
/// way `delete` removes one (looked up by email, then by id; per `delete_mode`). A removal that
/// must wait retries the record (the upsert is repeated harmlessly, the removal again); one that
/// fails rejects it, saying the new address is in.
fn retire_old_addresses(
    api: &Api,
    config: &Config,
    batch: &[OutboundRecord],
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    let mut olds: Vec<(usize, OutboundRecord)> = Vec::new();
    for (i, record) in batch.iter().enumerate() {
        if !matches!(results[i], Some(RecordResult::Ok)) {
            continue;
        }
        let Some(old) = record
            .previous_fields
            .as_deref()
            .and_then(|p| serde_json::from_str::<Map<String, Value>>(p).ok())
            .and_then(|p| record_email(&p))
        else {
            continue;
        };
        let new = parse_fields(record).ok().and_then(|f| record_email(&f));
        if new.as_deref() == Some(old.as_str()) {
            continue;
        }
        olds.push((
            i,
            OutboundRecord {
                key: record.key.clone(),
                fields: json!({ "email": old }).to_string(),
                delivery_id: record.delivery_id.clone(),
                previous_fields: None,
            },
        ));
    }
    if olds.is_empty() {
        return Ok(());
    }
    if config.delete_mode == DeleteMode::RemoveFromLists && config.list_ids.is_empty() {
        switchyard_sdk::warn!(
            "{} contacts changed address; the contacts under the old addresses stay in SendGrid: there is no list_ids to take them off, and delete_mode is not \"delete_contact\"",
            olds.len()
        );
        return Ok(());
    }
    let old_batch: Vec<OutboundRecord> = olds.iter().map(|(_, r)| r.clone()).collect();
    let mut removed: Vec<Option<RecordResult>> = vec![None; old_batch.len()];
    delete(api, config, config.delete_mode, &old_batch, &mut removed)?;
    for ((i, _), r) in olds.iter().zip(removed) {
        match r {
            Some(RecordResult::Ok) | None => {}
            Some(RecordResult::Retry(retry)) => {
                results[*i] = Some(RecordResult::Retry(switchyard_sdk::Retry {
                    reason: format!(
                        "the new address is in; removing the contact under the old one: {}",
                        retry.reason
                    ),
                    after_ms: retry.after_ms,
                }))
            }
            Some(RecordResult::Rejected(reason)) => {
                results[*i] = Some(RecordResult::Rejected(format!(
                    "the new address is in, but the contact under the old one could not be removed: {reason}"
                )))
            }
        }
    }
    switchyard_sdk::debug!("{} contacts under changed addresses removed", olds.len());
    Ok(())
}

// ---- delete ----

fn record_email(fields: &Map<String, Value>) -> Option<String> {
    let email = fields.get("email")?.as_str()?.trim().to_lowercase();
    (!email.is_empty()).then_some(email)
}

/// A contact found for a record's address: its id and the lists it is on.
struct Found {
    id: String,
    list_ids: Vec<String>,
}

fn delete(
    api: &Api,
    config: &Config,
    mode: DeleteMode,
    batch: &[OutboundRecord],
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    if mode == DeleteMode::RemoveFromLists && config.list_ids.is_empty() {
        return Err(CallError::InvalidConfig(
            "delete: no list to remove contacts from; set list_ids, or opt into erasing contacts from the whole SendGrid account with delete_mode = \"delete_contact\"".into(),
        ));
    }
    // Unique addresses, each with the records that carry it.
    let mut by_email: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, record) in batch.iter().enumerate() {
        match parse_fields(record) {
            Ok(fields) => match record_email(&fields) {
                Some(email) => by_email.entry(email).or_default().push(i),
                None => {
                    results[i] = Some(RecordResult::Rejected(
                        "no `email` field: SendGrid contacts are found by email".to_string(),
                    ))
                }
            },
            Err(reason) => results[i] = Some(RecordResult::Rejected(reason)),
        }
    }
    let set = |results: &mut [Option<RecordResult>], email: &str, r: RecordResult| {
        for i in &by_email[email] {
            results[*i] = Some(r.clone());
        }
    };
    let emails: Vec<String> = by_email.keys().cloned().collect();
    let mut alternates = 0;
    for chunk in emails.chunks(MAX_LOOKUP_EMAILS) {
        let mut chunk: Vec<String> = chunk.to_vec();
        // Look up the contact ids; a 400 naming some addresses drops those and asks again.
        let mut found: Vec<(String, Found)> = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            if chunk.is_empty() {
                break;
            }
            let response = api
                .request(
                    Request::post(&api.url("/v3/marketing/contacts/search/emails"))
                        .json(&json!({ "emails": chunk })),
                )
                .send()?;
            if response.status == 404 {
                // None of them exists: nothing to remove.
                for email in &chunk {
                    set(results, email, RecordResult::Ok);
                }
                break;
            }
            if response.is_success() {
                let body: Value = response.json()?;
                for email in &chunk {
                    let contact = body
                        .get("result")
                        .and_then(|r| r.get(email))
                        .and_then(|e| e.get("contact"));
                    let Some(contact) = contact else {
                        // Not found: nothing to remove.
                        set(results, email, RecordResult::Ok);
                        continue;
                    };
                    // The lookup also matches `alternate_emails`: a contact whose primary
                    // address differs is someone else's, and is left alone.
                    let primary = contact.get("email").and_then(Value::as_str).unwrap_or("");
                    let id = contact.get("id").and_then(Value::as_str);
                    match id {
                        Some(id) if primary.eq_ignore_ascii_case(email) => {
                            let list_ids = contact
                                .get("list_ids")
                                .and_then(Value::as_array)
                                .map(|a| {
                                    a.iter()
                                        .filter_map(Value::as_str)
                                        .map(str::to_string)
                                        .collect()
                                })
                                .unwrap_or_default();
                            found.push((
                                email.clone(),
                                Found {
                                    id: id.to_string(),
                                    list_ids,
                                },
                            ));
                        }
                        _ => {
                            alternates += 1;
                            set(results, email, RecordResult::Ok);
                        }
                    }
                }
                break;
            }
            if let Some(shared) = whole_request_failure(&response)? {
                for email in &chunk {
                    set(results, email, shared.clone());
                }
                break;
            }
            let (by_item, whole) = item_rejections(&response, "emails", chunk.len());
            if by_item.is_empty() || attempts > 3 {
                for email in &chunk {
                    set(results, email, RecordResult::Rejected(whole.clone()));
                }
                break;
            }
            let mut kept = Vec::new();
            for (pos, email) in chunk.into_iter().enumerate() {
                match by_item.get(&pos) {
                    Some(reason) => set(results, &email, RecordResult::Rejected(reason.clone())),
                    None => kept.push(email),
                }
            }
            chunk = kept;
        }
        if found.is_empty() {
            continue;
        }
        // One request per target, for the contacts it concerns.
        let targets: Vec<(Option<&str>, Vec<&str>)> = match mode {
            DeleteMode::DeleteContact => {
                vec![(None, found.iter().map(|(_, f)| f.id.as_str()).collect())]
            }
            DeleteMode::RemoveFromLists => config
                .list_ids
                .iter()
                .map(|list| {
                    let ids = found
                        .iter()
                        .filter(|(_, f)| f.list_ids.iter().any(|l| l == list))
                        .map(|(_, f)| f.id.as_str())
                        .collect();
                    (Some(list.as_str()), ids)
                })
                .collect(),
        };
        let mut outcome_all = RecordResult::Ok;
        for (list, ids) in targets {
            if ids.is_empty() {
                continue;
            }
            let id_list = ids.join(",");
            let path = match list {
                None => format!("/v3/marketing/contacts?ids={id_list}"),
                Some(list) => format!("/v3/marketing/lists/{list}/contacts?contact_ids={id_list}"),
            };
            let response = api.request(Request::delete(&api.url(&path))).send()?;
            if response.is_success() {
                switchyard_sdk::debug!(
                    "{} {} contacts: HTTP {}",
                    if list.is_some() {
                        "removed from a list"
                    } else {
                        "deleted"
                    },
                    ids.len(),
                    response.status
                );
                continue;
            }
            outcome_all = match whole_request_failure(&response)? {
                Some(shared) => shared,
                None if response.status == 404 => match list {
                    // "The specified list ID does not exist or one or more contact IDs do not
                    // exist" (OAS): which one decides who must act.
                    Some(list) => missing_list_or_contacts(api, list)?,
                    None => RecordResult::Retry(switchyard_sdk::Retry {
                        reason: "SendGrid no longer knows some of these contacts; looking them up again later".into(),
                        after_ms: None,
                    }),
                },
                None => RecordResult::Rejected(format!(
                    "HTTP {}: {}",
                    response.status,
                    outcome::api_message(&response.body)
                )),
            };
            break;
        }
        for (email, _) in &found {
            set(results, email, outcome_all.clone());
        }
    }
    if alternates > 0 {
        switchyard_sdk::warn!(
            "{alternates} addresses belong to other contacts as alternate emails; those contacts were left alone"
        );
    }
    Ok(())
}

/// `GET /v3/marketing/lists/{id}`; a config error naming the list when SendGrid has none.
fn require_list(api: &Api, list: &str) -> Result<Response, CallError> {
    let response = api
        .request(Request::get(
            &api.url(&format!("/v3/marketing/lists/{list}")),
        ))
        .send()?;
    if response.status == 404 {
        return Err(CallError::InvalidConfig(format!(
            "list_ids: SendGrid has no list `{list}`"
        )));
    }
    Ok(response)
}

/// After a 404 on a list removal: a list that is gone is the operator's to fix; otherwise a
/// contact vanished between lookup and removal, and the records are retried.
fn missing_list_or_contacts(api: &Api, list: &str) -> Result<RecordResult, CallError> {
    require_list(api, list)?;
    Ok(RecordResult::Retry(switchyard_sdk::Retry {
        reason: "SendGrid no longer knows some of these contacts; looking them up again later"
            .into(),
        after_ms: None,
    }))
}

// ---- track ----

/// One transactional email: the record, its recipient and its personalization.
#[derive(Debug)]
struct Mail {
    index: usize,
    email: String,
    template: String,
    personalization: Value,
}

pub fn template_for<'c>(config: &'c Config, fields: &Map<String, Value>) -> Option<&'c str> {
    fields
        .get("event")
        .and_then(Value::as_str)
        .and_then(|event| config.event_templates.get(event))
        .or(config.template_id.as_ref())
        .map(String::as_str)
}

fn build_mail(index: usize, record: &OutboundRecord, config: &Config) -> Result<Mail, String> {
    let fields = parse_fields(record)?;
    let email = fields
        .get("email")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or("no `email` field: a track record needs the recipient's email")?
        .to_string();
    let template = template_for(config, &fields).ok_or_else(|| {
        let event = fields
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        format!("no dynamic template for event `{event}`: set template_id or event_templates")
    })?;
    let mut to = json!({ "email": email });
    if let Some(name) = fields
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.trim().is_empty())
    {
        to["name"] = json!(name.trim());
    }
    let personalization = json!({
        "to": [to],
        "dynamic_template_data": Value::Object(fields),
        "custom_args": { "switchyard_key": record.key },
    });
    Ok(Mail {
        index,
        email: email.to_lowercase(),
        template: template.to_string(),
        personalization,
    })
}

/// Groups mails into requests: one template per request, at most 1,000 personalizations, and
/// each address at most once (SendGrid refuses a request that repeats one).
fn group_mails(mails: Vec<Mail>) -> Vec<Vec<Mail>> {
    let mut groups: Vec<(HashSet<String>, Vec<Mail>)> = Vec::new();
    for mail in mails {
        let slot = groups.iter().position(|(seen, g)| {
            g[0].template == mail.template
                && g.len() < MAX_PERSONALIZATIONS
                && !seen.contains(&mail.email)
        });
        match slot {
            Some(s) => {
                groups[s].0.insert(mail.email.clone());
                groups[s].1.push(mail);
            }
            None => {
                let mut seen = HashSet::new();
                seen.insert(mail.email.clone());
                groups.push((seen, vec![mail]));
            }
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

fn track(
    api: &Api,
    config: &Config,
    batch: &[OutboundRecord],
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    let from_email = config.from_email.as_deref().ok_or_else(|| {
        CallError::InvalidConfig("from_email is required to send track records as email".into())
    })?;
    let mut from = json!({ "email": from_email });
    if let Some(name) = &config.from_name {
        from["name"] = json!(name);
    }
    let mut mails = Vec::new();
    for (i, record) in batch.iter().enumerate() {
        match build_mail(i, record, config) {
            Ok(mail) => mails.push(mail),
            Err(reason) => results[i] = Some(RecordResult::Rejected(reason)),
        }
    }
    for mut group in group_mails(mails) {
        let mut attempts = 0;
        while !group.is_empty() {
            attempts += 1;
            let mut body = json!({
                "from": from,
                "template_id": group[0].template,
                "personalizations": group.iter().map(|m| &m.personalization).collect::<Vec<_>>(),
            });
            if !config.categories.is_empty() {
                body["categories"] = json!(config.categories);
            }
            let response = api
                .request(Request::post(&api.url("/v3/mail/send")).json(&body))
                .send()?;
            if response.is_success() {
                switchyard_sdk::debug!(
                    "sent {} emails: HTTP {}, message id {}",
                    group.len(),
                    response.status,
                    response.header("x-message-id").unwrap_or("(none)")
                );
                for m in &group {
                    results[m.index] = Some(RecordResult::Ok);
                }
                break;
            }
            if let Some(shared) = whole_request_failure(&response)? {
                for m in &group {
                    results[m.index] = Some(shared.clone());
                }
                break;
            }
            let (by_item, whole) = item_rejections(&response, "personalizations", group.len());
            if by_item.is_empty() || attempts > 5 {
                for m in &group {
                    results[m.index] = Some(RecordResult::Rejected(whole.clone()));
                }
                break;
            }
            // SendGrid sent nothing: reject the named personalizations, send the others again.
            let mut kept = Vec::new();
            for (pos, m) in group.into_iter().enumerate() {
                match by_item.get(&pos) {
                    Some(reason) => results[m.index] = Some(RecordResult::Rejected(reason.clone())),
                    None => kept.push(m),
                }
            }
            group = kept;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn config(v: Value) -> Config {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn contact_maps_reserved_and_custom_fields() {
        let custom = BTreeMap::from([
            ("plan".to_string(), "e1_T".to_string()),
            ("ltv".to_string(), "e2_N".to_string()),
        ]);
        let c = build_contact(
            &fields(json!({"email": " Ada@Example.com ", "first_name": "Ada", "postal_code": 94107,
                           "plan": "pro", "ltv": 12.5, "city": null, "alternate_emails": ["a@b.co"]})),
            &custom,
        )
        .unwrap();
        assert_eq!(
            c,
            json!({"email": "Ada@Example.com", "first_name": "Ada", "postal_code": "94107",
                   "alternate_emails": ["a@b.co"], "custom_fields": {"e1_T": "pro", "e2_N": 12.5}})
        );
    }

    #[test]
    fn contact_rejects_unknown_fields_and_missing_identifiers() {
        let err = build_contact(
            &fields(json!({"email": "a@b.co", "plan": "x"})),
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.contains("`plan`"), "{err}");
        let err = build_contact(&fields(json!({"first_name": "A"})), &BTreeMap::new()).unwrap_err();
        assert!(err.contains("no identifier"), "{err}");
        let err = build_contact(&fields(json!({"email": {"x": 1}})), &BTreeMap::new()).unwrap_err();
        assert!(err.contains("must be a string"), "{err}");
        assert!(build_contact(&fields(json!({"external_id": "crm-1"})), &BTreeMap::new()).is_ok());
    }

    #[test]
    fn field_paths_name_items() {
        assert_eq!(
            item_index("contacts[3].email", "contacts"),
            Some((3, "email".into()))
        );
        assert_eq!(
            item_index("contacts.12.custom_fields.e1_T", "contacts"),
            Some((12, "custom_fields.e1_T".into()))
        );
        assert_eq!(
            item_index("personalizations.0.to.0.email", "personalizations"),
            Some((0, "to.0.email".into()))
        );
        assert_eq!(item_index("emails[1]", "emails"), Some((1, String::new())));
        assert_eq!(item_index("list_ids", "contacts"), None);
        assert_eq!(item_index("contacts", "contacts"), None);
    }

    #[test]
    fn item_errors_split_from_request_errors() {
        let response = Response {
            status: 400,
            headers: vec![],
            body:
                br#"{"errors":[{"field":"contacts[1].email","message":"Email address is invalid"},
                               {"field":"contacts[1].first_name","message":"too long"},
                               {"field":"contacts[7].email","message":"out of range"}]}"#
                    .to_vec(),
        };
        let (items, whole) = item_rejections(&response, "contacts", 3);
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[&1],
            "HTTP 400: email: Email address is invalid; first_name: too long"
        );
        assert_eq!(whole, "HTTP 400: contacts[7].email: out of range");
    }

    #[test]
    fn chunks_respect_count_and_size() {
        let big = "x".repeat(1_000_000);
        let contacts: Vec<(usize, Value)> = (0..13)
            .map(|i| (i, json!({"email": format!("{i}@x.co"), "city": big})))
            .collect();
        let chunks = chunk_contacts(contacts, 0);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![5, 5, 3]
        );
        for chunk in &chunks {
            let body = json!({"contacts": chunk.iter().map(|(_, c)| c).collect::<Vec<_>>()});
            assert!(serde_json::to_vec(&body).unwrap().len() <= MAX_UPSERT_BODY_BYTES);
        }
        let small: Vec<(usize, Value)> = (0..30_001)
            .map(|i| (i, json!({"email": "a@b.co"})))
            .collect();
        let chunks = chunk_contacts(small, 0);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![30_000, 1]
        );
    }

    #[test]
    fn mails_group_by_template_and_unique_address() {
        let cfg = config(
            json!({"template_id": "d-default", "event_templates": {"Order Completed": "d-order"},
                                "from_email": "shop@example.com"}),
        );
        let rec = |k: &str, f: Value| OutboundRecord {
            key: k.into(),
            fields: f.to_string(),
            delivery_id: format!("dlv_{k}"),
            previous_fields: None,
        };
        let mails: Vec<Mail> = [
            rec("1", json!({"email": "a@x.co", "event": "Order Completed"})),
            rec("2", json!({"email": "A@x.co", "event": "Order Completed"})),
            rec("3", json!({"email": "b@x.co", "event": "Signed Up"})),
            rec("4", json!({"email": "c@x.co", "event": "Order Completed"})),
        ]
        .iter()
        .enumerate()
        .map(|(i, r)| build_mail(i, r, &cfg).unwrap())
        .collect();
        let groups = group_mails(mails);
        let shape: Vec<(String, Vec<usize>)> = groups
            .iter()
            .map(|g| (g[0].template.clone(), g.iter().map(|m| m.index).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("d-order".into(), vec![0, 3]),
                ("d-order".into(), vec![1]),
                ("d-default".into(), vec![2])
            ]
        );
        assert_eq!(
            groups[0][0].personalization["custom_args"]["switchyard_key"],
            "1"
        );
        assert_eq!(
            groups[0][0].personalization["dynamic_template_data"]["event"],
            "Order Completed"
        );
        let none = config(json!({"from_email": "shop@example.com"}));
        assert!(build_mail(0, &rec("x", json!({"email": "a@x.co"})), &none)
            .unwrap_err()
            .contains("no dynamic template"));
    }

    #[test]
    fn only_429_waits_for_rate_limit_reset() {
        let reset = (switchyard_sdk::time::now_unix() + 20).to_string();
        let resp = |status| Response {
            status,
            headers: vec![("x-ratelimit-reset".into(), reset.clone())],
            body: vec![],
        };
        let after = retry(&resp(429)).after_ms.unwrap();
        assert!((18_000..=20_000).contains(&after), "{after}");
        assert_eq!(retry(&resp(500)).after_ms, None);
    }

    #[test]
    fn removal_defaults_to_the_lists_and_erasing_is_opt_in_by_name() {
        let c = config(json!({"list_ids": ["ca7a3796-e8a8-4029-9ccb-df8937940562"]}));
        assert_eq!(c.delete_mode, DeleteMode::RemoveFromLists);
        assert_eq!(c.import_wait_secs, DEFAULT_IMPORT_WAIT_SECS);
        assert_eq!(
            config(json!({"delete_mode": "delete_contact"})).delete_mode,
            DeleteMode::DeleteContact
        );
        // An upsert- or track-only destination needs no list.
        assert!(validate_config(&config(json!({}))).is_ok());
    }

    #[test]
    fn config_is_checked() {
        assert!(validate_config(&config(
            json!({"list_ids": ["ca7a3796-e8a8-4029-9ccb-df8937940562"]})
        ))
        .is_ok());
        assert!(matches!(
            validate_config(&config(json!({"list_ids": ["newsletter"]}))),
            Err(CallError::InvalidConfig(_))
        ));
        assert!(matches!(
            validate_config(&config(json!({"import_wait_secs": 0}))),
            Err(CallError::InvalidConfig(_))
        ));
        assert!(matches!(
            validate_config(&config(json!({"import_wait_secs": 55}))),
            Err(CallError::InvalidConfig(_))
        ));
        assert!(matches!(
            validate_config(&config(json!({"custom_fields": {"first_name": "e1"}}))),
            Err(CallError::InvalidConfig(_))
        ));
        assert!(serde_json::from_value::<Config>(json!({"listids": []})).is_err());
    }
}
