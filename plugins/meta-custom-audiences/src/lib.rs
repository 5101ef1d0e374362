//! Meta (Facebook) Custom Audiences destination.
//!
//! `upsert` adds people to a customer-file Custom Audience (`POST /{version}/{audience_id}/users`),
//! `delete` removes them (`DELETE /{version}/{audience_id}/users`), both with a JSON body
//! `{"payload": {"schema", "data"}, "session": {...}}`: Graph reads a DELETE's parameters from the
//! query string or a JSON body only, never from a form body. Each request carries up to
//! 10,000 rows in Meta's multi-key schema, every value normalised and SHA-256 hashed as Meta
//! specifies (`MADID` and `EXTERN_ID` are sent as they are), and all requests of one `deliver`
//! call form one upload session (`session_id`, `batch_seq` from 1, `last_batch_flag`,
//! `estimated_num_total`).
//!
//! Record fields read (all optional, at least one identifier needed):
//!
//! | field | schema key |
//! |---|---|
//! | `email` | `EMAIL` |
//! | `phone` | `PHONE` (with country code, or `default_phone_country_code`) |
//! | `first_name` | `FN`, and `FI` (its first letter) |
//! | `first_initial` | `FI` when there is no `first_name` |
//! | `last_name` | `LN` |
//! | `gender` | `GEN` (`m`/`f`/`male`/`female`) |
//! | `date_of_birth` (`YYYY-MM-DD`), or `birth_year`/`birth_month`/`birth_day` | `DOBY`, `DOBM`, `DOBD` |
//! | `city` | `CT` |
//! | `state` | `ST` (US state names become their 2-letter code) |
//! | `zip` or `postal_code` | `ZIP` (US: first 5 digits) |
//! | `country` (ISO alpha-2, else `default_country`) | `COUNTRY` |
//! | `madid` or `mobile_advertiser_id` | `MADID` (not hashed) |
//! | `external_id` | `EXTERN_ID` (not hashed) |
//!
//! A value that already is a SHA-256 hex digest (64 hex characters) is taken as pre-hashed and
//! sent as is (lowercased). A record needs `email`, `phone`, `madid`, `external_id`, or both
//! names; otherwise it is rejected without a request. An invalid value (an email without `@`, a
//! phone without country code) is left out of the row rather than hashed into a value that
//! can never match.
//!
//! Results: rows Meta quotes in `invalid_entry_samples` are rejected with Meta's reason; rate
//! limits (error codes 4, 17, 32, 613, 80003, 80004) and transient errors (1, 2,
//! `is_transient`) are retried, after Meta's `estimated_time_to_regain_access`; token errors
//! (190, 102, 104) and permission errors (10, 2xx) fail the call as unauthorized; a missing,
//! deleted or flagged audience, unaccepted Custom Audience terms (2655, 2663, 200/1870090) and a
//! retired API version (2635) fail it as invalid config; any other Graph error rejects the
//! request's rows with Meta's message.

mod graph;
mod normalize;

use std::collections::{BTreeMap, BTreeSet};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use switchyard_sdk::{
    debug, http::Request, info, pii, schemars, serde_json, sunset::Sunset, time, warn, Action,
    CallError, Capabilities, Context, Destination, OutboundRecord, Plugin, RecordResult,
};

use graph::{classify, Failure, GraphError, UsersResponse};
use normalize::Key;

/// Meta's limit of rows per `/users` request.
pub const MAX_ROWS_PER_REQUEST: usize = 10_000;
const GRAPH: &str = "https://graph.facebook.com";

/// The Marketing API version a config without `api_version` calls: v26.0 (released 2026-07-29).
/// v25.0 expires 2027-02-23 and v24.0 expired 2026-11-10.
pub const DEFAULT_VERSION: &str = "v26.0";

/// Marketing API versions and the day Meta stops serving them (then calls fail with code 2635,
/// or are silently upgraded to the next version where the endpoint did not change). Checked
/// 2026-12-06 on Meta's version history.
pub const SUNSETS: &[Sunset] = &[
    Sunset {
        version: "v23.0",
        sunset: "2026-06-09",
        source: VERSIONS,
    },
    Sunset {
        version: "v24.0",
        sunset: "2026-11-10",
        source: VERSIONS,
    },
    Sunset {
        version: "v25.0",
        sunset: "2027-02-23",
        source: VERSIONS,
    },
    // "TBD" on Meta's page. Estimate: release + 11 months, the shortest life of v21.0-v25.0
    // (v21.0: 2024-10-02 to 2025-09-09); replace with Meta's date once published.
    Sunset {
        version: "v26.0",
        sunset: "2027-06-29",
        source: VERSIONS_ESTIMATE,
    },
    Sunset {
        version: "v27.0",
        sunset: "2027-10-04",
        source: VERSIONS_ESTIMATE,
    },
];
const VERSIONS: &str = "https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions";
const VERSIONS_ESTIMATE: &str = "estimated (Meta lists TBD): https://developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions";

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

/// Settings of one `[destinations.NAME]` block using this plugin.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Id of the customer-file Custom Audience (digits), from Ads Manager or the API.
    pub audience_id: String,
    /// Marketing API version, e.g. `v26.0` (the default).
    #[serde(default = "default_version")]
    pub api_version: String,
    /// The multi-key schema to send, e.g. `["EMAIL", "PHONE", "FN", "LN", "COUNTRY"]`. Default:
    /// every key for which some record of the batch has a usable value.
    #[serde(default)]
    pub schema: Option<Vec<Key>>,
    /// Country calling code (digits, e.g. `1`) for phone numbers written without one.
    #[serde(default)]
    pub default_phone_country_code: Option<String>,
    /// ISO 3166-1 alpha-2 country (e.g. `US`) for records without a `country` field; it also
    /// selects the US rules for state and zip.
    #[serde(default)]
    pub default_country: Option<String>,
    /// Rows per request, at most 10,000 (Meta's limit). Lower it to keep requests small.
    #[serde(default)]
    pub rows_per_request: Option<u32>,
}

struct MetaCustomAudiences;

impl Plugin for MetaCustomAudiences {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("meta-custom-audiences")
            .allowed_host("graph.facebook.com")
            .secret_value(
                "access_token",
                "Marketing API access token (a system user token with ads_management) that can edit the audience",
                true,
            )
            .secret_value(
                "app_secret",
                "App secret; when set, requests carry appsecret_proof (needed when the app requires it)",
                false,
            )
            .max_batch_size(MAX_ROWS_PER_REQUEST as u32)
            // Custom-audience writes count against a business-use-case budget per ad account;
            // a few large requests per second stay well inside it.
            .default_rate_per_second(2.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Erase])
    }

    /// Exercises what can fail on the write path, without side effects: reads the audience
    /// (`GET /{audience_id}?fields=id,name,account_id,operation_status`: the token, the version,
    /// the id, an integrity flag) and its ad account's Custom Audience terms
    /// (`GET /act_{account_id}?fields=tos_accepted`), which Meta requires before any upload.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        validate(&ctx.config)?;
        let url = format!(
            "{GRAPH}/{}/{}?fields=id,name,account_id,operation_status{}",
            ctx.config.api_version,
            ctx.config.audience_id,
            proof_query(ctx)?
        );
        let response = authorised(ctx, Request::get(&url)).send()?;
        if !response.is_success() || GraphError::parse(&response.body).is_some() {
            return Err(check_error(&response));
        }
        let audience: AudienceRead = response.json()?;
        audience.usable(&ctx.config.audience_id)?;
        let Some(account) = audience.account_id.as_deref().filter(|a| !a.is_empty()) else {
            return Err(CallError::InvalidConfig(format!(
                "Meta did not say which ad account owns audience {}; cannot check its Custom Audience terms",
                ctx.config.audience_id
            )));
        };
        let url = format!(
            "{GRAPH}/{}/act_{}?fields=tos_accepted{}",
            ctx.config.api_version,
            account.trim_start_matches("act_"),
            proof_query(ctx)?
        );
        let response = authorised(ctx, Request::get(&url)).send()?;
        if !response.is_success() || GraphError::parse(&response.body).is_some() {
            return Err(check_error(&response));
        }
        terms_accepted(&response.json()?, account)?;
        info!(
            "audience {} ({}) is reachable and ad account {account} accepted the Custom Audience terms",
            ctx.config.audience_id,
            audience.name.unwrap_or_default()
        );
        Ok(())
    }
}

/// The fields `check` reads from the audience.
#[derive(Debug, Deserialize)]
pub struct AudienceRead {
    pub id: Option<String>,
    pub name: Option<String>,
    pub account_id: Option<String>,
    pub operation_status: Option<serde_json::Value>,
}

impl AudienceRead {
    /// The audience Meta answered for is the configured one and is not flagged (471).
    pub fn usable(&self, audience_id: &str) -> Result<(), CallError> {
        if self.id.as_deref() != Some(audience_id) {
            return Err(CallError::InvalidConfig(format!(
                "Meta answered for audience {:?}, not {audience_id}",
                self.id
            )));
        }
        if let Some(status) = &self.operation_status {
            if status.get("code").and_then(serde_json::Value::as_i64) == Some(471) {
                return Err(CallError::InvalidConfig(format!(
                    "audience {audience_id} is flagged (operation_status 471: {}); Meta refuses membership changes until its restrictions are resolved in Audience Manager",
                    status
                        .get("description")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("integrity restrictions")
                )));
            }
        }
        Ok(())
    }
}

/// Ok when the ad account's `tos_accepted` has `custom_audience_tos: 1`.
pub fn terms_accepted(account: &serde_json::Value, account_id: &str) -> Result<(), CallError> {
    let accepted = account
        .get("tos_accepted")
        .and_then(|t| t.get("custom_audience_tos"))
        .is_some_and(|v| v.as_i64() == Some(1) || v.as_bool() == Some(true));
    if accepted {
        return Ok(());
    }
    let id = account_id.trim_start_matches("act_");
    Err(CallError::InvalidConfig(format!(
        "ad account act_{id} has not accepted Meta's Custom Audience terms, so every upload would be refused; accept them at https://business.facebook.com/ads/manage/customaudiences/tos/?act={id} with the user or system user that owns the token"
    )))
}

/// A failed read during `check`: the same classification as the write path, where a record-level
/// rejection means the configuration is wrong.
fn check_error(response: &switchyard_sdk::http::Response) -> CallError {
    match classify(response, time::now_unix()) {
        Failure::Unauthorized(m) => CallError::Unauthorized(m),
        Failure::InvalidConfig(m) | Failure::Rejected(m) => CallError::InvalidConfig(m),
        Failure::Retry(r) => CallError::Transient(r),
    }
}

impl Destination for MetaCustomAudiences {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        validate(&ctx.config)?;
        let method =
            match action {
                Action::Upsert => "POST",
                // A privacy erasure is a removal from the audience: Meta offers advertisers
                // no call that deletes a person's data (see the README).
                Action::Delete | Action::Erase => "DELETE",
                Action::Track => return Err(CallError::InvalidConfig(
                    "meta-custom-audiences syncs audience membership (upsert/delete), not events"
                        .into(),
                )),
            };
        let default_country = ctx
            .config
            .default_country
            .as_deref()
            .and_then(normalize::country);
        let cc = ctx.config.default_phone_country_code.as_deref();

        let mut results = vec![RecordResult::Ok; batch.len()];
        let mut rows: Vec<(usize, BTreeMap<Key, String>)> = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match build_row(
                &record.fields,
                default_country.as_deref(),
                cc,
                current_year(),
            ) {
                Ok(row) => rows.push((i, row)),
                Err(reason) => {
                    debug!("record {}: rejected before sending: {reason}", record.key);
                    results[i] = RecordResult::Rejected(reason);
                }
            }
        }

        let schema: Vec<Key> = match &ctx.config.schema {
            Some(keys) => {
                let mut seen = BTreeSet::new();
                keys.iter().copied().filter(|k| seen.insert(*k)).collect()
            }
            None => {
                let present: BTreeSet<Key> =
                    rows.iter().flat_map(|(_, r)| r.keys().copied()).collect();
                Key::ALL
                    .into_iter()
                    .filter(|k| present.contains(k))
                    .collect()
            }
        };
        // With a fixed schema, a record must still carry one of its identifying columns.
        rows.retain(|(i, row)| {
            let usable = schema.iter().any(|k| row.contains_key(k))
                && (schema.iter().any(|k| k.identifies() && row.contains_key(k))
                    || (row.contains_key(&Key::Fn)
                        && row.contains_key(&Key::Ln)
                        && schema.contains(&Key::Fn)
                        && schema.contains(&Key::Ln)));
            if !usable {
                results[*i] = RecordResult::Rejected(format!(
                    "no value for the configured schema {:?}",
                    schema.iter().map(|k| k.name()).collect::<Vec<_>>()
                ));
            }
            usable
        });
        if rows.is_empty() {
            return Ok(results);
        }

        let per_request = ctx
            .config
            .rows_per_request
            .map_or(MAX_ROWS_PER_REQUEST, |n| n as usize)
            .clamp(1, MAX_ROWS_PER_REQUEST);
        let chunks: Vec<&[(usize, BTreeMap<Key, String>)]> = rows.chunks(per_request).collect();
        let session_id = session_id(&batch);
        let url = format!(
            "{GRAPH}/{}/{}/users{}",
            ctx.config.api_version,
            ctx.config.audience_id,
            proof_query_leading(ctx)?
        );
        let schema_names: Vec<&str> = schema.iter().map(|k| k.name()).collect();

        for (n, chunk) in chunks.iter().enumerate() {
            let data: Vec<Vec<&str>> = chunk
                .iter()
                .map(|(_, row)| {
                    schema
                        .iter()
                        .map(|k| row.get(k).map(String::as_str).unwrap_or(""))
                        .collect()
                })
                .collect();
            let body = users_body(
                &schema_names,
                &data,
                Session {
                    session_id,
                    batch_seq: n + 1,
                    last_batch_flag: n + 1 == chunks.len(),
                    estimated_num_total: rows.len(),
                },
            )?;
            drop(data);
            let request = Request::new(
                if method == "POST" {
                    switchyard_sdk::http::Method::Post
                } else {
                    switchyard_sdk::http::Method::Delete
                },
                &url,
            )
            .header("content-type", "application/json")
            .body(body);
            let sent = authorised(ctx, request).send();
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    let error: CallError = e.into();
                    if n == 0 {
                        return Err(error);
                    }
                    let reason = switchyard_sdk::outcome::describe_call_error(&error);
                    mark_rest(&mut results, &chunks[n..], |_| {
                        RecordResult::Retry(switchyard_sdk::Retry {
                            reason: reason.clone(),
                            after_ms: None,
                        })
                    });
                    return Ok(results);
                }
            };
            let error_in_body = GraphError::parse(&response.body).is_some();
            if response.is_success() && !error_in_body {
                let answer: UsersResponse =
                    serde_json::from_slice(&response.body).unwrap_or_default();
                apply_invalid_samples(&mut results, chunk, &schema, &answer);
                debug!(
                    "{method} users: batch {} of {} (session {session_id}): {} rows, Meta received {:?}, invalid {:?}",
                    n + 1,
                    chunks.len(),
                    chunk.len(),
                    answer.num_received,
                    answer.num_invalid_entries
                );
                continue;
            }
            let failure = classify(&response, time::now_unix());
            warn!(
                "{method} users batch {} of {}: HTTP {}: {}",
                n + 1,
                chunks.len(),
                response.status,
                match &failure {
                    Failure::Unauthorized(m) | Failure::InvalidConfig(m) | Failure::Rejected(m) =>
                        m.clone(),
                    Failure::Retry(r) => r.reason.clone(),
                }
            );
            match failure {
                // A problem with the token or audience affects every record; once part of the
                // batch went through, the rest is retried so that what succeeded is kept.
                Failure::Unauthorized(m) if n == 0 => return Err(CallError::Unauthorized(m)),
                Failure::InvalidConfig(m) if n == 0 => return Err(CallError::InvalidConfig(m)),
                Failure::Unauthorized(m) | Failure::InvalidConfig(m) => {
                    mark_rest(&mut results, &chunks[n..], |_| {
                        RecordResult::Retry(switchyard_sdk::Retry {
                            reason: m.clone(),
                            after_ms: None,
                        })
                    });
                    return Ok(results);
                }
                Failure::Retry(retry) => {
                    // Throttled: nothing more goes out in this call.
                    mark_rest(&mut results, &chunks[n..], |_| {
                        RecordResult::Retry(retry.clone())
                    });
                    return Ok(results);
                }
                Failure::Rejected(m) => {
                    mark_rest(&mut results, &chunks[n..n + 1], |_| {
                        RecordResult::Rejected(m.clone())
                    });
                }
            }
        }
        Ok(results)
    }
}

fn mark_rest(
    results: &mut [RecordResult],
    chunks: &[&[(usize, BTreeMap<Key, String>)]],
    result: impl Fn(usize) -> RecordResult,
) {
    for chunk in chunks {
        for (i, _) in chunk.iter() {
            results[*i] = result(*i);
        }
    }
}

/// Rows whose values Meta quotes in `invalid_entry_samples` are rejected with its reason.
fn apply_invalid_samples(
    results: &mut [RecordResult],
    chunk: &[(usize, BTreeMap<Key, String>)],
    schema: &[Key],
    answer: &UsersResponse,
) {
    let samples = answer.samples();
    let mut matched = 0u64;
    for (i, row) in chunk {
        let hit = samples.iter().find(|(entry, _)| {
            let entry = entry.trim().to_ascii_lowercase();
            schema
                .iter()
                .any(|k| row.get(k).is_some_and(|v| v.to_ascii_lowercase() == entry))
                || {
                    // A sample may quote the whole row, comma-joined in schema order.
                    let joined: Vec<&str> = schema
                        .iter()
                        .map(|k| row.get(k).map(String::as_str).unwrap_or(""))
                        .collect();
                    joined.join(",").to_ascii_lowercase() == entry
                }
        });
        if let Some((_, reason)) = hit {
            results[*i] = RecordResult::Rejected(format!("Meta rejected the entry: {reason}"));
            matched += 1;
        }
    }
    let invalid = answer.num_invalid_entries.unwrap_or(0);
    if invalid > matched {
        warn!(
            "Meta counted {invalid} invalid entries but quoted only {matched} of them; the others cannot be told apart and are reported ok"
        );
    }
}

/// Normalises and encodes one record's fields into schema values.
fn build_row(
    fields: &str,
    default_country: Option<&str>,
    default_cc: Option<&str>,
    year: u32,
) -> Result<BTreeMap<Key, String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(fields).map_err(|e| format!("fields are not JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "fields are not a JSON object".to_string())?;
    let text = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|n| match obj.get(*n) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(serde_json::Value::Number(x)) => Some(x.to_string()),
            _ => None,
        })
    };
    let mut row = BTreeMap::new();
    let mut invalid: Vec<&str> = Vec::new();
    fn put(
        row: &mut BTreeMap<Key, String>,
        invalid: &mut Vec<&'static str>,
        key: Key,
        field: &'static str,
        raw: Option<String>,
        norm: &dyn Fn(&str) -> Option<String>,
    ) {
        let Some(raw) = raw else { return };
        if key.hashed() && pii::is_sha256_hex(raw.trim()) {
            row.insert(key, raw.trim().to_ascii_lowercase());
            return;
        }
        match norm(&raw) {
            Some(v) => {
                row.insert(key, normalize::encode(key, &v));
            }
            None => invalid.push(field),
        }
    }

    let country_raw = text(&["country", "country_code"]);
    let country = match &country_raw {
        Some(c) if pii::is_sha256_hex(c) => None,
        Some(c) => normalize::country(c),
        None => default_country.map(str::to_string),
    };
    put(
        &mut row,
        &mut invalid,
        Key::Email,
        "email",
        text(&["email"]),
        &normalize::email,
    );
    put(
        &mut row,
        &mut invalid,
        Key::Phone,
        "phone",
        text(&["phone"]),
        &|p| normalize::phone(p, default_cc),
    );
    let first = text(&["first_name"]);
    put(
        &mut row,
        &mut invalid,
        Key::Fn,
        "first_name",
        first.clone(),
        &normalize::name,
    );
    let initial = match &first {
        Some(f) if !pii::is_sha256_hex(f) => Some(f.clone()),
        _ => text(&["first_initial"]),
    };
    put(
        &mut row,
        &mut invalid,
        Key::Fi,
        "first_initial",
        initial,
        &normalize::first_initial,
    );
    put(
        &mut row,
        &mut invalid,
        Key::Ln,
        "last_name",
        text(&["last_name"]),
        &normalize::name,
    );
    put(
        &mut row,
        &mut invalid,
        Key::Gen,
        "gender",
        text(&["gender"]),
        &normalize::gender,
    );
    if let Some(dob) = text(&["date_of_birth", "birthday"]) {
        match normalize::birth_date(&dob, year) {
            Some((y, m, d)) => {
                row.insert(Key::Doby, normalize::encode(Key::Doby, &y));
                row.insert(Key::Dobm, normalize::encode(Key::Dobm, &m));
                row.insert(Key::Dobd, normalize::encode(Key::Dobd, &d));
            }
            None => invalid.push("date_of_birth"),
        }
    } else {
        put(
            &mut row,
            &mut invalid,
            Key::Doby,
            "birth_year",
            text(&["birth_year"]),
            &|y| normalize::birth_year(y, year),
        );
        put(
            &mut row,
            &mut invalid,
            Key::Dobm,
            "birth_month",
            text(&["birth_month"]),
            &normalize::birth_month,
        );
        put(
            &mut row,
            &mut invalid,
            Key::Dobd,
            "birth_day",
            text(&["birth_day"]),
            &normalize::birth_day,
        );
    }
    put(
        &mut row,
        &mut invalid,
        Key::Ct,
        "city",
        text(&["city"]),
        &normalize::city,
    );
    put(
        &mut row,
        &mut invalid,
        Key::St,
        "state",
        text(&["state"]),
        &|s| normalize::state(s, country.as_deref()),
    );
    put(
        &mut row,
        &mut invalid,
        Key::Zip,
        "zip",
        text(&["zip", "postal_code"]),
        &|z| normalize::zip(z, country.as_deref()),
    );
    match (&country_raw, &country) {
        (Some(raw), _) if pii::is_sha256_hex(raw) => {
            row.insert(Key::Country, raw.to_ascii_lowercase());
        }
        (Some(_), None) => invalid.push("country"),
        (_, Some(c)) => {
            row.insert(Key::Country, normalize::encode(Key::Country, c));
        }
        (None, None) => {}
    }
    put(
        &mut row,
        &mut invalid,
        Key::Madid,
        "madid",
        text(&["madid", "mobile_advertiser_id"]),
        &normalize::madid,
    );
    put(
        &mut row,
        &mut invalid,
        Key::ExternId,
        "external_id",
        text(&["external_id"]),
        &normalize::extern_id,
    );

    let identified = row.keys().any(|k| k.identifies())
        || (row.contains_key(&Key::Fn) && row.contains_key(&Key::Ln));
    if !identified {
        let mut reason = String::from(
            "no usable identifier: needs email, phone, madid, external_id, or first_name and last_name",
        );
        if !invalid.is_empty() {
            reason.push_str(&format!(" (invalid: {})", invalid.join(", ")));
        }
        return Err(reason);
    }
    Ok(row)
}

fn validate(config: &Config) -> Result<(), CallError> {
    if config.audience_id.is_empty() || !config.audience_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CallError::InvalidConfig(format!(
            "audience_id `{}` must be the audience's numeric id",
            config.audience_id
        )));
    }
    let v = config.api_version.strip_prefix('v').unwrap_or("");
    let ok = !v.is_empty()
        && v.split('.').count() <= 2
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(CallError::InvalidConfig(format!(
            "api_version `{}` must look like v26.0",
            config.api_version
        )));
    }
    if let Some(c) = &config.default_country {
        if normalize::country(c).is_none() {
            return Err(CallError::InvalidConfig(format!(
                "default_country `{c}` must be an ISO 3166-1 alpha-2 code such as US"
            )));
        }
    }
    if let Some(cc) = &config.default_phone_country_code {
        let digits = cc.trim_start_matches('+');
        if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CallError::InvalidConfig(format!(
                "default_phone_country_code `{cc}` must be 1 to 3 digits, e.g. 1 or 44"
            )));
        }
    }
    if let Some(0) = config.rows_per_request {
        return Err(CallError::InvalidConfig(
            "rows_per_request must be between 1 and 10000".into(),
        ));
    }
    if config
        .rows_per_request
        .is_some_and(|n| n as usize > MAX_ROWS_PER_REQUEST)
    {
        return Err(CallError::InvalidConfig(
            "rows_per_request must be between 1 and 10000 (Meta's limit per request)".into(),
        ));
    }
    Ok(())
}

/// The token goes in the `Authorization` header as a placeholder the hub fills in, so it never
/// enters the sandbox (unless `app_secret` is set, see [`proof_query`]).
fn authorised(ctx: &Context<Config>, request: Request) -> Request {
    request.bearer_auth(&ctx.secret_placeholder("access_token"))
}

/// `&appsecret_proof=HMAC-SHA256(app_secret, access_token)` when an app secret is configured.
fn proof_query(ctx: &Context<Config>) -> Result<String, CallError> {
    if !ctx.has_secret("app_secret") {
        return Ok(String::new());
    }
    let secret = ctx.secret("app_secret")?;
    let token = ctx.secret("access_token")?;
    Ok(format!(
        "&appsecret_proof={}",
        appsecret_proof(secret, token)?
    ))
}

fn proof_query_leading(ctx: &Context<Config>) -> Result<String, CallError> {
    Ok(proof_query(ctx)?.replacen('&', "?", 1))
}

/// Hex HMAC-SHA256 of the access token keyed by the app secret.
pub fn appsecret_proof(app_secret: &str, access_token: &str) -> Result<String, CallError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .map_err(|e| CallError::InvalidConfig(format!("app_secret: {e}")))?;
    mac.update(access_token.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// A session id for one deliver call: 53 bits (exact in JSON numbers) of a hash of the time
/// and the batch's keys.
fn session_id(batch: &[OutboundRecord]) -> u64 {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(time::now().as_nanos().to_le_bytes());
    for r in batch {
        h.update(r.key.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_le_bytes(b) & ((1 << 53) - 1)).max(1)
}

fn current_year() -> u32 {
    u32::try_from(time::year(time::now_unix() as i64)).unwrap_or(1970)
}

/// The upload session a request belongs to.
#[derive(Debug, serde::Serialize)]
pub struct Session {
    pub session_id: u64,
    pub batch_seq: usize,
    pub last_batch_flag: bool,
    pub estimated_num_total: usize,
}

/// The JSON body of a `/users` request, POST or DELETE alike:
/// `{"payload": {"schema": [...], "data": [[...]]}, "session": {...}}`. Graph ignores a form
/// body on DELETE ("(#100) Missing required parameter: payload"), and the query string cannot
/// hold 10,000 rows; Segment and RudderStack send this JSON body. Serialised straight from
/// borrowed rows into one buffer: a full request is megabytes, and copies of it count against
/// the plugin's memory cap.
pub fn users_body(
    schema: &[&str],
    data: &[Vec<&str>],
    session: Session,
) -> Result<Vec<u8>, CallError> {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        schema: &'a [&'a str],
        data: &'a [Vec<&'a str>],
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        payload: Payload<'a>,
        session: Session,
    }
    serde_json::to_vec(&Body {
        payload: Payload { schema, data },
        session,
    })
    .map_err(|e| CallError::Failed(format!("serialising the request body: {e}")))
}

switchyard_sdk::export_destination!(MetaCustomAudiences);

#[cfg(test)]
mod tests {
    use super::*;

    fn row(fields: serde_json::Value) -> Result<BTreeMap<Key, String>, String> {
        build_row(&fields.to_string(), None, Some("1"), 2026)
    }

    #[test]
    fn builds_a_hashed_multi_key_row() {
        let r = row(serde_json::json!({
            "email": "  Test@Example.COM ", "phone": "+1 (555) 123-4567",
            "first_name": "John", "last_name": "Doe", "country": "US",
            "gender": "male", "city": "San Francisco", "state": "California",
            "zip": "94045-1234", "date_of_birth": "1985-03-07",
            "madid": "6032D997-3AB0-4DE0-AA16-8AF0E5B482FB", "external_id": "crm-42"
        }))
        .unwrap();
        let h = pii::sha256_hex;
        assert_eq!(
            r[&Key::Email],
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(
            r[&Key::Phone],
            "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
        );
        assert_eq!(
            r[&Key::Fn],
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
        );
        assert_eq!(
            r[&Key::Ln],
            "799ef92a11af918e3fb741df42934f3b568ed2d93ac1df74f1b8d41a27932a6f"
        );
        assert_eq!(
            r[&Key::Country],
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
        assert_eq!(
            r[&Key::Gen],
            "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"
        );
        assert_eq!(r[&Key::Fi], h("j"));
        assert_eq!(r[&Key::Ct], h("sanfrancisco"));
        assert_eq!(r[&Key::St], h("ca"));
        assert_eq!(r[&Key::Zip], h("94045"));
        assert_eq!(r[&Key::Doby], h("1985"));
        assert_eq!(r[&Key::Dobm], h("03"));
        assert_eq!(r[&Key::Dobd], h("07"));
        assert_eq!(r[&Key::Madid], "6032d997-3ab0-4de0-aa16-8af0e5b482fb");
        assert_eq!(r[&Key::ExternId], "crm-42");
        // The national number gets the default country code: the contracts' 12125550100.
        let r = row(serde_json::json!({"phone": "(212) 555-0100"})).unwrap();
        assert_eq!(
            r[&Key::Phone],
            "d70a96108cd686be3737cbeed345f2a61c178747e3cb4448e6434e24ac150acd"
        );
    }

    #[test]
    fn pre_hashed_values_pass_through_and_bad_values_are_left_out() {
        let pre = "973DFE463EC85785F5F95AF5BA3906EEDB2D931C24E69824A89EA65DBA4E813B";
        let r = row(serde_json::json!({"email": pre, "phone": "12"})).unwrap();
        assert_eq!(r[&Key::Email], pre.to_ascii_lowercase());
        assert!(!r.contains_key(&Key::Phone));
        let err = row(serde_json::json!({"email": "nope", "city": "Paris"})).unwrap_err();
        assert!(
            err.contains("no usable identifier") && err.contains("invalid: email"),
            "{err}"
        );
        assert!(row(serde_json::json!({"first_name": "Ada", "last_name": "Lovelace"})).is_ok());
        assert!(row(serde_json::json!("x")).is_err());
    }

    #[test]
    fn appsecret_proof_is_hmac_sha256_hex() {
        // RFC 4231 test case 2 (key "Jefe").
        assert_eq!(
            appsecret_proof("Jefe", "what do ya want for nothing?").unwrap(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_validation() {
        let cfg = |v: serde_json::Value| serde_json::from_value::<Config>(v).unwrap();
        assert!(validate(&cfg(serde_json::json!({"audience_id": "123"}))).is_ok());
        assert!(validate(&cfg(serde_json::json!({"audience_id": "act_1"}))).is_err());
        assert!(validate(&cfg(
            serde_json::json!({"audience_id": "1", "api_version": "25"})
        ))
        .is_err());
        assert!(validate(&cfg(
            serde_json::json!({"audience_id": "1", "rows_per_request": 10001})
        ))
        .is_err());
        assert!(validate(&cfg(
            serde_json::json!({"audience_id": "1", "default_country": "USA"})
        ))
        .is_err());
        let c =
            cfg(serde_json::json!({"audience_id": "1", "schema": ["EMAIL", "FN", "EXTERN_ID"]}));
        assert_eq!(c.schema.unwrap(), vec![Key::Email, Key::Fn, Key::ExternId]);
        assert!(serde_json::from_value::<Config>(
            serde_json::json!({"audience_id": "1", "nope": 1})
        )
        .is_err());
        assert!(serde_json::from_value::<Config>(
            serde_json::json!({"audience_id": "1", "schema": ["EMAIL_SHA256"]})
        )
        .is_err());
    }

    /// M1: removals (and adds) carry `payload` and `session` as JSON objects in a JSON body,
    /// where Graph reads them on DELETE.
    #[test]
    fn users_body_is_json_with_payload_and_session_objects() {
        let body = users_body(
            &["EMAIL", "FN"],
            &[vec!["a", ""], vec!["b", "c"]],
            Session {
                session_id: 7,
                batch_seq: 1,
                last_batch_flag: true,
                estimated_num_total: 2,
            },
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "payload": {"schema": ["EMAIL", "FN"], "data": [["a", ""], ["b", "c"]]},
                "session": {"session_id": 7, "batch_seq": 1, "last_batch_flag": true, "estimated_num_total": 2}
            })
        );
    }

    #[test]
    fn default_version_is_not_near_its_sunset() {
        switchyard_sdk::sunset::assert_fresh(
            DEFAULT_VERSION,
            SUNSETS,
            switchyard_sdk::sunset::MARGIN_DAYS,
        );
        assert_eq!(default_version(), DEFAULT_VERSION);
    }

    #[test]
    fn check_refuses_flagged_audiences_and_unaccepted_terms() {
        let read = |v: serde_json::Value| serde_json::from_value::<AudienceRead>(v).unwrap();
        assert!(read(serde_json::json!({"id": "1", "account_id": "9", "operation_status": {"code": 200, "description": "Normal"}})).usable("1").is_ok());
        assert!(matches!(
            read(serde_json::json!({"id": "1", "operation_status": {"code": 471, "description": "Flagged"}})).usable("1"),
            Err(CallError::InvalidConfig(m)) if m.contains("471")
        ));
        assert!(read(serde_json::json!({"id": "2"})).usable("1").is_err());
        assert!(terms_accepted(
            &serde_json::json!({"tos_accepted": {"custom_audience_tos": 1}, "id": "act_9"}),
            "9"
        )
        .is_ok());
        for unsigned in [
            serde_json::json!({"tos_accepted": {}}),
            serde_json::json!({"tos_accepted": {"custom_audience_tos": 0}}),
            serde_json::json!({"id": "act_9"}),
        ] {
            assert!(matches!(
                terms_accepted(&unsigned, "act_9"),
                Err(CallError::InvalidConfig(m)) if m.contains("customaudiences/tos/?act=9")
            ));
        }
    }

    #[test]
    fn session_ids() {
        let batch = vec![OutboundRecord {
            key: "k".into(),
            fields: "{}".into(),
            delivery_id: "dlv_k".into(),
            previous_fields: None,
        }];
        let id = session_id(&batch);
        assert!(id > 0 && id < (1 << 53));
        assert!((2024..3000).contains(&current_year()));
    }
}
