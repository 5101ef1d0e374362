//! Google Ads Customer Match destination.
//!
//! Adds people to (`upsert`) or removes them from (`delete`) a Customer Match user list through
//! one of two Google APIs, chosen by the `api` setting:
//!
//! - `data_manager` (the default): the Data Manager API, `POST
//!   https://datamanager.googleapis.com/v1/audienceMembers:ingest` / `:remove`, one request per
//!   batch of up to 10,000 members. Since 2026-04-01 this is the only way for new Customer Match
//!   integrations (Google Ads developer blog, 2026-03-04).
//! - `google_ads`: the Google Ads API's OfflineUserDataJobService (`offlineUserDataJobs:create`
//!   → `:addOperations` → `:run`), for developer tokens Google still allowlists for it.
//!
//! A list has one upload key type (`upload_key_type`): `contact_info` lists get hashed email,
//! phone and address; `crm_id` lists the record's `crm_id`; `mobile_id` lists its `mobile_id`.
//! Identifiers of other kinds are never mixed in (Google refuses the whole member).
//!
//! The README has the full table of record fields, requests and result mapping.

mod ads;
mod data_manager;
pub mod normalize;
mod offline_jobs;

use serde::Deserialize;
use switchyard_sdk::{
    http::Request, schemars, serde_json, sunset::Sunset, Action, CallError, Capabilities, Context,
    Destination, OutboundRecord, Plugin, RecordResult,
};

use normalize::{Identifier, UploadKeyType};
use serde_json::Value;

const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The Google Ads API version used by default (`api = "google_ads"` only).
pub const DEFAULT_VERSION: &str = "v26";

/// Sunset dates of Google Ads API versions the default may be, from Google's timetable
/// (https://developers.google.com/google-ads/api/docs/sunset-dates, checked 2026-12-06; major
/// versions live about 12 months). Months Google gives without a day are entered as their first
/// day, so the check errs early.
pub const SUNSETS: &[Sunset] = &[
    Sunset {
        version: "v20",
        sunset: "2026-06-01",
        source: "https://developers.google.com/google-ads/api/docs/sunset-dates (v20 released 2025-06-04, ~12 months)",
    },
    Sunset {
        version: "v23",
        sunset: "2027-02-01",
        source: "https://developers.google.com/google-ads/api/docs/sunset-dates (v23 released 2026-01, ~12 months)",
    },
    Sunset {
        version: "v26",
        sunset: "2027-11-01",
        source: "https://developers.google.com/ads/blog/posts/2025/09/more-frequent-releases-coming-for (v26 projected sunset November 2027)",
    },
];

fn default_version() -> String {
    DEFAULT_VERSION.to_string()
}

/// Which Google API carries the uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// The Data Manager API (`audienceMembers:ingest` / `:remove`): OAuth with the
    /// `datamanager` scope, no developer token. Required for new Customer Match integrations
    /// since 2026-04-01.
    #[default]
    DataManager,
    /// The Google Ads API's OfflineUserDataJobService: only for developer tokens Google kept on
    /// its Customer Match allowlist (others get `CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE`).
    GoogleAds,
}

/// Consent the user list's members gave (EU user consent policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentStatus {
    Granted,
    Denied,
    Unspecified,
}

impl ConsentStatus {
    /// Google Ads API `ConsentStatus`.
    fn google_ads(self) -> &'static str {
        match self {
            ConsentStatus::Granted => "GRANTED",
            ConsentStatus::Denied => "DENIED",
            ConsentStatus::Unspecified => "UNSPECIFIED",
        }
    }
    /// Data Manager API `ConsentStatus`.
    fn data_manager(self) -> &'static str {
        match self {
            ConsentStatus::Granted => "CONSENT_GRANTED",
            ConsentStatus::Denied => "CONSENT_DENIED",
            ConsentStatus::Unspecified => "CONSENT_STATUS_UNSPECIFIED",
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
    /// The manager account to act through, when access goes via an MCC (Data Manager
    /// `loginAccount`, Google Ads `login-customer-id`).
    #[serde(default)]
    pub login_customer_id: Option<String>,
    /// `data_manager` (default) or `google_ads` (OfflineUserDataJobService; allowlisted
    /// developer tokens only).
    #[serde(default)]
    pub api: Api,
    /// The list's upload key type: `contact_info` (default), `crm_id` or `mobile_id`.
    #[serde(default)]
    pub upload_key_type: UploadKeyType,
    /// Set to true once the account accepted Google's Customer Match terms
    /// (https://support.google.com/adspolicy/answer/6299717); sent as the Data Manager
    /// `termsOfService`, which uploads to Customer Match lists require.
    #[serde(default)]
    pub customer_match_terms_accepted: bool,
    /// Google Ads API version, e.g. `v26` (`api = "google_ads"` only).
    #[serde(default = "default_version")]
    pub api_version: String,
    /// Country calling code (digits, e.g. `1`) for phone numbers written without one.
    #[serde(default)]
    pub default_phone_country_code: Option<String>,
    /// ISO 3166-1 alpha-2 country (e.g. `US`) for the address of records without `country`.
    #[serde(default)]
    pub default_country: Option<String>,
    /// Consent for using the members' data for advertising (`ad_user_data`), sent with upserts.
    #[serde(default)]
    pub consent_ad_user_data: Option<ConsentStatus>,
    /// Consent for personalised advertising (`ad_personalization`), sent with upserts.
    #[serde(default)]
    pub consent_ad_personalization: Option<ConsentStatus>,
}

struct CustomerMatch;

impl Plugin for CustomerMatch {
    type Config = Config;

    fn capabilities() -> Capabilities {
        Capabilities::new()
            .name("google-ads-customer-match")
            .allowed_host("datamanager.googleapis.com")
            .allowed_host("googleads.googleapis.com")
            .allowed_host("oauth2.googleapis.com")
            .secret(
                "developer_token",
                "Google Ads API developer token (only for api = \"google_ads\"; sent as the developer-token header)",
                false,
            )
            .secret(
                "access_token",
                "OAuth 2.0 access token with the datamanager scope (api = \"google_ads\": adwords); or set refresh_token, client_id and client_secret instead",
                false,
            )
            .secret_value(
                "refresh_token",
                "OAuth 2.0 refresh token (with client_id and client_secret): a fresh access token is fetched per call",
                false,
            )
            .secret_value("client_id", "OAuth 2.0 client id (with refresh_token)", false)
            .secret_value("client_secret", "OAuth 2.0 client secret (with refresh_token)", false)
            .max_batch_size(data_manager::MAX_MEMBERS as u32)
            // One request per delivery (Data Manager: 300 requests/min per Cloud project);
            // OfflineUserDataJobService jobs are throttled per developer token.
            .default_rate_per_second(1.0)
            .actions(&[Action::Upsert, Action::Delete, Action::Erase])
    }

    /// Exercises the write path without changing anything: Data Manager reads the list's
    /// upload key type and sends a `validateOnly` ingest; Google Ads reads the list with GAQL
    /// and creates a `validateOnly` job. A wrong token, account, list, key type, terms or a
    /// developer token without Customer Match access fails here, not as dead letters.
    fn check(ctx: &Context<Config>) -> Result<(), CallError> {
        let ids = Ids::from_config(&ctx.config)?;
        refuse_denied_consent(&ctx.config)?;
        let auth = bearer(ctx)?;
        match ctx.config.api {
            Api::DataManager => data_manager::check(ctx, &ids, &auth),
            Api::GoogleAds => offline_jobs::check(ctx, &ids, &auth),
        }
    }
}

impl Destination for CustomerMatch {
    fn deliver(
        ctx: &Context<Config>,
        action: Action,
        batch: Vec<OutboundRecord>,
    ) -> Result<Vec<RecordResult>, CallError> {
        let ids = Ids::from_config(&ctx.config)?;
        let remove =
            match action {
                Action::Upsert => false,
                // A privacy erasure is a removal from the list: Customer Match has no call
                // that deletes a person's data (see the README).
                Action::Delete | Action::Erase => true,
                Action::Track => return Err(CallError::InvalidConfig(
                    "google-ads-customer-match syncs list membership (upsert/delete), not events"
                        .into(),
                )),
            };
        if !remove {
            refuse_denied_consent(&ctx.config)?;
        }
        let opts = normalize::Options {
            default_country_code: ctx.config.default_phone_country_code.clone(),
            default_country: ctx.config.default_country.clone(),
        };
        let mut results = vec![RecordResult::Ok; batch.len()];
        let mut members: Vec<(usize, Vec<Identifier>)> = Vec::with_capacity(batch.len());
        for (i, record) in batch.iter().enumerate() {
            match normalize::identifiers(&record.fields, &opts, ctx.config.upload_key_type) {
                Ok(found) => members.push((i, found)),
                Err(reason) => {
                    switchyard_sdk::debug!(
                        "record {}: rejected before sending: {reason}",
                        record.key
                    );
                    results[i] = RecordResult::Rejected(reason);
                }
            }
        }
        if members.is_empty() {
            return Ok(results);
        }
        let auth = bearer(ctx)?;
        match ctx.config.api {
            Api::DataManager => {
                data_manager::deliver(ctx, &ids, &auth, remove, &members, &mut results)?
            }
            Api::GoogleAds => {
                offline_jobs::deliver(ctx, &ids, &auth, remove, &members, &mut results)?
            }
        }
        Ok(results)
    }
}

/// Google fails Customer Match uploads whose `adUserData` consent is DENIED
/// (`CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS`): refuse before sending anything.
fn refuse_denied_consent(c: &Config) -> Result<(), CallError> {
    if c.consent_ad_user_data == Some(ConsentStatus::Denied) {
        return Err(CallError::InvalidConfig(
            "consent_ad_user_data = \"DENIED\": Google refuses Customer Match uploads without ad_user_data consent; sync only people who granted it (GRANTED) or leave it unset".into(),
        ));
    }
    Ok(())
}

fn call_error(f: ads::Failure) -> CallError {
    use ads::Failure;
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

    use serde_json::json;

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
    fn defaults_are_data_manager_and_contact_info() {
        let c = cfg(json!({"customer_id": "1234567890", "user_list_id": "1"}));
        assert_eq!(c.api, Api::DataManager);
        assert_eq!(c.upload_key_type, UploadKeyType::ContactInfo);
        assert!(!c.customer_match_terms_accepted);
        let c = cfg(
            json!({"customer_id": "1234567890", "user_list_id": "1", "api": "google_ads", "upload_key_type": "crm_id"}),
        );
        assert_eq!(
            (c.api, c.upload_key_type),
            (Api::GoogleAds, UploadKeyType::CrmId)
        );
        assert!(serde_json::from_value::<Config>(
            json!({"customer_id": "1", "user_list_id": "1", "api": "adwords"})
        )
        .is_err());
    }

    /// The default Google Ads API version must have more than 60 days before its sunset.
    #[test]
    fn default_api_version_is_not_near_its_sunset() {
        switchyard_sdk::sunset::assert_fresh(
            DEFAULT_VERSION,
            SUNSETS,
            switchyard_sdk::sunset::MARGIN_DAYS,
        );
        assert_eq!(default_version(), DEFAULT_VERSION);
    }
}
