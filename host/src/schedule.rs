//! When scheduled work (sync runs, audience refreshes) is due: a fixed interval, a cron
//! expression, or `continuous` (whenever profiles changed).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A parsed `schedule = "..."`.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `"every 15m"` or `"15m"`.
    Every(Duration),
    /// Five- or six-field cron, evaluated in UTC.
    Cron(Box<croner::Cron>),
    /// Run again as soon as the model may have changed (polled about once a second).
    Continuous,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        if t == "continuous" {
            return Ok(Schedule::Continuous);
        }
        let interval = t.strip_prefix("every ").unwrap_or(t).trim();
        if let Ok(d) = humantime::parse_duration(interval) {
            if d < Duration::from_secs(1) {
                return Err(format!("`{text}`: the shortest interval is 1s"));
            }
            return Ok(Schedule::Every(d));
        }
        match t.parse::<croner::Cron>() {
            Ok(cron) => Ok(Schedule::Cron(Box::new(cron))),
            Err(e) => Err(format!(
                "`{text}` is neither an interval (\"every 15m\"), a cron expression (\"0 */6 * * *\": {e}) nor \"continuous\""
            )),
        }
    }

    /// The next time work is due, given when it last started (None: never).
    pub fn next_after(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(d) => match last {
                None => now,
                Some(l) => l + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX),
            },
            Schedule::Cron(c) => {
                let from = last.unwrap_or(now);
                c.find_next_occurrence(&from, false)
                    .unwrap_or(now + chrono::Duration::days(365))
            }
            Schedule::Continuous => match last {
                None => now,
                Some(l) => l + chrono::Duration::seconds(1),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_intervals_cron_and_continuous() {
        assert!(
            matches!(Schedule::parse("every 15m"), Ok(Schedule::Every(d)) if d.as_secs() == 900)
        );
        assert!(matches!(Schedule::parse("1h"), Ok(Schedule::Every(_))));
        assert!(matches!(
            Schedule::parse("continuous"),
            Ok(Schedule::Continuous)
        ));
        assert!(matches!(
            Schedule::parse("0 */6 * * *"),
            Ok(Schedule::Cron(_))
        ));
        let err = Schedule::parse("every fortnight").unwrap_err();
        assert!(err.contains("neither an interval"), "{err}");
        assert!(Schedule::parse("every 10ms").is_err());
    }

    #[test]
    fn next_run_times() {
        let now = Utc::now();
        let every = Schedule::parse("every 10m").unwrap();
        assert_eq!(every.next_after(None, now), now);
        assert_eq!(
            every.next_after(Some(now), now),
            now + chrono::Duration::minutes(10)
        );
        let cron = Schedule::parse("0 * * * *").unwrap();
        let next = cron.next_after(Some(now), now);
        assert!(next > now && next <= now + chrono::Duration::hours(1));
    }
}
