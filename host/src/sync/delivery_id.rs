//! Delivery ids: the id of one change of one record at one destination, sent with the record
//! (`outbound-record.delivery-id`) so that a receiver can drop what it already applied when a
//! half-accepted batch is sent again (Standard Webhooks' `webhook-id`, an API's idempotency
//! key).
//!
//! The id must be the same on every retry of a change, within a run and across runs and
//! crashes, until the destination acknowledges it, and new for each later change. Rather than
//! writing an id per record before every send (a write per record on a sync's first run, to
//! survive a crash between the send and the commit), it is derived from what the ledger
//! already keeps until the acknowledgement: the sync, the key, the action and payload hash of
//! the change, and the acknowledged state the change starts from: the key's `acked_at` in
//! `sync_records`, or, for a key the destination does not hold, when it last acknowledged its
//! removal (`sync_removed`), or nothing for a key never sent. A retry finds the same state, so
//! the same id; the acknowledgement moves `acked_at` (or removes the row and stamps the
//! removal), so the next change gets another. A full resync of an unchanged record starts from
//! the state its own acknowledgement made, so it gets a new id too, and is not deduplicated
//! away by the receiver it is meant to repair.

use sha2::{Digest, Sha256};

/// The state a change starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The destination holds the key, acknowledged at this time (Unix ms).
    Acked(i64),
    /// The destination acknowledged the key's removal at this time.
    Removed(i64),
    /// The destination was never sent the key by this sync.
    New,
}

/// The delivery id of a change: `dlv_` and 32 hex digits (128 bits of SHA-256), short enough
/// for every provider's idempotency key (Standard Webhooks' `webhook-id` has no length limit;
/// Stripe-style `Idempotency-Key` headers take up to 255 characters).
pub fn for_change(sync: &str, key: &str, action: &str, hash: &str, base: Base) -> String {
    let base = match base {
        Base::Acked(at) => format!("a{at}"),
        Base::Removed(at) => format!("r{at}"),
        Base::New => "n".to_string(),
    };
    digest(&[sync, key, action, hash, &base])
}

/// The delivery id of an event forwarded by an events sync: derived from the event's own
/// `messageId` (already the deduplication key of the tracking API), per sync.
pub fn for_event(sync: &str, message_id: &str) -> String {
    digest(&[sync, "track", message_id])
}

/// The delivery id of an erase of `key` at `destination` for erasure request `erasure`: the
/// same on every retry of that erase.
pub fn for_erase(erasure: &str, destination: &str, key: &str) -> String {
    digest(&["erase", erasure, destination, key])
}

/// The delivery id of a record handed to a plugin by hand (`switchyard plugin deliver`): its
/// content's, so the same line sent twice is the same delivery.
pub fn by_content(key: &str, fields: &str) -> String {
    digest(&["cli", key, fields])
}

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"switchyard-delivery-id-v1");
    for p in parts {
        // Length-prefixed, so that no two different tuples hash the same bytes.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("dlv_{}", hex::encode(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_gets_the_same_id_and_each_later_change_a_new_one() {
        let first = for_change("s", "p1", "upsert", "h1", Base::New);
        assert_eq!(first, for_change("s", "p1", "upsert", "h1", Base::New));
        assert!(first.starts_with("dlv_") && first.len() == 36, "{first}");
        // Acknowledged at 100; the next change starts from there.
        let second = for_change("s", "p1", "upsert", "h2", Base::Acked(100));
        assert_ne!(first, second);
        // The same payload again after other changes is still a new change.
        let back = for_change("s", "p1", "upsert", "h1", Base::Acked(200));
        assert!(![&first, &second].contains(&&back));
        // A removal and a re-add of the very first payload: new ids both.
        let removal = for_change("s", "p1", "delete", "h1", Base::Acked(200));
        let readd = for_change("s", "p1", "upsert", "h1", Base::Removed(300));
        assert!(![&first, &second, &back, &removal].contains(&&readd));
        assert_ne!(removal, back);
    }

    #[test]
    fn ids_differ_by_sync_and_key_and_cannot_be_confused_by_concatenation() {
        let a = for_change("s", "p1", "upsert", "h", Base::New);
        assert_ne!(a, for_change("t", "p1", "upsert", "h", Base::New));
        assert_ne!(a, for_change("s", "p2", "upsert", "h", Base::New));
        assert_ne!(
            for_change("ab", "c", "upsert", "h", Base::New),
            for_change("a", "bc", "upsert", "h", Base::New)
        );
        assert_eq!(for_event("s", "m1"), for_event("s", "m1"));
        assert_ne!(for_event("s", "m1"), for_event("s", "m2"));
    }
}
