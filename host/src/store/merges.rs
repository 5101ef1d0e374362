//! What undoing a merge needs, beside the `merges` log itself: `merge_items` (a snapshot of
//! both sides taken as the merge happens: the merged-away profile's identifiers, events,
//! traits, consent, groups and re-pointed merges, and the survivor's traits, consent and groups
//! before the merge) and `merge_blocks` (pairs of profiles an undone merge may not join again).
//! All inside the caller's transaction.

use std::collections::HashSet;

use anyhow::Context as _;

use super::{col, Conn, Result, StoreError};
use crate::identifier::Identifier;

/// Records both sides of the merge `merge_id` of `from` into `into`, before anything moves.
pub async fn snapshot(conn: &mut Conn, merge_id: &str, into: &str, from: &str) -> Result<()> {
    let from_side = [
        "SELECT $1, 'from', 'identifier', kind, value, first_seen FROM identifiers WHERE profile_id = $2",
        "SELECT $1, 'from', 'event', message_id, CAST(NULL AS TEXT), ts FROM events WHERE profile_id = $2",
        "SELECT $1, 'from', 'trait', name, value, ts FROM traits WHERE profile_id = $2",
        "SELECT $1, 'from', 'consent', category, CASE WHEN granted = 1 THEN '1' ELSE '0' END, ts FROM consent WHERE profile_id = $2",
        "SELECT $1, 'from', 'group', group_id, CAST(NULL AS TEXT), CAST(NULL AS BIGINT) FROM profile_groups WHERE profile_id = $2",
        "SELECT $1, 'from', 'merge', id, CAST(NULL AS TEXT), CAST(NULL AS BIGINT) FROM merges WHERE into_profile = $2",
        "SELECT $1, 'from', 'profile', 'created_at', CAST(NULL AS TEXT), created_at FROM profiles WHERE id = $2",
    ];
    let into_side = [
        "SELECT $1, 'into', 'trait', name, value, ts FROM traits WHERE profile_id = $2",
        "SELECT $1, 'into', 'consent', category, CASE WHEN granted = 1 THEN '1' ELSE '0' END, ts FROM consent WHERE profile_id = $2",
        "SELECT $1, 'into', 'group', group_id, CAST(NULL AS TEXT), CAST(NULL AS BIGINT) FROM profile_groups WHERE profile_id = $2",
    ];
    for (profile, select) in from_side
        .iter()
        .map(|s| (from, s))
        .chain(into_side.iter().map(|s| (into, s)))
    {
        sqlx::query(&format!(
            "INSERT INTO merge_items (merge_id, side, item, name, value, ts) {select}"
        ))
        .bind(merge_id)
        .bind(profile)
        .execute(&mut *conn)
        .await
        .context("recording the merge's snapshot")?;
    }
    Ok(())
}

/// Folds `from`'s consent into `into` (the later decision per category wins, as traits do)
/// and hands `from`'s merge blocks to `into`.
pub async fn fold(conn: &mut Conn, into: &str, from: &str) -> Result<()> {
    for sql in [
        "INSERT INTO consent (profile_id, category, granted, ts) SELECT $1, category, granted, ts FROM consent WHERE profile_id = $2 \
         ON CONFLICT (profile_id, category) DO UPDATE SET granted = excluded.granted, ts = excluded.ts WHERE excluded.ts > consent.ts",
        "INSERT INTO merge_blocks (profile_a, profile_b, merge_id, at) SELECT $1, profile_b, merge_id, at FROM merge_blocks WHERE profile_a = $2 \
         ON CONFLICT (profile_a, profile_b) DO NOTHING",
        "INSERT INTO merge_blocks (profile_a, profile_b, merge_id, at) SELECT profile_a, $1, merge_id, at FROM merge_blocks WHERE profile_b = $2 \
         ON CONFLICT (profile_a, profile_b) DO NOTHING",
    ] {
        sqlx::query(sql)
            .bind(into)
            .bind(from)
            .execute(&mut *conn)
            .await?;
    }
    for sql in [
        "DELETE FROM consent WHERE profile_id = $1",
        "DELETE FROM merge_blocks WHERE profile_a = $1 OR profile_b = $1",
    ] {
        sqlx::query(sql).bind(from).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Whether an undone merge forbids joining any two of these profiles.
pub async fn any_blocked(conn: &mut Conn, profiles: &[&str]) -> Result<bool> {
    if profiles.len() < 2 {
        return Ok(false);
    }
    let n = profiles.len();
    let a = (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let b = (n + 1..=2 * n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT COUNT(*) AS n FROM merge_blocks WHERE profile_a IN ({a}) AND profile_b IN ({b})"
    );
    let mut q = sqlx::query(&sql);
    for p in profiles.iter().chain(profiles.iter()) {
        q = q.bind(*p);
    }
    let row = q.fetch_one(&mut *conn).await?;
    Ok(col::<i64>(&row, "n")? > 0)
}

/// One merge of the log, as undoing it needs it.
#[derive(Debug, Clone)]
pub struct MergeLogRow {
    pub id: String,
    pub from_profile: String,
    /// The profile holding what was merged now (later merges re-point this).
    pub into_profile: String,
    pub reason: String,
    pub at: i64,
    pub undone_at: Option<i64>,
}

/// A merge by id; NotFound when the log has no such merge.
pub async fn merge_row(conn: &mut Conn, merge_id: &str) -> Result<MergeLogRow> {
    let row = sqlx::query(
        "SELECT id, from_profile, into_profile, reason, at, undone_at FROM merges WHERE id = $1",
    )
    .bind(merge_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("no merge has id {merge_id}")))?;
    Ok(MergeLogRow {
        id: col(&row, "id")?,
        from_profile: col(&row, "from_profile")?,
        into_profile: col(&row, "into_profile")?,
        reason: col(&row, "reason")?,
        at: col(&row, "at")?,
        undone_at: col(&row, "undone_at")?,
    })
}

/// One snapshot row of a merge.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeItem {
    /// `from` or `into`.
    pub side: String,
    pub item: String,
    pub name: String,
    pub value: Option<String>,
    pub ts: Option<i64>,
}

/// A merge's snapshot.
pub async fn items(conn: &mut Conn, merge_id: &str) -> Result<Vec<MergeItem>> {
    let rows = sqlx::query(
        "SELECT side, item, name, value, ts FROM merge_items WHERE merge_id = $1 ORDER BY side, item, name",
    )
    .bind(merge_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(MergeItem {
                side: col(r, "side")?,
                item: col(r, "item")?,
                name: col(r, "name")?,
                value: col(r, "value")?,
                ts: col(r, "ts")?,
            })
        })
        .collect()
}

/// Re-creates a merged-away profile under its old id.
pub async fn recreate_profile(conn: &mut Conn, id: &str, created_at: i64, now: i64) -> Result<()> {
    let exists = sqlx::query("SELECT id FROM profiles WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_some() {
        return Err(StoreError::Conflict(format!("profile {id} exists already")));
    }
    sqlx::query("INSERT INTO profiles (id, created_at, updated_at) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(created_at)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Moves an identifier from `holder` to `to`; whether it was there to move.
pub async fn move_identifier(
    conn: &mut Conn,
    kind: &str,
    value: &str,
    holder: &str,
    to: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE identifiers SET profile_id = $1 WHERE kind = $2 AND value = $3 AND profile_id = $4",
    )
    .bind(to)
    .bind(kind)
    .bind(value)
    .bind(holder)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Moves the events the merge's snapshot lists from `holder` back to `to`; how many.
pub async fn move_snapshot_events(
    conn: &mut Conn,
    merge_id: &str,
    holder: &str,
    to: &str,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE events SET profile_id = $1 WHERE profile_id = $2 AND message_id IN \
         (SELECT name FROM merge_items WHERE merge_id = $3 AND side = 'from' AND item = 'event')",
    )
    .bind(to)
    .bind(holder)
    .bind(merge_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// A stored event, as undoing a merge reads it.
#[derive(Debug, Clone)]
pub struct EventBody {
    pub message_id: String,
    pub kind: String,
    pub ts: i64,
    pub body: String,
}

/// A profile's events received at or after `since`.
pub async fn events_since(conn: &mut Conn, profile: &str, since: i64) -> Result<Vec<EventBody>> {
    let rows = sqlx::query(
        "SELECT message_id, kind, ts, body FROM events WHERE profile_id = $1 AND received_at >= $2 ORDER BY ts, message_id",
    )
    .bind(profile)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EventBody {
                message_id: col(r, "message_id")?,
                kind: col(r, "kind")?,
                ts: col(r, "ts")?,
                body: col(r, "body")?,
            })
        })
        .collect()
}

/// Moves one event to `to`.
pub async fn move_event(conn: &mut Conn, message_id: &str, to: &str) -> Result<()> {
    sqlx::query("UPDATE events SET profile_id = $1 WHERE message_id = $2")
        .bind(to)
        .bind(message_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A profile's traits: (name, value as JSON text, ts).
pub async fn traits(conn: &mut Conn, profile: &str) -> Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query("SELECT name, value, ts FROM traits WHERE profile_id = $1")
        .bind(profile)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| Ok((col(r, "name")?, col(r, "value")?, col(r, "ts")?)))
        .collect()
}

/// Sets (Some) or removes (None) one trait of a profile, whatever it held.
pub async fn put_trait(
    conn: &mut Conn,
    profile: &str,
    name: &str,
    value: Option<(&str, i64)>,
) -> Result<()> {
    match value {
        Some((value, ts)) => sqlx::query(
            "INSERT INTO traits (profile_id, name, value, ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, ts = excluded.ts",
        )
        .bind(profile)
        .bind(name)
        .bind(value)
        .bind(ts),
        None => sqlx::query("DELETE FROM traits WHERE profile_id = $1 AND name = $2")
            .bind(profile)
            .bind(name),
    }
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A profile's consent: (category, granted, ts).
pub async fn consent(conn: &mut Conn, profile: &str) -> Result<Vec<(String, bool, i64)>> {
    let rows = sqlx::query("SELECT category, granted, ts FROM consent WHERE profile_id = $1")
        .bind(profile)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                col(r, "category")?,
                col::<i64>(r, "granted")? != 0,
                col(r, "ts")?,
            ))
        })
        .collect()
}

/// Sets (Some) or removes (None) one consent category of a profile, whatever it held.
pub async fn put_consent(
    conn: &mut Conn,
    profile: &str,
    category: &str,
    value: Option<(bool, i64)>,
) -> Result<()> {
    match value {
        Some((granted, ts)) => sqlx::query(
            "INSERT INTO consent (profile_id, category, granted, ts) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (profile_id, category) DO UPDATE SET granted = excluded.granted, ts = excluded.ts",
        )
        .bind(profile)
        .bind(category)
        .bind(granted as i64)
        .bind(ts),
        None => sqlx::query("DELETE FROM consent WHERE profile_id = $1 AND category = $2")
            .bind(profile)
            .bind(category),
    }
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Gives `to` the groups it had, and takes from `holder` those only `to` brought.
pub async fn split_groups(
    conn: &mut Conn,
    holder: &str,
    to: &str,
    to_groups: &HashSet<String>,
    holder_groups: &HashSet<String>,
) -> Result<()> {
    for g in to_groups {
        sqlx::query("INSERT INTO profile_groups (profile_id, group_id) VALUES ($1, $2) ON CONFLICT (profile_id, group_id) DO NOTHING")
            .bind(to)
            .bind(g)
            .execute(&mut *conn)
            .await?;
        if !holder_groups.contains(g) {
            sqlx::query("DELETE FROM profile_groups WHERE profile_id = $1 AND group_id = $2")
                .bind(holder)
                .bind(g)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Earlier merges into the merged-away profile, re-pointed at the survivor by this merge, name
/// it again.
pub async fn repoint_earlier_merges(
    conn: &mut Conn,
    merge_id: &str,
    holder: &str,
    to: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE merges SET into_profile = $1 WHERE into_profile = $2 AND id IN \
         (SELECT name FROM merge_items WHERE merge_id = $3 AND side = 'from' AND item = 'merge')",
    )
    .bind(to)
    .bind(holder)
    .bind(merge_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks a merge undone and, unless `allow_rejoin`, forbids the two profiles to merge again.
pub async fn mark_undone(
    conn: &mut Conn,
    merge_id: &str,
    a: &str,
    b: &str,
    allow_rejoin: bool,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE merges SET undone_at = $1 WHERE id = $2")
        .bind(now)
        .bind(merge_id)
        .execute(&mut *conn)
        .await?;
    if !allow_rejoin {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        sqlx::query(
            "INSERT INTO merge_blocks (profile_a, profile_b, merge_id, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (profile_a, profile_b) DO UPDATE SET merge_id = excluded.merge_id, at = excluded.at",
        )
        .bind(a)
        .bind(b)
        .bind(merge_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Erasure, before the `merges` rows go: the consent and merge blocks of these profiles, and
/// the snapshots (which hold identifier and trait values) of every merge they took part in or
/// that one of these identifiers joined, and any snapshot row naming one of the identifiers.
pub async fn forget(
    conn: &mut Conn,
    profiles: &[String],
    identifiers: &[Identifier],
) -> Result<()> {
    for p in profiles {
        for sql in [
            "DELETE FROM consent WHERE profile_id = $1",
            "DELETE FROM merge_items WHERE merge_id IN (SELECT id FROM merges WHERE into_profile = $1 OR from_profile = $1)",
            "DELETE FROM merge_blocks WHERE profile_a = $1 OR profile_b = $1",
        ] {
            sqlx::query(sql)
                .bind(p)
                .execute(&mut *conn)
                .await
                .context("erasing consent and merge snapshots")?;
        }
    }
    for id in identifiers {
        for sql in [
            "DELETE FROM merge_items WHERE merge_id IN (SELECT id FROM merges WHERE identifier_kind = $1 AND identifier_value = $2)",
            "DELETE FROM merge_items WHERE item = 'identifier' AND name = $1 AND value = $2",
        ] {
            sqlx::query(sql)
                .bind(&id.kind)
                .bind(&id.value)
                .execute(&mut *conn)
                .await
                .context("erasing merge snapshots")?;
        }
    }
    Ok(())
}
