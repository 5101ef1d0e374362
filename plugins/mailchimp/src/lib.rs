//! Mailchimp destination (Marketing API 3.0): keeps the members of one audience (list).
//!
//! An upsert never changes an existing member's subscription status unless the record itself
//! carries a `status`: members get `status_if_new` (applied only to addresses not yet on the
//! list) and no `status`. So unsubscribed and cleaned members stay so (Mailchimp refuses to
//! resubscribe them: "Member In Compliance State"), and pending members are not pushed past
//! double opt-in.
//!
//! * `upsert`, `upsert_via = "batch"` (default): `POST /3.0/lists/{list_id}` ("batch subscribe
//!   or unsubscribe", at most 500 members per request, `update_existing: true`, each member
//!   with `status_if_new`, which Mailchimp's API definition has per batch member). Mailchimp
//!   answers 200 even when some members fail; each entry of its `errors[]` (`email_address`,
//!   `error`, `error_code`) rejects that record with Mailchimp's message.
//! * `upsert`, `upsert_via = "member"`: `PUT /3.0/lists/{list_id}/members/{subscriber_hash}`
//!   per record, same body; a refusal (`Member In Compliance State`, `Forgotten Email Not
//!   Subscribed`) rejects the record with Mailchimp's `title: detail`.
//! * The status for new members is the config's `status`, else `pending` when the audience
//!   has double opt-in (`GET /3.0/lists/{list_id}` → `double_optin`) and `subscribed` when not.
//! * a changed address (the hub sends `previous_fields` when `email`, this plugin's key field,
//!   changed since the last acknowledged upsert): before the upsert, the member under the old
//!   address is renamed in place, `PATCH .../members/{old subscriber_hash}` with the new
//!   `email_address` (Mailchimp's "Update list member"; the member keeps its status, history
//!   and merge fields), then updated as usual. An old address Mailchimp does not know (404) is
//!   nothing to rename. When Mailchimp refuses the rename (400: the new address is already a
//!   member, or was permanently deleted), the old member is removed as `delete` would and the
//!   new address is upserted.
//! * `delete`: archives the member (`DELETE .../members/{subscriber_hash}`, the default; the
//!   contact can come back), or with `delete_mode = "unsubscribe"` sets it `unsubscribed`
//!   (`PATCH .../members/{subscriber_hash}`), or only with `delete_mode = "permanent"` deletes
//!   it for good (`POST .../actions/delete-permanent`; the address can then never be
//!   re-imported). A member Mailchimp does not know is already gone.
//! * `erase` (a privacy erasure, contract 1.1.0): always `POST .../actions/delete-permanent`
//!   ("Delete list member": "Delete all personally identifiable information related to a list
//!   member, and remove them from a list",
//!   <https://mailchimp.com/developer/marketing/api/list-member-actions/delete-list-member/>),
//!   whatever `delete_mode` says. A 404 (no such member, or already deleted) is ok: nothing is
//!   left to erase.
//!
//! The subscriber hash is the MD5 of the lower-cased email (hex). The API key ends in its
//! datacenter (`...-us14`), which picks the host `us14.api.mailchimp.com`.
//!
//! Fields read from a record (`fields`, a JSON object):
//!
//! * `email` (required): the member's address;
//! * `status` (optional): `subscribed`, `unsubscribed`, `pending`, `transactional` or `cleaned`:
//!   the member's status, new or existing (the only way an upsert changes an existing
//!   member's status);
//! * `tags` (list of strings), `language`, `vip` (boolean), `email_type` (`html` / `text`);
//! * merge fields: every field named in the config's `merge_fields` map (defaults:
//!   `first_name` → `FNAME`, `last_name` → `LNAME`, `phone` → `PHONE`), and any field whose name
//!   already is a merge tag (upper-case letters, digits and `_`, e.g. `BIRTHDAY`).
//!
//! Any other field is rejected with a message naming it; `null` values are left out.
//!
//! Errors: 429 and 5xx are retried (after `Retry-After` when Mailchimp sends one; it usually
//! does not, and the hub then backs off with jitter); 401/403 fail the call as unauthorized; a
//! refused request rejects its records with Mailchimp's problem `title: detail`.
//! The API key is only used to build the Basic `Authorization` header (Mailchimp's scheme needs
//! the key inside a base64 value, so it cannot be a header placeholder) and its datacenter; it is
//! never logged, and neither are email addresses or their hashes.

use std::collections::{BTreeMap, HashSet};

use md5::{Digest, Md5};
use serde::Deserialize;
use switchyard_sdk::http::{Request, Response};
use switchyard_sdk::serde_json::{self, json, Map, Value};
use switchyard_sdk::{
    outcome, schemars, time, Action, CallError, Capabilities, Context, Destination, OutboundRecord,
    Plugin, RecordResult, Retry,
};

/// Most members one batch subscribe request takes.
pub const MAX_BATCH_MEMBERS: usize = 500;

/// Settings of one `[destinations.NAME]` block using the `mailchimp` plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The audience (list) id, from Audience → Settings → "Audience name and defaults".
    pub list_id: String,
    /// Status of members this destination adds (`status_if_new`; existing members keep
    /// theirs): `subscribed`, `pending` (Mailchimp sends a double opt-in email),
    /// `unsubscribed` or `transactional`. Unset: `pending` when the audience has double
    /// opt-in, else `subscribed`.
    #[serde(default)]
    pub status: Option<MemberStatus>,
    /// `batch` (default): `POST /lists/{id}`, 500 members per request. `member`: one
    /// `PUT /lists/{id}/members/{hash}` per record with `status_if_new`.
    #[serde(default)]
    pub upsert_via: UpsertVia,
    /// Record field name → merge tag, e.g. `{"plan": "PLAN"}`. Added to the defaults
    /// `first_name` → `FNAME`, `last_name` → `LNAME`, `phone` → `PHONE` (which it can override).
    #[serde(default)]
    pub merge_fields: BTreeMap<String, String>,
    /// What `delete` (a profile leaving the synced audience) does: `archive` (default; the
    /// member leaves the audience and can come back), `unsubscribe` (the member stays,
    /// unsubscribed), or, only when named, `permanent` (erases the member; Mailchimp then
    /// refuses to re-import the address).
    #[serde(default)]
    pub delete_mode: DeleteMode,
    /// Let Mailchimp accept members even when required merge fields are missing.
    #[serde(default)]
    pub skip_merge_validation: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    #[default]
    Subscribed,
    Pending,
    Unsubscribed,
    Transactional,
}

impl MemberStatus {
    fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Subscribed => "subscribed",
            MemberStatus::Pending => "pending",
            MemberStatus::Unsubscribed => "unsubscribed",
            MemberStatus::Transactional => "transactional",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpsertVia {
    #[default]
    Batch,
    Member,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    #[default]
    Archive,
    Unsubscribe,
    Permanent,
}

struct Mailchimp;

impl Plugin for Mailchimp {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("mailchimp")
            // The datacenter in the API key picks the host, e.g. us14.api.mailchimp.com.
            .allowed_host("*.api.mailchimp.com")
            .secret_value(
                "api_key",
                "Mailchimp API key (Account → Extras → API keys), ending in its datacenter like -us14",
                true,
            )
            .max_batch_size(MAX_BATCH_MEMBERS as u32)
            // Mailchimp limits an account to 10 simultaneous connections, not to a rate; the hub
            // makes one request at a time per batch, and 429s are retried.
            .default_rate_per_second(10.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Erase])
            // Members are keyed by address: a changed `email` renames the member.
            .key_fields(&["email"])
    }

    /// `GET /3.0/ping` proves the key and datacenter; `GET /3.0/lists/{list_id}` that the
    /// audience exists.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let api = Api::new(ctx)?;
        let response = api.send(Request::get(&api.url("/ping")))?;
        call_result(&response)?;
        let response = api.send(Request::get(
            &api.url(&format!("/lists/{}?fields=id,name", ctx.config.list_id)),
        ))?;
        if response.status == 404 {
            return Err(CallError::InvalidConfig(format!(
                "list_id: Mailchimp has no audience `{}` in this account",
                ctx.config.list_id
            )));
        }
        call_result(&response)
    }
}

impl Destination for Mailchimp {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let api = Api::new(ctx)?;
        let mut results: Vec<Option<RecordResult>> = vec![None; batch.len()];
        match (action, ctx.config.upsert_via) {
            (Action::Upsert, via) => {
                let if_new = match status_if_new(&api) {
                    Ok(status) => status,
                    // Throttled or down: every record waits, as for any other request.
                    Err(CallError::Transient(retry)) => {
                        return Ok(vec![RecordResult::Retry(retry); batch.len()])
                    }
                    Err(e) => return Err(e),
                };
                let members = parse_all(&api.ctx.config, if_new, &batch, &mut results);
                let members = rename(&api, &batch, members, &mut results)?;
                match via {
                    UpsertVia::Batch => upsert_batch(&api, members, &mut results)?,
                    UpsertVia::Member => upsert_members(&api, members, &mut results)?,
                }
            }
            (Action::Delete, _) => delete(&api, api.ctx.config.delete_mode, &batch, &mut results)?,
            (Action::Track, _) => {
                return Err(CallError::InvalidConfig(
                    "the mailchimp destination takes upsert and delete, not track".into(),
                ))
            }
            // A privacy erasure: delete-permanent, whatever `delete_mode` says for audience
            // removals.
            (Action::Erase, _) => delete(&api, DeleteMode::Permanent, &batch, &mut results)?,
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

switchyard_sdk::export_destination!(Mailchimp);

// ---- hashing, key, config ----

/// Mailchimp's subscriber hash: MD5 of the lower-cased email, lowercase hex.
pub fn subscriber_hash(email: &str) -> String {
    hex::encode(Md5::digest(email.trim().to_lowercase().as_bytes()))
}

/// The datacenter at the end of an API key (`...-us14` → `us14`).
pub fn datacenter(api_key: &str) -> Result<&str, CallError> {
    let dc = api_key
        .trim()
        .rsplit_once('-')
        .map(|(_, dc)| dc)
        .unwrap_or("");
    let letters = dc.trim_end_matches(|c: char| c.is_ascii_digit());
    if letters.is_empty()
        || letters.len() == dc.len()
        || !letters.bytes().all(|b| b.is_ascii_lowercase())
    {
        return Err(CallError::InvalidConfig(
            "secret `api_key` must end in its datacenter, like `...-us14` (copy the whole key from Mailchimp)"
                .into(),
        ));
    }
    Ok(dc)
}

/// A merge tag as Mailchimp names them: upper-case letters, digits, `_`, starting with a letter.
pub fn is_merge_tag(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 10
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn merge_map(config: &Config) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = [
        ("first_name", "FNAME"),
        ("last_name", "LNAME"),
        ("phone", "PHONE"),
    ]
    .into_iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect();
    for (field, tag) in &config.merge_fields {
        map.insert(field.clone(), tag.clone());
    }
    map
}

fn validate_config(config: &Config) -> Result<(), CallError> {
    if config.list_id.is_empty() || !config.list_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CallError::InvalidConfig(format!(
            "list_id: `{}` is not a Mailchimp audience id (letters and digits, like a1b2c3d4e5)",
            config.list_id
        )));
    }
    for (field, tag) in &config.merge_fields {
        if !is_merge_tag(tag) {
            return Err(CallError::InvalidConfig(format!(
                "merge_fields.{field}: `{tag}` is not a merge tag (upper-case letters, digits and _, at most 10)"
            )));
        }
    }
    Ok(())
}

// ---- HTTP ----

struct Api<'a> {
    base: String,
    authorization: String,
    ctx: &'a Context<Config>,
}

impl<'a> Api<'a> {
    fn new(ctx: &'a Context<Config>) -> Result<Self, CallError> {
        validate_config(&ctx.config)?;
        let key = ctx.secret("api_key")?.trim();
        let dc = datacenter(key)?;
        // Build the header once; the key itself goes no further.
        let authorization = Request::get("https://x")
            .basic_auth("switchyard", key)
            .headers
            .into_iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v)
            .unwrap_or_default();
        Ok(Api {
            base: format!("https://{dc}.api.mailchimp.com/3.0"),
            authorization,
            ctx,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn list_url(&self, rest: &str) -> String {
        self.url(&format!("/lists/{}{rest}", self.ctx.config.list_id))
    }

    fn query(&self) -> &'static str {
        if self.ctx.config.skip_merge_validation {
            "?skip_merge_validation=true"
        } else {
            ""
        }
    }

    fn send(&self, request: Request) -> Result<Response, CallError> {
        Ok(request
            .header("authorization", &self.authorization)
            .header("accept", "application/json")
            .send()?)
    }
}

/// Mailchimp's problem document as one line: `title: detail` plus any field errors.
pub fn problem_message(response: &Response) -> String {
    let mut message = outcome::api_message(&response.body);
    if let Ok(body) = serde_json::from_slice::<Value>(&response.body) {
        let fields: Vec<String> = body
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let m = e.get("message").and_then(Value::as_str)?;
                Some(
                    match e
                        .get("field")
                        .and_then(Value::as_str)
                        .filter(|f| !f.is_empty())
                    {
                        Some(f) => format!("{f}: {m}"),
                        None => m.to_string(),
                    },
                )
            })
            .collect();
        if body.get("detail").is_some() && !fields.is_empty() {
            message = format!("{message} ({})", fields.join("; "));
        }
    }
    format!("HTTP {}: {message}", response.status)
}

fn call_result(response: &Response) -> Result<(), CallError> {
    if response.is_success() {
        return Ok(());
    }
    match response.status {
        401 | 403 => Err(CallError::Unauthorized(problem_message(response))),
        s if outcome::is_retryable_status(s) => Err(CallError::Transient(retry(response))),
        _ => Err(CallError::InvalidConfig(problem_message(response))),
    }
}

fn retry(response: &Response) -> Retry {
    Retry {
        reason: problem_message(response),
        after_ms: outcome::retry_after_ms(response, time::now_unix()),
    }
}

/// What a response that is not a success means for the records it was about: `Err` for bad
/// credentials, otherwise a retry (429/5xx) or a rejection with Mailchimp's message.
fn failure(response: &Response) -> Result<RecordResult, CallError> {
    match response.status {
        401 | 403 => Err(CallError::Unauthorized(problem_message(response))),
        s if outcome::is_retryable_status(s) => Ok(RecordResult::Retry(retry(response))),
        _ => Ok(RecordResult::Rejected(problem_message(response))),
    }
}

// ---- members ----

/// A record turned into a Mailchimp member body: `status_if_new` always, `status` only when
/// the record carries one (so an existing member's status is never changed behind its back).
#[derive(Debug)]
pub struct Member {
    pub index: usize,
    /// Lower-cased, for matching Mailchimp's answers.
    pub email: String,
    pub body: Map<String, Value>,
    /// Whether the record carried its own `status`.
    pub explicit_status: bool,
}

pub fn build_member(
    index: usize,
    record: &OutboundRecord,
    config: &Config,
    status_if_new: MemberStatus,
) -> Result<Member, String> {
    let fields = match serde_json::from_str::<Value>(&record.fields) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err("fields are not a JSON object".into()),
        Err(e) => return Err(format!("fields are not valid JSON: {e}")),
    };
    let email = fields
        .get("email")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or("no `email` field: Mailchimp members are keyed by email")?
        .to_string();
    let merge_map = merge_map(config);
    let mut body = Map::new();
    body.insert("email_address".into(), json!(email));
    let mut merge = Map::new();
    let mut explicit_status = false;
    body.insert("status_if_new".into(), json!(status_if_new.as_str()));
    for (name, value) in &fields {
        if value.is_null() || name == "email" {
            continue;
        }
        match name.as_str() {
            "status" => {
                let s = value.as_str().unwrap_or("");
                if ![
                    "subscribed",
                    "unsubscribed",
                    "cleaned",
                    "pending",
                    "transactional",
                ]
                .contains(&s)
                {
                    return Err(format!(
                        "field `status` must be subscribed, unsubscribed, cleaned, pending or transactional, got {value}"
                    ));
                }
                body.insert("status".into(), json!(s));
                explicit_status = true;
            }
            "tags" => {
                let tags: Vec<&str> = match value {
                    Value::Array(items) => items
                        .iter()
                        .map(|t| t.as_str().ok_or("field `tags` must be a list of strings"))
                        .collect::<Result<_, _>>()?,
                    Value::String(s) => vec![s.as_str()],
                    _ => return Err("field `tags` must be a list of strings".into()),
                };
                body.insert("tags".into(), json!(tags));
            }
            "language" | "email_type" => {
                let s = value
                    .as_str()
                    .ok_or_else(|| format!("field `{name}` must be a string"))?;
                body.insert(name.clone(), json!(s));
            }
            "vip" => {
                let b = value.as_bool().ok_or("field `vip` must be true or false")?;
                body.insert("vip".into(), json!(b));
            }
            _ => {
                let tag = match merge_map.get(name) {
                    Some(tag) => tag.clone(),
                    None if is_merge_tag(name) => name.clone(),
                    None => {
                        return Err(format!(
                            "field `{name}` is not a Mailchimp member field, a merge tag, or in this destination's merge_fields map"
                        ))
                    }
                };
                let v = match value {
                    Value::String(_) | Value::Number(_) => value.clone(),
                    Value::Bool(b) => json!(b.to_string()),
                    // Address merge fields are objects (addr1, city, state, zip, country).
                    Value::Object(_) => value.clone(),
                    _ => {
                        return Err(format!(
                            "field `{name}` must be text, a number or an address object"
                        ))
                    }
                };
                merge.insert(tag, v);
            }
        }
    }
    if !merge.is_empty() {
        body.insert("merge_fields".into(), Value::Object(merge));
    }
    Ok(Member {
        index,
        email: email.to_lowercase(),
        body,
        explicit_status,
    })
}

/// Requests of at most 500 members in which every address appears once.
pub fn group_members(members: Vec<Member>) -> Vec<Vec<Member>> {
    let mut groups: Vec<(HashSet<String>, Vec<Member>)> = Vec::new();
    for m in members {
        match groups
            .iter()
            .position(|(seen, g)| g.len() < MAX_BATCH_MEMBERS && !seen.contains(&m.email))
        {
            Some(i) => {
                groups[i].0.insert(m.email.clone());
                groups[i].1.push(m);
            }
            None => groups.push((HashSet::from([m.email.clone()]), vec![m])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Per-member errors of a batch subscribe answer, by lower-cased address.
pub fn batch_errors(body: &Value) -> BTreeMap<String, String> {
    body.get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let email = e
                .get("email_address")
                .and_then(Value::as_str)?
                .trim()
                .to_lowercase();
            let error = e
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused by Mailchimp");
            let message = match e.get("error_code").and_then(Value::as_str) {
                Some(code) => format!("{error} ({code})"),
                None => error.to_string(),
            };
            Some((email, message))
        })
        .collect()
}

/// The status new members get: the config's, else `pending` when the audience has double
/// opt-in (Mailchimp then mails the confirmation), else `subscribed`.
fn status_if_new(api: &Api) -> Result<MemberStatus, CallError> {
    if let Some(status) = api.ctx.config.status {
        return Ok(status);
    }
    let response = api.send(Request::get(&api.list_url("?fields=double_optin")))?;
    if response.status == 404 {
        return Err(CallError::InvalidConfig(format!(
            "list_id: Mailchimp has no audience `{}` in this account",
            api.ctx.config.list_id
        )));
    }
    call_result(&response)?;
    let list: Value = response.json()?;
    Ok(
        if list.get("double_optin").and_then(Value::as_bool) == Some(true) {
            MemberStatus::Pending
        } else {
            MemberStatus::Subscribed
        },
    )
}

fn parse_all(
    config: &Config,
    status_if_new: MemberStatus,
    batch: &[OutboundRecord],
    results: &mut [Option<RecordResult>],
) -> Vec<Member> {
    let mut members = Vec::new();
    for (i, record) in batch.iter().enumerate() {
        match build_member(i, record, config, status_if_new) {
            Ok(m) => members.push(m),
            Err(reason) => results[i] = Some(RecordResult::Rejected(reason)),
        }
    }
    members
}

fn upsert_batch(
    api: &Api,
    members: Vec<Member>,
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    for group in group_members(members) {
        let body = json!({
            "members": group.iter().map(|m| &m.body).collect::<Vec<_>>(),
            "update_existing": true,
        });
        let response = api.send(Request::post(&api.list_url(api.query())).json(&body))?;
        if !response.is_success() {
            let shared = failure(&response)?;
            switchyard_sdk::warn!(
                "batch subscribe of {} members: {}",
                group.len(),
                problem_message(&response)
            );
            for m in &group {
                results[m.index] = Some(shared.clone());
            }
            continue;
        }
        let answer: Value = response.json()?;
        let errors = batch_errors(&answer);
        switchyard_sdk::debug!(
            "batch subscribe: HTTP {}, {} created, {} updated, {} errors",
            response.status,
            answer
                .get("total_created")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            answer
                .get("total_updated")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            errors.len()
        );
        for m in &group {
            results[m.index] = Some(match errors.get(&m.email) {
                Some(message) => RecordResult::Rejected(message.clone()),
                None => RecordResult::Ok,
            });
        }
    }
    Ok(())
}

fn upsert_members(
    api: &Api,
    members: Vec<Member>,
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    let count = members.len();
    let mut stop: Option<RecordResult> = None;
    for m in members {
        if let Some(r) = &stop {
            results[m.index] = Some(r.clone());
            continue;
        }
        let url = api.list_url(&format!(
            "/members/{}{}",
            subscriber_hash(&m.email),
            api.query()
        ));
        let response = api.send(Request::put(&url).json(&m.body))?;
        if response.is_success() {
            results[m.index] = Some(RecordResult::Ok);
            continue;
        }
        let r = failure(&response)?;
        if matches!(r, RecordResult::Retry(_)) {
            // Throttled or down: the rest of the batch waits too.
            stop = Some(r.clone());
        }
        results[m.index] = Some(r);
    }
    switchyard_sdk::debug!("upserted {count} members one by one");
    Ok(())
}

/// The old address of a record whose `email` changed since it was last acknowledged.
fn previous_email(record: &OutboundRecord, new_email: &str) -> Option<String> {
    let previous = serde_json::from_str::<Value>(record.previous_fields.as_deref()?).ok()?;
    let old = previous.get("email")?.as_str()?.trim().to_lowercase();
    (!old.is_empty() && old != new_email).then_some(old)
}

/// The request that removes the member `hash` as `mode` says.
fn removal(api: &Api, hash: &str, mode: DeleteMode) -> Request {
    match mode {
        DeleteMode::Archive => Request::delete(&api.list_url(&format!("/members/{hash}"))),
        DeleteMode::Unsubscribe => Request::patch(&api.list_url(&format!("/members/{hash}")))
            .json(&json!({ "status": "unsubscribed" })),
        DeleteMode::Permanent => {
            Request::post(&api.list_url(&format!("/members/{hash}/actions/delete-permanent")))
        }
    }
}

/// Renames the members of records whose address changed (see the module docs) and returns the
/// members still to upsert; a record whose rename must wait (throttled, down) gets its result
/// here and is left out.
fn rename(
    api: &Api,
    batch: &[OutboundRecord],
    members: Vec<Member>,
    results: &mut [Option<RecordResult>],
) -> Result<Vec<Member>, CallError> {
    let mut kept = Vec::with_capacity(members.len());
    let mut stop: Option<RecordResult> = None;
    let (mut renamed, mut absent, mut replaced) = (0, 0, 0);
    for m in members {
        let Some(old) = previous_email(&batch[m.index], &m.email) else {
            kept.push(m);
            continue;
        };
        if let Some(r) = &stop {
            results[m.index] = Some(r.clone());
            continue;
        }
        let old_hash = subscriber_hash(&old);
        let new_address = m
            .body
            .get("email_address")
            .cloned()
            .unwrap_or(json!(m.email));
        let response = api.send(
            Request::patch(&api.list_url(&format!("/members/{old_hash}")))
                .json(&json!({ "email_address": new_address })),
        )?;
        if response.is_success() {
            renamed += 1;
            kept.push(m);
            continue;
        }
        match response.status {
            404 => {
                absent += 1;
                kept.push(m);
            }
            400 => {
                // The new address is taken (or forgotten): the old member goes, the new
                // address is upserted (and refused there if Mailchimp refuses it).
                let removed = api.send(removal(api, &old_hash, api.ctx.config.delete_mode))?;
                if removed.is_success() || removed.status == 404 {
                    replaced += 1;
                    kept.push(m);
                } else {
                    let r = failure(&removed)?;
                    if matches!(r, RecordResult::Retry(_)) {
                        stop = Some(r.clone());
                    }
                    results[m.index] = Some(r);
                }
            }
            _ => {
                let r = failure(&response)?;
                if matches!(r, RecordResult::Retry(_)) {
                    stop = Some(r.clone());
                }
                results[m.index] = Some(r);
            }
        }
    }
    if renamed + absent + replaced > 0 {
        switchyard_sdk::debug!(
            "changed addresses: {renamed} members renamed, {absent} old addresses absent, {replaced} replaced"
        );
    }
    Ok(kept)
}

fn delete(
    api: &Api,
    mode: DeleteMode,
    batch: &[OutboundRecord],
    results: &mut [Option<RecordResult>],
) -> Result<(), CallError> {
    let mut stop: Option<RecordResult> = None;
    let mut done: BTreeMap<String, RecordResult> = BTreeMap::new();
    let (mut archived, mut missing) = (0, 0);
    for (i, record) in batch.iter().enumerate() {
        if let Some(r) = &stop {
            results[i] = Some(r.clone());
            continue;
        }
        let email = serde_json::from_str::<Value>(&record.fields)
            .ok()
            .and_then(|f| {
                f.get("email")
                    .and_then(Value::as_str)
                    .map(|e| e.trim().to_lowercase())
            })
            .filter(|e| !e.is_empty());
        let Some(email) = email else {
            results[i] = Some(RecordResult::Rejected(
                "no `email` field: Mailchimp members are deleted by email".into(),
            ));
            continue;
        };
        if let Some(r) = done.get(&email) {
            results[i] = Some(r.clone());
            continue;
        }
        let hash = subscriber_hash(&email);
        let response = api.send(removal(api, &hash, mode))?;
        let r = if response.is_success() {
            archived += 1;
            RecordResult::Ok
        } else if response.status == 404 {
            // Not on the list (never was, or already archived/deleted): nothing to do.
            missing += 1;
            RecordResult::Ok
        } else {
            let r = failure(&response)?;
            if matches!(r, RecordResult::Retry(_)) {
                stop = Some(r.clone());
            }
            r
        };
        done.insert(email, r.clone());
        results[i] = Some(r);
    }
    switchyard_sdk::debug!("delete ({mode:?}): {archived} removed, {missing} already absent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> Config {
        serde_json::from_value(v).unwrap()
    }

    fn rec(fields: Value) -> OutboundRecord {
        OutboundRecord {
            key: "k".into(),
            fields: fields.to_string(),
            delivery_id: "dlv_k".into(),
            previous_fields: None,
        }
    }

    #[test]
    fn the_previous_address_is_read_only_when_it_changed() {
        let mut r = rec(json!({"email": "new@x.com"}));
        assert_eq!(previous_email(&r, "new@x.com"), None);
        r.previous_fields = Some(json!({"email": " Old@X.com "}).to_string());
        assert_eq!(
            previous_email(&r, "new@x.com").as_deref(),
            Some("old@x.com")
        );
        // Only the case changed: the same member (its hash is of the lower-cased address).
        r.previous_fields = Some(json!({"email": "NEW@x.com"}).to_string());
        assert_eq!(previous_email(&r, "new@x.com"), None);
        r.previous_fields = Some(json!({"first_name": "Ada"}).to_string());
        assert_eq!(previous_email(&r, "new@x.com"), None);
    }

    #[test]
    fn subscriber_hash_matches_mailchimp_vectors() {
        // api-contracts.md §2, "Test vectors (MD5 subscriber hash)".
        assert_eq!(
            subscriber_hash("test@example.com"),
            "55502f40dc8b7c769880b10874abc9d0"
        );
        assert_eq!(
            subscriber_hash("urist.mcvankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
        assert_eq!(
            subscriber_hash("janedoe@gmail.com"),
            "a9601f3839e5d5da764c1861a5e1daf6"
        );
        // Lower-cased (and trimmed) before hashing.
        assert_eq!(
            subscriber_hash(" Urist.McVankab@FreddiesJokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[test]
    fn datacenter_comes_from_the_key() {
        assert_eq!(
            datacenter("0123456789abcdef0123456789abcdef-us14").unwrap(),
            "us14"
        );
        assert_eq!(datacenter("abc-def-us2").unwrap(), "us2");
        for bad in [
            "0123456789abcdef",
            "abc-",
            "abc-us",
            "abc-14",
            "abc-us14.evil.com",
            "abc-US14",
        ] {
            assert!(
                matches!(datacenter(bad), Err(CallError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn members_map_merge_fields_tags_and_status() {
        let cfg = config(json!({"list_id": "a1b2c3d4e5", "merge_fields": {"plan": "PLAN"}}));
        let m = build_member(
            3,
            &rec(
                json!({"email": " Ada@Example.com ", "first_name": "Ada", "last_name": null,
            "plan": "pro", "BIRTHDAY": "12/10", "tags": ["vip"], "vip": true, "language": "en"}),
            ),
            &cfg,
            MemberStatus::Subscribed,
        )
        .unwrap();
        assert_eq!(m.index, 3);
        assert_eq!(m.email, "ada@example.com");
        assert!(!m.explicit_status);
        assert_eq!(
            Value::Object(m.body),
            json!({"email_address": "Ada@Example.com", "status_if_new": "subscribed",
            "merge_fields": {"FNAME": "Ada", "PLAN": "pro", "BIRTHDAY": "12/10"}, "tags": ["vip"], "vip": true, "language": "en"})
        );
        let m = build_member(
            0,
            &rec(json!({"email": "a@b.co", "status": "unsubscribed"})),
            &cfg,
            MemberStatus::Subscribed,
        )
        .unwrap();
        assert!(m.explicit_status);
        assert_eq!(m.body["status"], "unsubscribed");
        assert!(build_member(
            0,
            &rec(json!({"email": "a@b.co", "favourite": 1})),
            &cfg,
            MemberStatus::Subscribed
        )
        .unwrap_err()
        .contains("`favourite`"));
        assert!(build_member(
            0,
            &rec(json!({"email": "a@b.co", "status": "archived"})),
            &cfg,
            MemberStatus::Subscribed,
        )
        .unwrap_err()
        .contains("status"));
        assert!(build_member(
            0,
            &rec(json!({"first_name": "A"})),
            &cfg,
            MemberStatus::Subscribed
        )
        .unwrap_err()
        .contains("no `email`"));
    }

    #[test]
    fn existing_members_status_is_only_changed_by_the_record_itself() {
        let cfg = config(json!({"list_id": "a1b2c3d4e5"}));
        assert_eq!(
            cfg.status, None,
            "unset: decided by the audience's double opt-in"
        );
        let m = build_member(
            0,
            &rec(json!({"email": "a@b.co"})),
            &cfg,
            MemberStatus::Pending,
        )
        .unwrap();
        assert_eq!(m.body["status_if_new"], "pending");
        assert!(m.body.get("status").is_none(), "{:?}", m.body);
        let m = build_member(
            0,
            &rec(json!({"email": "a@b.co", "status": "unsubscribed"})),
            &cfg,
            MemberStatus::Subscribed,
        )
        .unwrap();
        assert_eq!(m.body["status"], "unsubscribed");
        assert_eq!(m.body["status_if_new"], "subscribed");
        let cfg = config(json!({"list_id": "a1b2c3d4e5", "delete_mode": "unsubscribe"}));
        assert_eq!(cfg.delete_mode, DeleteMode::Unsubscribe);
        assert_eq!(
            config(json!({"list_id": "a1b2c3d4e5"})).delete_mode,
            DeleteMode::Archive,
            "erasing is never the default"
        );
    }

    #[test]
    fn groups_hold_each_address_once_and_at_most_500() {
        let cfg = config(json!({"list_id": "a1b2c3d4e5"}));
        let mut members: Vec<Member> = (0..501)
            .map(|i| {
                build_member(
                    i,
                    &rec(json!({"email": format!("u{i}@x.co")})),
                    &cfg,
                    MemberStatus::Subscribed,
                )
                .unwrap()
            })
            .collect();
        members.push(
            build_member(
                501,
                &rec(json!({"email": "U0@x.co"})),
                &cfg,
                MemberStatus::Subscribed,
            )
            .unwrap(),
        );
        let groups = group_members(members);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![500, 2]
        );
        assert_eq!(
            groups[1].iter().map(|m| m.index).collect::<Vec<_>>(),
            vec![500, 501]
        );
    }

    #[test]
    fn batch_errors_by_address() {
        let body = json!({"new_members": [], "updated_members": [], "errors": [
            {"email_address": "Bad@X", "error": "Bad@X looks fake or invalid, please enter a real email address.", "error_code": "ERROR_GENERIC"},
            {"email_address": "old@x.co", "error": "old@x.co is already a list member"}]});
        let errors = batch_errors(&body);
        assert_eq!(
            errors["bad@x"],
            "Bad@X looks fake or invalid, please enter a real email address. (ERROR_GENERIC)"
        );
        assert_eq!(errors["old@x.co"], "old@x.co is already a list member");
    }

    #[test]
    fn problem_documents_read_as_one_line() {
        let r = Response { status: 400, headers: vec![], body: br#"{"type":"https://mailchimp.com/developer/marketing/docs/errors/","title":"Invalid Resource","status":400,"detail":"Your merge fields were invalid.","instance":"x","errors":[{"field":"FNAME","message":"Please enter a value"}]}"#.to_vec() };
        assert_eq!(problem_message(&r), "HTTP 400: Invalid Resource: Your merge fields were invalid. (FNAME: Please enter a value)");
        let r = Response {
            status: 429,
            headers: vec![("retry-after".into(), "7".into())],
            body: br#"{"title":"Too Many Requests","status":429,"detail":"slow down"}"#.to_vec(),
        };
        assert!(matches!(
            failure(&r),
            Ok(RecordResult::Retry(Retry {
                after_ms: Some(7000),
                ..
            }))
        ));
        let r = Response { status: 401, headers: vec![], body: br#"{"title":"API Key Invalid","status":401,"detail":"Your API key may be invalid."}"#.to_vec() };
        assert!(
            matches!(failure(&r), Err(CallError::Unauthorized(m)) if m.contains("API Key Invalid"))
        );
    }

    #[test]
    fn config_is_checked() {
        assert!(validate_config(&config(json!({"list_id": "a1b2c3d4e5"}))).is_ok());
        assert!(validate_config(&config(json!({"list_id": "a1b2/../x"}))).is_err());
        assert!(validate_config(&config(
            json!({"list_id": "a1", "merge_fields": {"plan": "plan"}})
        ))
        .is_err());
        assert!(serde_json::from_value::<Config>(json!({"list_id": "a1", "lists": []})).is_err());
        assert!(
            serde_json::from_value::<Config>(json!({"list_id": "a1", "status": "cleaned"}))
                .is_err()
        );
    }
}
