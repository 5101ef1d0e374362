//! API version sunsets, so a plugin's stale default turns into a red test instead of an outage.
//!
//! Providers retire API versions on a published schedule (LinkedIn after a year, Shopify after a
//! year, Meta's Graph after about two, Google Ads after about one); a plugin whose default
//! version is past its sunset fails every call of every user who kept the default. Each plugin
//! keeps a table of the versions it may default to with their sunset dates (sourced from the
//! provider's page) and a unit test:
//!
//! ```
//! use switchyard_sdk::sunset::{self, Sunset};
//!
//! const SUNSETS: &[Sunset] = &[
//!     Sunset { version: "v26", sunset: "2027-11-01", source: "https://developers.google.com/google-ads/api/docs/sunset-dates" },
//! ];
//! // In a plugin's tests: `sunset::assert_fresh("v26", SUNSETS, sunset::MARGIN_DAYS);`
//! assert!(sunset::check("v26", SUNSETS, 60, sunset::unix_day("2026-12-06").unwrap()).is_ok());
//! assert!(sunset::check("v26", SUNSETS, 60, sunset::unix_day("2027-10-01").unwrap()).is_err());
//! assert!(sunset::check("v25", SUNSETS, 60, 0).is_err()); // not in the table: unknown = stale
//! ```

/// One API version and the day the provider stops serving it (`YYYY-MM-DD`, UTC).
#[derive(Debug, Clone, Copy)]
pub struct Sunset {
    /// The version as the plugin writes it (`v26`, `202611`, `2026-10`).
    pub version: &'static str,
    /// The first day the provider no longer serves it, as the provider published it.
    pub sunset: &'static str,
    /// Where the date comes from (the provider's page), for the next person to re-check.
    pub source: &'static str,
}

/// The least time a default version must have left: two months for a release to reach users.
pub const MARGIN_DAYS: i64 = 60;

/// Days since the Unix epoch of a `YYYY-MM-DD` date; `None` if it is not a real date.
pub fn unix_day(date: &str) -> Option<i64> {
    crate::time::parse_unix(&format!("{date}T00:00:00Z")).map(|s| s.div_euclid(86_400))
}

/// Ok if `version` is in `table` and its sunset is more than `margin_days` after `today` (days
/// since the epoch); otherwise the reason, naming the version, its sunset and the source.
pub fn check(version: &str, table: &[Sunset], margin_days: i64, today: i64) -> Result<(), String> {
    let Some(entry) = table.iter().find(|s| s.version == version) else {
        return Err(format!(
            "default API version {version} has no sunset date in the plugin's table: look it up and add it"
        ));
    };
    let Some(sunset) = unix_day(entry.sunset) else {
        return Err(format!(
            "sunset date `{}` of {version} is not a YYYY-MM-DD date",
            entry.sunset
        ));
    };
    let left = sunset - today;
    if left <= margin_days {
        return Err(format!(
            "default API version {version} is sunset on {} ({left} days from today, less than {margin_days}; {}): move the default to a current version",
            entry.sunset, entry.source
        ));
    }
    Ok(())
}

/// Panics (fails the calling test) unless `version` has more than `margin_days` left from today.
#[track_caller]
pub fn assert_fresh(version: &str, table: &[Sunset], margin_days: i64) {
    let today = (crate::time::now_unix() / 86_400) as i64;
    if let Err(reason) = check(version, table, margin_days, today) {
        panic!("{reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[Sunset] = &[
        Sunset {
            version: "202509",
            sunset: "2026-09-15",
            source: "test",
        },
        Sunset {
            version: "202611",
            sunset: "2027-11-15",
            source: "test",
        },
        Sunset {
            version: "bad",
            sunset: "2027-02-30",
            source: "test",
        },
    ];

    #[test]
    fn a_version_past_or_near_its_sunset_fails() {
        let today = unix_day("2026-12-06").unwrap();
        assert!(check("202509", TABLE, 60, today)
            .unwrap_err()
            .contains("2026-09-15"));
        assert!(check("202611", TABLE, 60, today).is_ok());
        let near = unix_day("2027-09-20").unwrap();
        assert!(check("202611", TABLE, 60, near).is_err());
        assert!(check("202612", TABLE, 60, today)
            .unwrap_err()
            .contains("no sunset date"));
        assert!(check("bad", TABLE, 60, today)
            .unwrap_err()
            .contains("not a YYYY-MM-DD"));
    }

    #[test]
    fn days_count_from_the_epoch() {
        assert_eq!(unix_day("1970-01-02"), Some(1));
        assert_eq!(unix_day("2026-12-06"), Some(20_793));
        assert_eq!(unix_day("2026-13-01"), None);
    }
}
