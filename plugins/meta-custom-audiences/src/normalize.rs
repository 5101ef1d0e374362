//! Meta's customer-file normalisation: each key of the multi-key schema has its own rule, and
//! every key but `MADID` and `EXTERN_ID` is SHA-256 hashed (lowercase hex) after normalising.
//! Built on `switchyard_sdk::pii` (email, phone, name), extended with Meta's rules for gender,
//! birth date, city, state, zip and country.

use serde::Deserialize;
use switchyard_sdk::{pii, schemars};

/// One column of Meta's multi-key schema.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Key {
    ExternId,
    Email,
    Phone,
    Gen,
    Doby,
    Dobm,
    Dobd,
    Ln,
    Fn,
    Fi,
    Ct,
    St,
    Zip,
    Madid,
    Country,
}

impl Key {
    /// Every key, in the order Meta's documentation lists them (the default schema order).
    pub const ALL: [Key; 15] = [
        Key::ExternId,
        Key::Email,
        Key::Phone,
        Key::Gen,
        Key::Doby,
        Key::Dobm,
        Key::Dobd,
        Key::Ln,
        Key::Fn,
        Key::Fi,
        Key::Ct,
        Key::St,
        Key::Zip,
        Key::Madid,
        Key::Country,
    ];

    /// The schema name Meta expects.
    pub fn name(self) -> &'static str {
        match self {
            Key::ExternId => "EXTERN_ID",
            Key::Email => "EMAIL",
            Key::Phone => "PHONE",
            Key::Gen => "GEN",
            Key::Doby => "DOBY",
            Key::Dobm => "DOBM",
            Key::Dobd => "DOBD",
            Key::Ln => "LN",
            Key::Fn => "FN",
            Key::Fi => "FI",
            Key::Ct => "CT",
            Key::St => "ST",
            Key::Zip => "ZIP",
            Key::Madid => "MADID",
            Key::Country => "COUNTRY",
        }
    }

    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether Meta wants this key hashed (all but the mobile advertiser id and external id).
    pub fn hashed(self) -> bool {
        !matches!(self, Key::Madid | Key::ExternId)
    }

    /// Keys that identify a person on their own; the others only refine a match.
    pub fn identifies(self) -> bool {
        matches!(self, Key::Email | Key::Phone | Key::Madid | Key::ExternId)
    }
}

/// Email: trim, lowercase (whitespace anywhere removed); Meta's SDK also strips dots at either
/// end of the address.
pub fn email(raw: &str) -> Option<String> {
    let trimmed = raw
        .trim()
        .trim_matches(|c: char| c == '.' || c.is_whitespace());
    pii::normalize_email(trimmed)
}

/// Phone: digits only with the country code, no `+`, no leading zeros (`+1 (555) 123-4567` →
/// `15551234567`). A number written without `+`/`00` gets `default_country_code`.
pub fn phone(raw: &str, default_country_code: Option<&str>) -> Option<String> {
    pii::normalize_phone_digits(raw, default_country_code)
}

/// Gender: `m` or `f` (accepts `male`/`female`, any case).
pub fn gender(raw: &str) -> Option<String> {
    match raw.trim().to_lowercase().as_str() {
        "m" | "male" | "man" => Some("m".into()),
        "f" | "female" | "woman" => Some("f".into()),
        _ => None,
    }
}

/// A birth date `YYYY-MM-DD` (also `YYYY/MM/DD`, `YYYYMMDD`) → (`YYYY`, `MM`, `DD`).
pub fn birth_date(raw: &str, current_year: u32) -> Option<(String, String, String)> {
    let digits: String = raw.trim().chars().filter(|c| c.is_ascii_digit()).collect();
    let parts: Vec<&str> = raw
        .trim()
        .split(['-', '/', '.'])
        .filter(|p| !p.is_empty())
        .collect();
    let (y, m, d) = if parts.len() == 3 && parts[0].len() == 4 {
        (parts[0], parts[1], parts[2])
    } else if parts.len() == 1 && digits.len() == 8 {
        (&digits[0..4], &digits[4..6], &digits[6..8])
    } else {
        return None;
    };
    Some((birth_year(y, current_year)?, birth_month(m)?, birth_day(d)?))
}

/// `YYYY`, 1900 to the current year.
pub fn birth_year(raw: &str, current_year: u32) -> Option<String> {
    let y: u32 = raw.trim().parse().ok()?;
    (1900..=current_year.max(1900))
        .contains(&y)
        .then(|| format!("{y:04}"))
}

/// `MM`, 01–12, zero-padded.
pub fn birth_month(raw: &str) -> Option<String> {
    let m: u32 = raw.trim().parse().ok()?;
    (1..=12).contains(&m).then(|| format!("{m:02}"))
}

/// `DD`, 01–31, zero-padded.
pub fn birth_day(raw: &str) -> Option<String> {
    let d: u32 = raw.trim().parse().ok()?;
    (1..=31).contains(&d).then(|| format!("{d:02}"))
}

/// First or last name: lowercase, no punctuation, letters of any script kept.
pub fn name(raw: &str) -> Option<String> {
    pii::normalize_name(raw)
}

/// First initial: the first letter of the normalised first name.
pub fn first_initial(raw: &str) -> Option<String> {
    name(raw)?.chars().next().map(|c| c.to_string())
}

/// Letters and digits only, lowercase (city; state and zip outside the US).
fn alnum_lower(raw: &str) -> Option<String> {
    let s: String = raw
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    (!s.is_empty()).then_some(s)
}

/// City: lowercase, no punctuation, spaces or special characters (`San Francisco` →
/// `sanfrancisco`).
pub fn city(raw: &str) -> Option<String> {
    alnum_lower(raw)
}

/// State: US states as their 2-letter ANSI code in lowercase (`California` or `CA` → `ca`);
/// elsewhere lowercase without punctuation or spaces.
pub fn state(raw: &str, country: Option<&str>) -> Option<String> {
    let s = alnum_lower(raw)?;
    let us = country.is_none_or(|c| c == "us");
    if us {
        if let Some((_, code)) = US_STATES.iter().find(|(n, _)| *n == s) {
            return Some((*code).to_string());
        }
    }
    Some(s)
}

/// Zip: lowercase, no spaces or dashes; US zips are their first 5 digits (`94045-1234` → `94045`).
pub fn zip(raw: &str, country: Option<&str>) -> Option<String> {
    let s: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_lowercase();
    if s.is_empty() || !s.chars().all(|c| c.is_alphanumeric()) {
        return None;
    }
    let looks_us = s.len() >= 5 && s.chars().all(|c| c.is_ascii_digit());
    match country {
        Some("us") => looks_us.then(|| s[..5].to_string()),
        None if looks_us && (s.len() == 5 || s.len() == 9) => Some(s[..5].to_string()),
        _ => Some(s),
    }
}

/// Country: ISO 3166-1 alpha-2, lowercase.
pub fn country(raw: &str) -> Option<String> {
    let s = raw.trim().to_lowercase();
    (s.len() == 2 && s.chars().all(|c| c.is_ascii_lowercase())).then_some(s)
}

/// Mobile advertiser id (IDFA / AAID): lowercase, not hashed.
pub fn madid(raw: &str) -> Option<String> {
    let s = raw.trim().to_lowercase();
    let ok = !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    ok.then_some(s)
}

/// External id: as is (trimmed), not hashed.
pub fn extern_id(raw: &str) -> Option<String> {
    let s = raw.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The value Meta receives for a normalised value of `key`: SHA-256 hex for hashed keys.
pub fn encode(key: Key, normalised: &str) -> String {
    if key.hashed() {
        pii::sha256_hex(normalised)
    } else {
        normalised.to_string()
    }
}

/// US states (and DC and territories), normalised names → ANSI codes.
const US_STATES: &[(&str, &str)] = &[
    ("alabama", "al"),
    ("alaska", "ak"),
    ("arizona", "az"),
    ("arkansas", "ar"),
    ("california", "ca"),
    ("colorado", "co"),
    ("connecticut", "ct"),
    ("delaware", "de"),
    ("districtofcolumbia", "dc"),
    ("florida", "fl"),
    ("georgia", "ga"),
    ("hawaii", "hi"),
    ("idaho", "id"),
    ("illinois", "il"),
    ("indiana", "in"),
    ("iowa", "ia"),
    ("kansas", "ks"),
    ("kentucky", "ky"),
    ("louisiana", "la"),
    ("maine", "me"),
    ("maryland", "md"),
    ("massachusetts", "ma"),
    ("michigan", "mi"),
    ("minnesota", "mn"),
    ("mississippi", "ms"),
    ("missouri", "mo"),
    ("montana", "mt"),
    ("nebraska", "ne"),
    ("nevada", "nv"),
    ("newhampshire", "nh"),
    ("newjersey", "nj"),
    ("newmexico", "nm"),
    ("newyork", "ny"),
    ("northcarolina", "nc"),
    ("northdakota", "nd"),
    ("ohio", "oh"),
    ("oklahoma", "ok"),
    ("oregon", "or"),
    ("pennsylvania", "pa"),
    ("rhodeisland", "ri"),
    ("southcarolina", "sc"),
    ("southdakota", "sd"),
    ("tennessee", "tn"),
    ("texas", "tx"),
    ("utah", "ut"),
    ("vermont", "vt"),
    ("virginia", "va"),
    ("washington", "wa"),
    ("westvirginia", "wv"),
    ("wisconsin", "wi"),
    ("wyoming", "wy"),
    ("puertorico", "pr"),
    ("guam", "gu"),
    ("americansamoa", "as"),
    ("northernmarianaislands", "mp"),
    ("usvirginislands", "vi"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn h(key: Key, v: &str) -> String {
        encode(key, v)
    }

    /// The vectors of api-contracts.md §3 (SHA-256 of Meta-normalised values).
    #[test]
    fn meta_published_vectors() {
        assert_eq!(
            h(Key::Email, &email("  Test@Example.COM ").unwrap()),
            "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
        );
        assert_eq!(phone("+1 (555) 123-4567", None).unwrap(), "15551234567");
        assert_eq!(
            h(Key::Phone, &phone("+1 (555) 123-4567", None).unwrap()),
            "d6736136ea896c1bfdc553e0e86e702c70d060d805696ca3e4e9e0961353860a"
        );
        assert_eq!(
            h(Key::Phone, &phone("(212) 555-0100", Some("1")).unwrap()),
            "d70a96108cd686be3737cbeed345f2a61c178747e3cb4448e6434e24ac150acd"
        );
        assert_eq!(
            h(Key::Fn, &name("John").unwrap()),
            "96d9632f363564cc3032521409cf22a852f2032eec099ed5967c0d000cec607a"
        );
        assert_eq!(
            h(Key::Ln, &name(" Doe ").unwrap()),
            "799ef92a11af918e3fb741df42934f3b568ed2d93ac1df74f1b8d41a27932a6f"
        );
        assert_eq!(
            h(Key::Gen, &gender("Male").unwrap()),
            "62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a"
        );
        assert_eq!(
            h(Key::Gen, &gender("F").unwrap()),
            "252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111"
        );
        assert_eq!(
            h(Key::Country, &country("US").unwrap()),
            "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
        );
    }

    #[test]
    fn meta_normalisation_table() {
        assert_eq!(email(".ada@example.com."), Some("ada@example.com".into()));
        assert_eq!(email("not an email"), None);
        assert_eq!(
            phone("0044 20 7946 0958", None),
            Some("442079460958".into())
        );
        assert_eq!(phone("555-0100", Some("1")), None);
        assert_eq!(name("O'Brien"), Some("obrien".into()));
        assert_eq!(name("Zoë"), Some("zoë".into()));
        assert_eq!(first_initial("  john"), Some("j".into()));
        assert_eq!(city("San Francisco"), Some("sanfrancisco".into()));
        assert_eq!(city("Saint-Étienne"), Some("saintétienne".into()));
        assert_eq!(state("California", Some("us")), Some("ca".into()));
        assert_eq!(state("CA", None), Some("ca".into()));
        assert_eq!(state("New York", Some("us")), Some("ny".into()));
        assert_eq!(
            state("Île-de-France", Some("fr")),
            Some("îledefrance".into())
        );
        assert_eq!(zip("94045-1234", Some("us")), Some("94045".into()));
        assert_eq!(zip("94045", None), Some("94045".into()));
        assert_eq!(zip("SW1A 1AA", Some("gb")), Some("sw1a1aa".into()));
        assert_eq!(zip("abc", Some("us")), None);
        assert_eq!(country("GB"), Some("gb".into()));
        assert_eq!(country("United Kingdom"), None);
        assert_eq!(gender("x"), None);
        assert_eq!(
            birth_date("1985-3-7", 2026),
            Some(("1985".into(), "03".into(), "07".into()))
        );
        assert_eq!(
            birth_date("19851231", 2026),
            Some(("1985".into(), "12".into(), "31".into()))
        );
        assert_eq!(birth_date("1850-01-01", 2026), None);
        assert_eq!(birth_date("1985-13-01", 2026), None);
        assert_eq!(
            madid("6032D997-3AB0-4DE0-AA16-8AF0E5B482FB"),
            Some("6032d997-3ab0-4de0-aa16-8af0e5b482fb".into())
        );
        // MADID and EXTERN_ID are sent as they are, everything else hashed.
        assert_eq!(encode(Key::Madid, "abc-1"), "abc-1");
        assert_eq!(encode(Key::ExternId, "CRM-42"), "CRM-42");
        assert_eq!(encode(Key::Ct, "x").len(), 64);
    }

    #[test]
    fn key_names_round_trip() {
        for k in Key::ALL {
            assert_eq!(Key::from_name(k.name()), Some(k));
        }
        assert_eq!(Key::from_name("zip"), Some(Key::Zip));
        assert_eq!(Key::from_name("EMAIL_SHA256"), None);
    }
}
