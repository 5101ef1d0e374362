//! Identity resolution and the Profiles API end to end: the real `switchyard serve`, Segment
//! tracking calls over HTTP, on SQLite and on PostgreSQL.

use crate::common;

use common::hub::{Db, Hub};
use serde_json::json;

/// Runs each case once per backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[test] fn $name() { super::$name(super::Db::Sqlite) } )* }
        mod postgres { $( #[test] fn $name() { super::$name(super::Db::Postgres) } )* }
    };
}

on_both!(
    anonymous_then_identified,
    two_devices_of_one_user,
    alias_merges_and_logs_why,
    conflicting_second_user_id_does_not_merge,
    email_shared_by_two_users,
    traits_are_last_writer_wins_by_timestamp,
    duplicate_message_ids_are_stored_once,
    concurrent_first_messages_create_one_profile,
    identify_joins_two_profiles_and_logs_the_merge,
    profiles_api_reads_pages_and_erases,
    one_batch_resolves_like_the_same_messages_one_by_one,
);

fn ok(r: common::hub::HttpResponse) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"success": true}));
}

fn ids(profile: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = profile["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["kind"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

fn anonymous_then_identified(db: Db) {
    let hub = Hub::start(db);
    ok(hub.track(
        "track",
        json!({"anonymousId": "anon-1", "event": "Viewed Pricing", "properties": {"plan": "pro"}}),
    ));
    let before = hub
        .profile("anonymous_id:anon-1")
        .expect("an anonymous profile");
    ok(hub.track("identify", json!({"anonymousId": "anon-1", "userId": "u-1", "traits": {"email": "Ada@Example.com", "name": "Ada"}})));
    let after = hub.profile("user_id:u-1").unwrap();
    assert_eq!(
        after["id"], before["id"],
        "identified in place, not a new profile"
    );
    assert_eq!(
        ids(&after),
        [
            "anonymous_id:anon-1",
            "email:ada@example.com",
            "user_id:u-1"
        ]
    );
    assert_eq!(after["traits"]["name"], "Ada");
    assert_eq!(
        hub.profile("email:ADA@example.com").unwrap()["id"],
        after["id"]
    );
    let events = hub.admin_get("/v1/profiles/user_id:u-1/events").json();
    assert_eq!(events["data"].as_array().unwrap().len(), 2);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 1);
}

fn two_devices_of_one_user(db: Db) {
    let hub = Hub::start(db);
    ok(hub.track(
        "identify",
        json!({"anonymousId": "phone-1", "userId": "u-7"}),
    ));
    ok(hub.track(
        "track",
        json!({"anonymousId": "laptop-1", "userId": "u-7", "event": "Opened App"}),
    ));
    let p = hub.profile("user_id:u-7").unwrap();
    assert_eq!(
        ids(&p),
        [
            "anonymous_id:laptop-1",
            "anonymous_id:phone-1",
            "user_id:u-7"
        ]
    );
    assert_eq!(hub.profile("anonymous_id:phone-1").unwrap()["id"], p["id"]);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 1);
}

fn alias_merges_and_logs_why(db: Db) {
    let hub = Hub::start(db);
    ok(hub.track(
        "track",
        json!({"anonymousId": "anon-9", "event": "Signed Up"}),
    ));
    ok(hub.track(
        "identify",
        json!({"userId": "u-9", "traits": {"plan": "free"}}),
    ));
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 2);
    ok(hub.track(
        "alias",
        json!({"previousId": "anon-9", "userId": "u-9", "messageId": "alias-msg-1"}),
    ));
    let p = hub.profile("anonymous_id:anon-9").unwrap();
    assert_eq!(ids(&p), ["anonymous_id:anon-9", "user_id:u-9"]);
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 1);
    let merges = hub.admin_get("/v1/profiles/user_id:u-9/merges").json();
    let m = &merges["merges"][0];
    assert_eq!(m["reason"], "alias");
    assert_eq!(m["message_id"], "alias-msg-1");
    assert_eq!(m["into_profile"], p["id"]);
    assert!(
        m["identifier"]["kind"] == "user_id" || m["identifier"]["kind"] == "anonymous_id",
        "{m}"
    );
    // Events of both sides now belong to the one profile.
    assert_eq!(
        hub.admin_get("/v1/profiles/user_id:u-9/events").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

fn conflicting_second_user_id_does_not_merge(db: Db) {
    let hub = Hub::start(db);
    ok(hub.track(
        "identify",
        json!({"anonymousId": "shared-device", "userId": "alice"}),
    ));
    ok(hub.track(
        "identify",
        json!({"anonymousId": "shared-device", "userId": "bob"}),
    ));
    let alice = hub.profile("user_id:alice").unwrap();
    let bob = hub.profile("user_id:bob").unwrap();
    assert_ne!(
        alice["id"], bob["id"],
        "two user ids must never share a profile"
    );
    assert_eq!(ids(&alice), ["anonymous_id:shared-device", "user_id:alice"]);
    assert_eq!(ids(&bob), ["user_id:bob"]);
    assert_eq!(hub.count("SELECT COUNT(*) FROM merges"), 0);
}

fn email_shared_by_two_users(db: Db) {
    let hub = Hub::start(db);
    ok(hub.track(
        "identify",
        json!({"userId": "u-a", "traits": {"email": "family@example.com"}}),
    ));
    ok(hub.track(
        "identify",
        json!({"userId": "u-b", "traits": {"email": "family@example.com"}}),
    ));
    let a = hub.profile("user_id:u-a").unwrap();
    let b = hub.profile("user_id:u-b").unwrap();
    assert_ne!(a["id"], b["id"]);
    assert_eq!(
        hub.profile("email:family@example.com").unwrap()["id"],
        a["id"],
        "the first holder keeps the email"
    );
    assert_eq!(ids(&b), ["user_id:u-b"]);
}

fn traits_are_last_writer_wins_by_timestamp(db: Db) {
    let hub = Hub::start(db);
    ok(hub.track("identify", json!({"userId": "u-t", "timestamp": "2026-01-02T00:00:00Z", "traits": {"plan": "pro", "seats": 5}})));
    // Older, arriving later: must not overwrite.
    ok(hub.track("identify", json!({"userId": "u-t", "timestamp": "2026-01-01T00:00:00Z", "traits": {"plan": "free", "city": "Paris"}})));
    let traits = hub.admin_get("/v1/profiles/user_id:u-t/traits").json();
    assert_eq!(
        traits["traits"],
        json!({"plan": "pro", "seats": 5, "city": "Paris"})
    );
    ok(hub.track("identify", json!({"userId": "u-t", "timestamp": "2026-01-03T00:00:00Z", "traits": {"plan": "enterprise"}})));
    assert_eq!(
        hub.profile("user_id:u-t").unwrap()["traits"]["plan"],
        "enterprise"
    );
}

fn duplicate_message_ids_are_stored_once(db: Db) {
    let hub = Hub::start(db);
    let msg = json!({"userId": "u-d", "event": "Order Completed", "messageId": "dup-1"});
    ok(hub.track("track", msg.clone()));
    ok(hub.track("track", msg.clone()));
    ok(hub.track(
        "batch",
        json!({"batch": [
            {"type": "track", "userId": "u-d", "event": "Order Completed", "messageId": "dup-1"},
            {"type": "track", "userId": "u-d", "event": "Order Completed", "messageId": "dup-2"},
            {"type": "track", "userId": "u-d", "event": "Order Completed", "messageId": "dup-2"}
        ]}),
    ));
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 2);
}

fn concurrent_first_messages_create_one_profile(db: Db) {
    let hub = Hub::start(db);
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let addr = hub.addr.clone();
            std::thread::spawn(move || {
                let body = json!({"userId": "u-rush", "anonymousId": format!("dev-{i}"), "event": "App Opened"});
                common::hub::request(&addr, "POST", "/v1/track", &[("authorization", &common::hub::basic(common::hub::WRITE_KEY))], body.to_string().as_bytes()).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().status, 200);
    }
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 1);
    assert_eq!(hub.count("SELECT COUNT(*) FROM identifiers"), 51);
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 50);
}

fn identify_joins_two_profiles_and_logs_the_merge(db: Db) {
    let hub = Hub::start(db);
    ok(hub.track(
        "track",
        json!({"anonymousId": "web-1", "event": "Viewed", "timestamp": "2026-01-01T00:00:00Z"}),
    ));
    ok(hub.track("identify", json!({"anonymousId": "web-1", "traits": {"email": "zoe@example.com", "plan": "free"}, "timestamp": "2026-01-01T00:01:00Z"})));
    ok(hub.track("identify", json!({"userId": "u-zoe", "anonymousId": "app-1", "traits": {"plan": "pro"}, "timestamp": "2026-01-02T00:00:00Z"})));
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 2);
    // One message carries identifiers of both: they become one person, and the log says why.
    ok(hub.track("identify", json!({"userId": "u-zoe", "messageId": "joining-msg", "traits": {"email": "zoe@example.com"}, "timestamp": "2026-01-03T00:00:00Z"})));
    let p = hub.profile("user_id:u-zoe").unwrap();
    assert_eq!(
        ids(&p),
        [
            "anonymous_id:app-1",
            "anonymous_id:web-1",
            "email:zoe@example.com",
            "user_id:u-zoe"
        ]
    );
    assert_eq!(p["traits"]["plan"], "pro", "the newer trait wins the merge");
    let merges = hub
        .admin_get("/v1/profiles/email:zoe@example.com/merges")
        .json();
    assert_eq!(merges["merges"].as_array().unwrap().len(), 1);
    assert_eq!(merges["merges"][0]["message_id"], "joining-msg");
    assert_eq!(merges["merges"][0]["reason"], "identify");
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 1);
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 4);
}

fn profiles_api_reads_pages_and_erases(db: Db) {
    let hub = Hub::start(db);
    for i in 0..7 {
        ok(hub.track("track", json!({"userId": "u-p", "event": format!("E{i}"), "timestamp": format!("2026-02-01T00:00:0{i}Z")})));
    }
    ok(hub.track("identify", json!({"userId": "u-p", "traits": {"email": "p@example.com"}, "timestamp": "2026-01-01T00:00:00Z"})));
    let p = hub.profile("user_id:u-p").unwrap();
    assert!(p["id"].as_str().unwrap().starts_with("prf_"));
    assert!(p["created_at"].as_str().unwrap().ends_with('Z') && p["updated_at"].is_string());

    // Newest first, three per page.
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/profiles/user_id:u-p/events?limit=3&cursor={c}"),
            None => "/v1/profiles/user_id:u-p/events?limit=3".to_string(),
        };
        let page = hub.admin_get(&path).json();
        for e in page["data"].as_array().unwrap() {
            names.push(
                e["event"]
                    .as_str()
                    .unwrap_or(e["type"].as_str().unwrap())
                    .to_string(),
            );
        }
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        names,
        ["E6", "E5", "E4", "E3", "E2", "E1", "E0", "identify"]
    );

    assert_eq!(
        hub.request("GET", "/v1/profiles/user_id:u-p", &[], b"")
            .status,
        401
    );
    assert_eq!(
        hub.request(
            "GET",
            "/v1/profiles/user_id:u-p",
            &[("authorization", "Bearer wrong")],
            b""
        )
        .status,
        401
    );
    assert_eq!(hub.admin_get("/v1/profiles/user_id:nobody").status, 404);
    assert_eq!(hub.admin_get("/v1/profiles/no-colon").status, 400);

    // Erasure: gone, and the same identifiers do not bring it back.
    assert_eq!(
        hub.admin_delete("/v1/profiles/email:p@example.com").status,
        200
    );
    assert!(hub.profile("user_id:u-p").is_none());
    assert_eq!(hub.count("SELECT COUNT(*) FROM events"), 0);
    assert_eq!(hub.count("SELECT COUNT(*) FROM traits"), 0);
    ok(hub.track("track", json!({"userId": "u-p", "event": "Came Back"})));
    assert!(
        hub.profile("user_id:u-p").is_none(),
        "an erased user must not be re-created"
    );
    assert_eq!(hub.count("SELECT COUNT(*) FROM profiles"), 0);
}

/// The messages of [`one_batch_resolves_like_the_same_messages_one_by_one`], with identities
/// and message ids under `p`: new profiles, an attach, a merge, a conflicting second user id, an
/// alias, a group, out-of-order traits, a duplicate and a message whose external ids break a
/// kind's limit.
fn identity_story(p: &str) -> Vec<serde_json::Value> {
    vec![
        json!({"type": "track", "anonymousId": format!("{p}a1"), "event": "Viewed", "messageId": format!("{p}m1")}),
        json!({"type": "page", "anonymousId": format!("{p}a2"), "name": "Home", "messageId": format!("{p}m2")}),
        json!({"type": "identify", "anonymousId": format!("{p}a1"), "userId": format!("{p}u1"), "timestamp": "2026-01-02T00:00:00Z",
               "traits": {"email": format!("{p}ada@example.com"), "plan": "free"}, "messageId": format!("{p}m3")}),
        json!({"type": "identify", "anonymousId": format!("{p}a2"), "timestamp": "2026-01-01T00:00:00Z",
               "traits": {"email": format!("{p}ada@example.com"), "plan": "older", "city": "Paris"}, "messageId": format!("{p}m4")}),
        json!({"type": "identify", "userId": format!("{p}u2"), "traits": {"email": format!("{p}ada@example.com")}, "messageId": format!("{p}m5")}),
        json!({"type": "alias", "previousId": format!("{p}a3"), "userId": format!("{p}u1"), "messageId": format!("{p}m6")}),
        json!({"type": "track", "userId": format!("{p}u1"), "event": "Upgraded", "messageId": format!("{p}m7")}),
        json!({"type": "group", "userId": format!("{p}u2"), "groupId": format!("{p}g1"), "traits": {"name": "Acme"}, "messageId": format!("{p}m8")}),
        json!({"type": "identify", "userId": format!("{p}u1"), "timestamp": "2026-01-03T00:00:00Z", "traits": {"plan": "pro"}, "messageId": format!("{p}m9")}),
        json!({"type": "track", "userId": format!("{p}u1"), "event": "Upgraded", "messageId": format!("{p}m7")}),
        json!({"type": "track", "userId": format!("{p}u3"), "event": "Signed Up", "messageId": format!("{p}m10"),
               "context": {"externalIds": [{"id": format!("{p}u3b"), "type": "userId"}]}}),
        json!({"type": "alias", "previousId": format!("{p}u3"), "userId": format!("{p}u4"), "messageId": format!("{p}m11")}),
    ]
}

/// The store's identity state for identities under `p`, with profile ids replaced by their
/// identifiers and `p` by `P-`, so two runs of one story compare equal.
fn identity_snapshot(hub: &Hub, p: &str) -> Vec<String> {
    let canon = |s: &str| s.replace(p, "P-");
    let mut names: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for row in hub.strings(&format!(
        "SELECT profile_id || ' ' || kind || ':' || value FROM identifiers WHERE value LIKE '{p}%'"
    )) {
        let (profile, id) = row.split_once(' ').unwrap();
        names
            .entry(profile.to_string())
            .or_default()
            .push(canon(id));
    }
    let name = |profile: &str| {
        let mut ids = names.get(profile).cloned().unwrap_or_default();
        ids.sort();
        format!("[{}]", ids.join(" "))
    };
    let mut out: Vec<String> = names
        .keys()
        .map(|p| format!("profile {}", name(p)))
        .collect();
    let queries = [
        ("trait", format!("SELECT profile_id || ' ' || name || '=' || value FROM traits WHERE profile_id IN (SELECT profile_id FROM identifiers WHERE value LIKE '{p}%')")),
        ("event", format!("SELECT profile_id || ' ' || kind || ' ' || message_id FROM events WHERE message_id LIKE '{p}%'")),
        ("merge", format!("SELECT into_profile || ' ' || reason || ' ' || identifier_kind || ':' || identifier_value FROM merges WHERE message_id LIKE '{p}%'")),
        ("group", format!("SELECT profile_id || ' ' || group_id FROM profile_groups WHERE group_id LIKE '{p}%'")),
    ];
    for (what, sql) in queries {
        for row in hub.strings(&sql) {
            let (profile, rest) = row.split_once(' ').unwrap();
            out.push(format!("{what} {} {}", name(profile), canon(rest)));
        }
    }
    out.sort();
    out
}

fn one_batch_resolves_like_the_same_messages_one_by_one(db: Db) {
    let hub = Hub::start(db);
    for message in identity_story("one-") {
        ok(hub.track("batch", json!({ "batch": [message] })));
    }
    ok(hub.track("batch", json!({ "batch": identity_story("all-") })));
    let one = identity_snapshot(&hub, "one-");
    let all = identity_snapshot(&hub, "all-");
    assert_eq!(all, one, "one batch and one message at a time disagree");
    // And what they agree on is right.
    let profiles: Vec<&String> = one.iter().filter(|l| l.starts_with("profile ")).collect();
    assert_eq!(
        profiles,
        [
            "profile [anonymous_id:P-a1 anonymous_id:P-a2 anonymous_id:P-a3 email:P-ada@example.com user_id:P-u1]",
            "profile [user_id:P-u2]",
            // The alias of two user ids cannot join them (one user id per profile), and of
            // two user ids in one message only the first is kept.
            "profile [user_id:P-u3]",
        ],
        "{one:#?}"
    );
    let u1 = "[anonymous_id:P-a1 anonymous_id:P-a2 anonymous_id:P-a3 email:P-ada@example.com user_id:P-u1]";
    assert!(
        one.contains(&format!("trait {u1} plan=\"pro\"")),
        "{one:#?}"
    );
    assert!(
        one.contains(&format!("trait {u1} city=\"Paris\"")),
        "{one:#?}"
    );
    assert!(
        one.contains(&"group [user_id:P-u2] P-g1".to_string()),
        "{one:#?}"
    );
    assert_eq!(
        one.iter().filter(|l| l.starts_with("merge ")).count(),
        1,
        "{one:#?}"
    );
    assert_eq!(
        one.iter().filter(|l| l.starts_with("event ")).count(),
        11,
        "{one:#?}"
    );
}
