//! Google's Customer Match formatting: normalise, then SHA-256 (lowercase hex), per identifier,
//! built on `switchyard_sdk::pii`.

use switchyard_sdk::{pii, serde_json};

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

/// First or last name: trimmed, lowercase, inner whitespace collapsed to one space.
pub fn name(raw: &str) -> Option<String> {
    let n = raw
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    (!n.is_empty()).then_some(n)
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

/// The `userIdentifiers` of one record (each a oneof: exactly one field), or why there are none.
pub fn user_identifiers(fields: &str, opts: &Options) -> Result<Vec<Value>, String> {
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
    let mut out = Vec::new();
    let mut invalid = Vec::new();
    if let Some(raw) = text(&["email"]) {
        match hashed(&raw, email) {
            Some(h) => out.push(json!({ "hashedEmail": h })),
            None => invalid.push("email"),
        }
    }
    if let Some(raw) = text(&["phone"]) {
        match hashed(&raw, |p| phone(p, opts.default_country_code.as_deref())) {
            Some(h) => out.push(json!({ "hashedPhoneNumber": h })),
            None => invalid.push("phone"),
        }
    }
    let first = text(&["first_name"]).and_then(|f| hashed(&f, name));
    let last = text(&["last_name"]).and_then(|l| hashed(&l, name));
    let country = text(&["country", "country_code"])
        .and_then(|c| country_code(&c))
        .or_else(|| opts.default_country.as_deref().and_then(country_code));
    let postal = text(&["zip", "postal_code"]).and_then(|p| postal_code(&p));
    // Google matches an address only with all four parts.
    if let (Some(f), Some(l), Some(c), Some(p)) = (&first, &last, &country, &postal) {
        out.push(json!({ "addressInfo": {
            "hashedFirstName": f, "hashedLastName": l, "countryCode": c, "postalCode": p
        }}));
    }
    if let Some(m) = text(&["mobile_id"]) {
        out.push(json!({ "mobileId": m.trim() }));
    }
    if let Some(id) = text(&["crm_id"]) {
        out.push(json!({ "thirdPartyUserId": id.trim() }));
    }
    if out.is_empty() {
        let mut reason = String::from(
            "no usable identifier: needs email, phone, mobile_id, crm_id, or first_name + last_name + country + zip",
        );
        if !invalid.is_empty() {
            reason.push_str(&format!(" (invalid: {})", invalid.join(", ")));
        }
        return Err(reason);
    }
    Ok(out)
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
                    "last_name": "Smith", "zip": "94045", "crm_id": "c-1"})
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
        assert_eq!(ids[3], json!({"thirdPartyUserId": "c-1"}));
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
        assert_eq!(name("  Mary   Ann "), Some("mary ann".into()));
        assert_eq!(country_code("gb"), Some("GB".into()));
        assert_eq!(country_code("GBR"), None);
    }
}
