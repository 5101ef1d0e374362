//! Normalising and hashing personal identifiers the way ad platforms match them (Meta Custom
//! Audiences, Google Ads Customer Match, TikTok, LinkedIn): normalise, then SHA-256, lowercase hex.
//!
//! Each normaliser returns `None` for a value that cannot be a valid identifier, so a plugin can
//! reject the record instead of uploading a hash that will never match.

use sha2::{Digest, Sha256};

/// SHA-256 of `value`, lowercase hex.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// Whether `value` already looks like a SHA-256 hex digest (64 hex characters), so that a
/// pre-hashed identifier is not hashed twice.
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Email: trim, remove whitespace, lowercase; `None` unless it has one `@` with text on both
/// sides and a dot in the domain.
pub fn normalize_email(raw: &str) -> Option<String> {
    let email: String = raw
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') || !domain.contains('.') {
        return None;
    }
    if domain.starts_with('.') || domain.ends_with('.') {
        return None;
    }
    Some(email)
}

/// Email as Google's Customer Match formatting guide asks: [`normalize_email`], and for
/// `gmail.com` / `googlemail.com` addresses also drop dots and any `+suffix` from the local part.
pub fn normalize_email_google(raw: &str) -> Option<String> {
    let email = normalize_email(raw)?;
    let (local, domain) = email.split_once('@')?;
    if domain == "gmail.com" || domain == "googlemail.com" {
        let local = local.split('+').next().unwrap_or(local).replace('.', "");
        if local.is_empty() {
            return None;
        }
        return Some(format!("{local}@{domain}"));
    }
    Some(email)
}

/// Phone in E.164 with the leading `+` (`+18005550100`). A number written without a country
/// code gets `default_country_code` (digits, e.g. `"1"`); a national trunk `0` is dropped. `None`
/// when fewer than 8 or more than 15 digits remain (11 for +1 numbers), or no country code is
/// known.
pub fn normalize_phone_e164(raw: &str, default_country_code: Option<&str>) -> Option<String> {
    let trimmed = raw.trim();
    let international = trimmed.starts_with('+') || trimmed.starts_with("00");
    let mut digits: String = trimmed.chars().filter(|c| c.is_ascii_digit()).collect();
    if trimmed.starts_with("00") {
        digits.drain(..2);
    }
    if !international {
        let cc = default_country_code?.trim_start_matches('+').to_string();
        let national = digits.trim_start_matches('0');
        if national.starts_with(&cc) && national.len() > 10 {
            digits = national.to_string();
        } else {
            digits = format!("{cc}{national}");
        }
    }
    let digits = digits.trim_start_matches('0');
    if !(8..=15).contains(&digits.len()) {
        return None;
    }
    // North American numbers (+1) always have ten digits after the country code.
    if digits.starts_with('1') && digits.len() != 11 {
        return None;
    }
    Some(format!("+{digits}"))
}

/// Phone as Meta wants it: E.164 digits without the `+` (`15551234567`).
pub fn normalize_phone_digits(raw: &str, default_country_code: Option<&str>) -> Option<String> {
    normalize_phone_e164(raw, default_country_code).map(|p| p[1..].to_string())
}

/// First or last name: lowercase, punctuation and whitespace removed (`"O'Brien "` → `obrien`),
/// letters of any script kept.
pub fn normalize_name(raw: &str) -> Option<String> {
    let name: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_ascii_punctuation())
        .collect::<String>()
        .to_lowercase();
    (!name.is_empty()).then_some(name)
}

/// SHA-256 of the normalised email.
pub fn hash_email(raw: &str) -> Option<String> {
    normalize_email(raw).map(|e| sha256_hex(&e))
}

/// SHA-256 of the E.164 phone with `+` (Google, TikTok).
pub fn hash_phone_e164(raw: &str, default_country_code: Option<&str>) -> Option<String> {
    normalize_phone_e164(raw, default_country_code).map(|p| sha256_hex(&p))
}

/// SHA-256 of the phone's digits without `+` (Meta).
pub fn hash_phone_digits(raw: &str, default_country_code: Option<&str>) -> Option<String> {
    normalize_phone_digits(raw, default_country_code).map(|p| sha256_hex(&p))
}

/// SHA-256 of the normalised name.
pub fn hash_name(raw: &str) -> Option<String> {
    normalize_name(raw).map(|n| sha256_hex(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Meta's normalisation table, vectors from ../shared/reference/api-contracts.md.
    #[test]
    fn meta_vectors() {
        assert_eq!(
            hash_email("  Test@Example.COM ").unwrap(),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(
            normalize_phone_digits("+1 (555) 123-4567", None).unwrap(),
            "15551234567"
        );
        assert_eq!(
            hash_phone_digits("+1 (555) 123-4567", None).unwrap(),
            "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
        );
        assert_eq!(
            hash_phone_digits("(212) 555-0100", Some("1")).unwrap(),
            "d70a96108cd686be3737cbeed345f2a61c178747e3cb4448e6434e24ac150acd"
        );
        assert_eq!(
            hash_name(" John").unwrap(),
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
        );
        assert_eq!(
            hash_name("Doe.").unwrap(),
            "799ef92a11af918e3fb741df42934f3b568ed2d93ac1df74f1b8d41a27932a6f"
        );
        assert_eq!(
            sha256_hex("us"),
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
    }

    // Google's Data Manager "send audience members" vectors.
    #[test]
    fn google_vectors() {
        let cases = [
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
        for (raw, hash) in cases {
            assert_eq!(
                sha256_hex(&normalize_email_google(raw).unwrap()),
                hash,
                "{raw}"
            );
        }
        assert_eq!(
            normalize_email_google("cloudy.sanfrancisco+shopping@gmail.com").unwrap(),
            "cloudysanfrancisco@gmail.com"
        );
        assert_eq!(
            normalize_email_google("user.name+NYC@Example.com").unwrap(),
            "user.name+nyc@example.com"
        );
        let phones = [
            (
                "+1-800-555-0100",
                "fb4f73a6ec5fdb7077d564cdd22c3554b43ce49168550c3b12c547b78c517b30",
            ),
            (
                "+1 800-555-0101",
                "61d6c2976b5d92b1ad63073a12fddd26040cd980067d03a93dd1cc50f1a3ac68",
            ),
            (
                "+1-800-555-0110",
                "525c2390a4e2a9766fa8ddc341dd10414603baebefa401f5a5e29f55e176525d",
            ),
        ];
        for (raw, hash) in phones {
            assert_eq!(hash_phone_e164(raw, None).unwrap(), hash, "{raw}");
        }
        assert_eq!(
            normalize_phone_e164("(800)555-0100", Some("1")).unwrap(),
            "+18005550100"
        );
    }

    // TikTok's help page vector; LinkedIn's `adsapi` vector is a plain SHA-256.
    #[test]
    fn tiktok_and_linkedin_vectors() {
        assert_eq!(
            hash_email("janedoe@gmail.com").unwrap(),
            "d6117306485ed0e50afab3ac871e98f81699151f30281527d63ff5f233656c69"
        );
        assert_eq!(
            sha256_hex("adsapi"),
            "49e0be2aeccfb51a8dee4c945c8a70a9ac500cf6f5cb08112575f74db9b1470d"
        );
    }

    #[test]
    fn rejects_what_cannot_match() {
        assert_eq!(normalize_email("not-an-email"), None);
        assert_eq!(normalize_email("a@b"), None);
        assert_eq!(normalize_email("@example.com"), None);
        assert_eq!(normalize_phone_e164("555-0100", Some("1")), None);
        assert_eq!(normalize_phone_e164("2125550100", None), None);
        assert_eq!(normalize_name(" . "), None);
        assert_eq!(
            normalize_phone_e164("0044 20 7946 0958", None).unwrap(),
            "+442079460958"
        );
        assert_eq!(
            normalize_phone_e164("020 7946 0958", Some("44")).unwrap(),
            "+442079460958"
        );
        assert!(is_sha256_hex(&sha256_hex("x")));
        assert!(!is_sha256_hex("abc"));
    }
}
