//! Google's Customer Match formatting: normalise, then SHA-256 (lowercase hex), per identifier,
//! built on `switchyard_sdk::pii`.

use switchyard_sdk::{pii, schemars, serde_json};

use serde_json::{json, Value};

/// Defaults from the destination's config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub default_country_code: Option<String>,
    pub default_country: Option<String>,
}

/// Email: trim, lowercase, no whitespace; gmail.com / googlemail.com lose dots and `+suffix`
/// in the local part.
pub fn email(raw: &str) -> Option<String> {
    pii::normalize_email_google(raw)
}

/// Phone: E.164 with `+`.
pub fn phone(raw: &str, default_country_code: Option<&str>) -> Option<String> {
    pii::normalize_phone_e164(raw, default_country_code)
}

/// Honorifics Google asks to leave out of given names ("Don't include prefixes such as Mrs.").
const PREFIXES: &[&str] = &["mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir"];
/// Suffixes Google asks to leave out of family names ("Don't include suffixes such as Jr.").
const SUFFIXES: &[&str] = &["jr", "sr", "ii", "iii", "iv", "phd", "md", "esq"];

/// Lower-cased words without punctuation (AddressInfo: "all lowercase, with no punctuation").
fn name_words(raw: &str) -> Vec<String> {
    raw.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn joined(words: &[String]) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

/// Given name: [`name_words`] without a leading honorific (when a name remains).
pub fn first_name(raw: &str) -> Option<String> {
    let words = name_words(raw);
    match words.split_first() {
        Some((first, rest)) if !rest.is_empty() && PREFIXES.contains(&first.as_str()) => {
            joined(rest)
        }
        _ => joined(&words),
    }
}

/// Family name: [`name_words`] without a trailing suffix (when a name remains).
pub fn last_name(raw: &str) -> Option<String> {
    let words = name_words(raw);
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() && SUFFIXES.contains(&last.as_str()) => joined(rest),
        _ => joined(&words),
    }
}

/// Country: ISO 3166-1 alpha-2, upper case (sent unhashed).
pub fn country_code(raw: &str) -> Option<String> {
    let c = raw.trim().to_ascii_uppercase();
    (c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())).then_some(c)
}

/// Postal code: trimmed (sent unhashed).
pub fn postal_code(raw: &str) -> Option<String> {
    let p = raw.trim();
    (!p.is_empty() && p.len() <= 20).then(|| p.to_string())
}

fn hashed(raw: &str, norm: impl Fn(&str) -> Option<String>) -> Option<String> {
    let t = raw.trim();
    if pii::is_sha256_hex(t) {
        return Some(t.to_ascii_lowercase());
    }
    norm(raw).map(|v| pii::sha256_hex(&v))
}

/// The kind of key a Customer Match list is matched on. A list has exactly one, and Google
/// refuses identifiers of another kind ("Mixed data types are not allowed on the same list",
/// CrmBasedUserListInfo.upload_key_type; `INCOMPATIBLE_UPLOAD_KEY_TYPE`), so a record's
/// identifiers are built for the list's key only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadKeyType {
    /// Email, phone and address (Google Ads `CONTACT_INFO`, Data Manager `CONTACT_ID`).
    #[default]
    ContactInfo,
    /// The advertiser's own user id, from `crm_id` (`CRM_ID`, Data Manager `USER_ID`).
    CrmId,
    /// IDFA / AAID, from `mobile_id` (`MOBILE_ADVERTISING_ID`, Data Manager `MOBILE_ID`).
    MobileId,
}

impl UploadKeyType {
    /// The config spelling, for messages.
    pub fn config_name(self) -> &'static str {
        match self {
            UploadKeyType::ContactInfo => "contact_info",
            UploadKeyType::CrmId => "crm_id",
            UploadKeyType::MobileId => "mobile_id",
        }
    }
    /// Google Ads API `CustomerMatchUploadKeyType`.
    pub fn google_ads_name(self) -> &'static str {
        match self {
            UploadKeyType::ContactInfo => "CONTACT_INFO",
            UploadKeyType::CrmId => "CRM_ID",
            UploadKeyType::MobileId => "MOBILE_ADVERTISING_ID",
        }
    }
    /// Data Manager API `IngestedUserListInfo.UploadKeyType`.
    pub fn data_manager_name(self) -> &'static str {
        match self {
            UploadKeyType::ContactInfo => "CONTACT_ID",
            UploadKeyType::CrmId => "USER_ID",
            UploadKeyType::MobileId => "MOBILE_ID",
        }
    }
}

/// One normalised (and, where Google wants it, hashed) identifier, independent of the API's
/// field names.
#[derive(Debug, Clone, PartialEq)]
pub enum Identifier {
    Email(String),
    Phone(String),
    Address {
        first: String,
        last: String,
        country: String,
        postal: String,
    },
    MobileId(String),
    CrmId(String),
}

impl Identifier {
    /// As a Google Ads API `UserIdentifier`.
    pub fn google_ads(&self) -> Value {
        match self {
            Identifier::Email(h) => json!({ "hashedEmail": h }),
            Identifier::Phone(h) => json!({ "hashedPhoneNumber": h }),
            Identifier::Address {
                first,
                last,
                country,
                postal,
            } => json!({ "addressInfo": {
                "hashedFirstName": first, "hashedLastName": last, "countryCode": country, "postalCode": postal
            }}),
            Identifier::MobileId(m) => json!({ "mobileId": m }),
            Identifier::CrmId(id) => json!({ "thirdPartyUserId": id }),
        }
    }
}

/// The identifiers of one record for a list keyed on `key`, or why there are none. Fields of
/// other key types are ignored (never mixed in).
pub fn identifiers(
    fields: &str,
    opts: &Options,
    key: UploadKeyType,
) -> Result<Vec<Identifier>, String> {
    let value: Value =
        serde_json::from_str(fields).map_err(|e| format!("fields are not JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "fields are not a JSON object".to_string())?;
    let text = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|n| match obj.get(*n) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::Number(x)) => Some(x.to_string()),
            _ => None,
        })
    };
    let single = |field: &str, make: fn(String) -> Identifier| {
        text(&[field])
            .map(|v| vec![make(v.trim().to_string())])
            .ok_or_else(|| {
                format!(
                    "no {field}: this list's upload_key_type is {}, so only `{field}` identifies a member",
                    key.config_name()
                )
            })
    };
    match key {
        UploadKeyType::CrmId => return single("crm_id", Identifier::CrmId),
        UploadKeyType::MobileId => return single("mobile_id", Identifier::MobileId),
        UploadKeyType::ContactInfo => {}
    }
    let mut out = Vec::new();
    let mut invalid = Vec::new();
    if let Some(raw) = text(&["email"]) {
        match hashed(&raw, email) {
            Some(h) => out.push(Identifier::Email(h)),
            None => invalid.push("email"),
        }
    }
    if let Some(raw) = text(&["phone"]) {
        match hashed(&raw, |p| phone(p, opts.default_country_code.as_deref())) {
            Some(h) => out.push(Identifier::Phone(h)),
            None => invalid.push("phone"),
        }
    }
    let first = text(&["first_name"]).and_then(|f| hashed(&f, first_name));
    let last = text(&["last_name"]).and_then(|l| hashed(&l, last_name));
    let country = text(&["country", "country_code"])
        .and_then(|c| country_code(&c))
        .or_else(|| opts.default_country.as_deref().and_then(country_code));
    let postal = text(&["zip", "postal_code"]).and_then(|p| postal_code(&p));
    // Google matches an address only with all four parts.
    if let (Some(first), Some(last), Some(country), Some(postal)) = (first, last, country, postal) {
        out.push(Identifier::Address {
            first,
            last,
            country,
            postal,
        });
    }
    if out.is_empty() {
        let mut reason = String::from(
            "no usable identifier: a contact_info list needs email, phone, or first_name + last_name + country + zip",
        );
        if !invalid.is_empty() {
            reason.push_str(&format!(" (invalid: {})", invalid.join(", ")));
        }
        return Err(reason);
    }
    Ok(out)
}

/// The Google Ads `userIdentifiers` of one record (contact info only; see [`identifiers`]).
pub fn user_identifiers(fields: &str, opts: &Options) -> Result<Vec<Value>, String> {
    identifiers(fields, opts, UploadKeyType::ContactInfo)
        .map(|ids| ids.iter().map(Identifier::google_ads).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Data Manager "send audience members" vectors (api-contracts.md §4).
    #[test]
    fn data_manager_vectors() {
        let emails = [
            (
                "dana@example.com",
                "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3",
            ),
            (
                "DanaM@example.com",
                "1df6b43bc68dd38eca94e6a65b4f466ae537b796c81a526918b40ac4a7b906c7",
            ),
            (
                "ALEXF@example.com",
                "19de0a9906ebee29fe82087be5ec44f3c01e40730bc808b663c71f19dd6b12f2",
            ),
            (
                "quinn@CYMBALGROUP.com",
                "05bb62526f091b45d20e243d194766cca8869137421047dc53fa4876d111a6f0",
            ),
            (
                "cloudySanFrancisco@GMAIL.com",
                "223ebda6f6889b1494551ba902d9d381daf2f642bae055888e96343d53e9f9c4",
            ),
        ];
        for (raw, hash) in emails {
            assert_eq!(hashed(raw, email).unwrap(), hash, "{raw}");
        }
        assert_eq!(
            email("cloudy.sanfrancisco+shopping@gmail.com").unwrap(),
            "cloudysanfrancisco@gmail.com"
        );
        assert_eq!(
            email("user.name+NYC@Example.com").unwrap(),
            "user.name+nyc@example.com"
        );
        let phones = [
            (
                "+1-800-555-0100",
                "+18005550100",
                "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30",
            ),
            (
                "+1 800-555-0101",
                "+18005550101",
                "61d6c2976b5d92b1ad63073a12fddd26040cd980067d03a93dd1cc50f1a3ac68",
            ),
            (
                "+1-800-555-0110",
                "+18005550110",
                "525c2390a4e2a9766fa8ddc341dd10414603baebefa401f5a5e29f55e176525d",
            ),
        ];
        for (raw, e164, hash) in phones {
            assert_eq!(phone(raw, None).unwrap(), e164);
            assert_eq!(hashed(raw, |p| phone(p, None)).unwrap(), hash, "{raw}");
        }
        assert_eq!(phone("(800)555-0100", Some("1")).unwrap(), "+18005550100");
    }

    #[test]
    fn identifiers_of_a_record() {
        let opts = Options {
            default_country_code: Some("1".into()),
            default_country: Some("us".into()),
        };
        let ids = user_identifiers(
            &json!({"email": "Dana@Example.com", "phone": "(800)555-0100", "first_name": " Dana ",
                    "last_name": "Smith", "zip": "94045", "crm_id": "c-1", "mobile_id": "m-1"})
            .to_string(),
            &opts,
        )
        .unwrap();
        assert_eq!(
            ids[0],
            json!({"hashedEmail": "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"})
        );
        assert_eq!(
            ids[1],
            json!({"hashedPhoneNumber": "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30"})
        );
        assert_eq!(
            ids[2]["addressInfo"]["hashedFirstName"],
            pii::sha256_hex("dana")
        );
        assert_eq!(
            ids[2]["addressInfo"]["hashedLastName"],
            pii::sha256_hex("smith")
        );
        assert_eq!(ids[2]["addressInfo"]["countryCode"], "US");
        assert_eq!(ids[2]["addressInfo"]["postalCode"], "94045");
        // crm_id and mobile_id are another list's keys: never mixed into contact info.
        assert_eq!(ids.len(), 3, "{ids:?}");
        // Every identifier sets exactly one oneof field.
        assert!(ids.iter().all(|i| i.as_object().unwrap().len() == 1));

        // No address without all four parts; a bad email alone is no identifier.
        let err = user_identifiers(
            &json!({"email": "nope", "first_name": "A"}).to_string(),
            &Options::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("no usable identifier") && err.contains("invalid: email"),
            "{err}"
        );
        // Pre-hashed values pass through.
        let pre = "07E2F1394B0EA80E2ADCA010EA8318DF697001A005BA7452720EDDA4B0CE57B3";
        let ids =
            user_identifiers(&json!({"email": pre}).to_string(), &Options::default()).unwrap();
        assert_eq!(ids[0]["hashedEmail"], pre.to_ascii_lowercase());
        assert_eq!(first_name("  Mary   Ann "), Some("mary ann".into()));
        assert_eq!(country_code("gb"), Some("GB".into()));
        assert_eq!(country_code("GBR"), None);
    }

    /// G2: a record's identifiers are built for the list's key type only; a record without
    /// that key is refused with a reason naming it.
    #[test]
    fn identifiers_follow_the_upload_key_type() {
        let fields =
            json!({"email": "dana@example.com", "crm_id": " c-1 ", "mobile_id": "m-1"}).to_string();
        let opts = Options::default();
        assert_eq!(
            identifiers(&fields, &opts, UploadKeyType::ContactInfo).unwrap(),
            vec![Identifier::Email(pii::sha256_hex("dana@example.com"))]
        );
        assert_eq!(
            identifiers(&fields, &opts, UploadKeyType::CrmId).unwrap(),
            vec![Identifier::CrmId("c-1".into())]
        );
        assert_eq!(
            identifiers(&fields, &opts, UploadKeyType::MobileId).unwrap(),
            vec![Identifier::MobileId("m-1".into())]
        );
        let err = identifiers(
            &json!({"email": "a@b.co"}).to_string(),
            &opts,
            UploadKeyType::CrmId,
        )
        .unwrap_err();
        assert!(
            err.contains("no crm_id") && err.contains("upload_key_type is crm_id"),
            "{err}"
        );
        let err = identifiers(
            &json!({"crm_id": "c"}).to_string(),
            &opts,
            UploadKeyType::ContactInfo,
        )
        .unwrap_err();
        assert!(err.contains("no usable identifier"), "{err}");
    }

    /// G3: names lower-cased without punctuation (AddressInfo reference: "all lowercase, with
    /// no punctuation"), given names without prefixes such as "Mrs.", family names without
    /// suffixes such as "Jr." (Data Manager formatting guide).
    #[test]
    fn names_lose_punctuation_prefixes_and_suffixes() {
        assert_eq!(first_name(" Mrs. Mary-Ann ").as_deref(), Some("maryann"));
        assert_eq!(first_name("Dr Jane").as_deref(), Some("jane"));
        assert_eq!(last_name("Smith, Jr.").as_deref(), Some("smith"));
        assert_eq!(last_name("O'Brien III").as_deref(), Some("obrien"));
        assert_eq!(last_name("van der Berg").as_deref(), Some("van der berg"));
        // A lone word that looks like a prefix or suffix is a name.
        assert_eq!(first_name("Ms").as_deref(), Some("ms"));
        assert_eq!(last_name("Junior").as_deref(), Some("junior"));
        assert_eq!(first_name("José").as_deref(), Some("josé"));
        assert_eq!(first_name(" .. "), None);
    }
}
