//! Audiences: the profiles a CEL filter accepts. Membership is stored; before each use the
//! profiles that changed since the last evaluation are re-evaluated (incremental), and the whole
//! audience is recomputed on its `full_refresh` schedule or when its filter changed (time
//! windows like "in the last 30 days" move without any profile changing).

use crate::config::compile::CompiledAudience;
use crate::store::profiles;
use crate::store::{audiences, now_millis, Store};

/// What one refresh did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Refresh {
    pub evaluated: u64,
    pub joined: u64,
    pub left: u64,
    pub errors: u64,
    /// The first evaluation error, to show the operator.
    pub first_error: Option<String>,
    pub full: bool,
    /// Members after the refresh.
    pub size: i64,
}

/// Re-evaluates the audience's changed profiles (or all of them when `full`, the filter
/// changed, or it was never computed) and stores who is in it.
#[tracing::instrument(skip(store, rule), fields(audience = %name))]
pub async fn refresh(
    store: &Store,
    name: &str,
    rule: &CompiledAudience,
    full: bool,
) -> anyhow::Result<Refresh> {
    let filter = &rule.filter;
    let started = now_millis();
    let state = audiences::state(store, name).await?;
    let full = full || state.as_ref().is_none_or(|(f, _)| f != filter.source());
    let since = if full {
        i64::MIN
    } else {
        state.map(|s| s.1).unwrap_or(i64::MIN)
    };
    let mut report = Refresh {
        full,
        ..Default::default()
    };

    // Profiles gone (merged away or deleted) leave every audience; only look when some went.
    if full || profiles_gone_since(store, since).await? {
        report.left += audiences::drop_gone(store, name).await?;
    }

    let mut after = String::new();
    loop {
        let ids = profiles::ids_page(store, (!full).then_some(since), &after, 5000).await?;
        if ids.is_empty() {
            break;
        }
        after = ids.last().cloned().unwrap_or_default();
        let loaded = if filter.uses_events {
            profiles::load(store, &ids, true).await?
        } else {
            profiles::by_ids(store, &ids).await?
        };
        store.analyze_if_stale("audience_members").await?;
        let current = audiences::members_among(store, name, &ids).await?;
        let mut join = Vec::new();
        let mut leave = Vec::new();
        for p in &loaded {
            report.evaluated += 1;
            let member = match filter.matches(p, None) {
                Ok(m) => m,
                Err(e) => {
                    report.errors += 1;
                    report.first_error.get_or_insert(e);
                    false
                }
            };
            match (member, current.contains(&p.id)) {
                (true, false) => join.push(p.id.clone()),
                (false, true) => leave.push(p.id.clone()),
                _ => {}
            }
        }
        audiences::apply(store, name, &join, &leave, started).await?;
        report.joined += join.len() as u64;
        report.left += leave.len() as u64;
    }

    if report.joined + report.left > 0 {
        audiences::mark_changed(store, name, started).await?;
    }
    report.size = audiences::record_size(store, name, started, full).await?;

    // Writers stamp updated_at before their commit lands; look back a little next time so a
    // profile committed just after this scan is not missed.
    let through = started - 10_000;
    let full_at = if full { started } else { 0 };
    audiences::save_state(store, name, filter.source(), through, full_at).await?;
    tracing::info!(
        evaluated = report.evaluated,
        joined = report.joined,
        left = report.left,
        full,
        "audience refreshed"
    );
    Ok(report)
}

/// Whether any profile was merged away or erased at or after `since` (ms).
pub async fn profiles_gone_since(store: &Store, since: i64) -> anyhow::Result<bool> {
    Ok(profiles::gone_since(store, since).await?)
}

/// When the audience's membership last changed (ms), if ever recorded.
pub async fn membership_changed_at(store: &Store, name: &str) -> anyhow::Result<Option<i64>> {
    Ok(audiences::changed_at(store, name).await?)
}

/// When the audience was last recomputed in full (ms), if ever.
pub async fn last_full(store: &Store, name: &str) -> anyhow::Result<Option<i64>> {
    Ok(audiences::last_full(store, name).await?)
}

/// Size and a sample of members, for `switchyard audiences preview`.
pub async fn preview(store: &Store, name: &str, sample: i64) -> anyhow::Result<(i64, Vec<String>)> {
    Ok(audiences::preview(store, name, sample).await?)
}
