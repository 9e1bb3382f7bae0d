//! Ordering under concurrency, resume while busy, restarts, crashes, and the
//! fold of the log: the invariants 1-4 and 6 of docs/architecture.md on one node, both stores.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::{Backend, Client, TestNode};
use serde_json::{json, Value};

on_both_stores!(
    concurrent_posters_give_every_member_one_gap_free_order,
    join_with_since_while_busy_hands_over_without_gap_or_duplicate,
    restart_keeps_rooms_members_and_history,
    kill_9_loses_no_acked_event_and_seq_continues,
    folding_the_log_gives_the_stored_rooms_and_members,
    sigterm_closes_sockets_with_1001,
);

/// Reads frames until `n` events of `room` have arrived; returns their seqs
/// and messages in arrival order (acks and other replies are skipped).
async fn collect_events(c: &mut Client, room: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let f = c.recv().await;
        if f["room"] == room && f["seq"].is_i64() && f["type"] != "ack" {
            out.push(f);
        }
    }
    out
}

async fn concurrent_posters_give_every_member_one_gap_free_order(b: Backend) {
    const POSTERS: usize = 5;
    const EACH: usize = 60;
    let node = TestNode::start(b).await;
    let mut owner = node.client().await;
    owner
        .ok(json!({"user_id":"owner","type":"create","room":"busy"}))
        .await;
    let mut posters = Vec::new();
    for i in 0..POSTERS {
        let mut c = node.client().await;
        c.ok(json!({"user_id":format!("p{i}"),"type":"join","room":"busy"}))
            .await;
        posters.push(c);
    }
    // seqs 1 (create) ..= 1 + POSTERS (joins); the owner saw the joins.
    collect_events(&mut owner, "busy", POSTERS).await;
    let base = 1 + POSTERS as i64;

    // Every poster sends without waiting for acks, all at once.
    let tasks: Vec<_> = posters
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                for k in 0..EACH {
                    c.send(json!({"type":"message","room":"busy","message":format!("{i}:{k}"),"ref":k}))
                        .await;
                }
                let mut events = Vec::new();
                let mut acks = 0;
                // Its own joins-after-it are not counted: only messages.
                while acks < EACH || events.len() < POSTERS * EACH {
                    let f = c.recv().await;
                    match f["type"].as_str() {
                        Some("ack") => acks += 1,
                        Some("message") => events.push(f),
                        Some("join") => {}
                        _ => panic!("unexpected frame {f}"),
                    }
                }
                events
            })
        })
        .collect();
    let total = POSTERS * EACH;
    let owner_view = collect_events(&mut owner, "busy", total).await;
    let owner_seqs: Vec<i64> = owner_view
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        owner_seqs,
        ((base + 1)..=(base + total as i64)).collect::<Vec<_>>()
    );
    for t in tasks {
        let view = t.await.expect("poster task");
        let seqs: Vec<i64> = view.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, owner_seqs, "every member sees the same order");
        // Each poster's own messages keep their sending order.
        let mut last: HashMap<String, i64> = HashMap::new();
        for e in &view {
            let (who, k) = e["message"].as_str().unwrap().split_once(':').unwrap();
            let k: i64 = k.parse().unwrap();
            let prev = last.insert(who.to_string(), k);
            assert!(prev.is_none_or(|p| p < k), "per-sender order broken at {e}");
        }
    }
    // The store holds exactly 1..=N for the room and rooms.last_seq matches.
    let store = node.store.open().await;
    let all = store.all_events().await.unwrap();
    let seqs: Vec<i64> = all
        .iter()
        .filter(|e| e.room.as_str() == "busy")
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=base + total as i64).collect::<Vec<_>>());
    let snap = store.snapshot().await.unwrap();
    assert_eq!(snap.rooms.len(), 1);
    assert_eq!(snap.rooms[0].1.last_seq, base + total as i64);
}

async fn join_with_since_while_busy_hands_over_without_gap_or_duplicate(b: Backend) {
    let node = TestNode::start(b).await;
    let mut poster = node.client().await;
    poster
        .ok(json!({"user_id":"p","type":"create","room":"r"}))
        .await;
    let mut reader = node.client().await;
    reader
        .ok(json!({"user_id":"q","type":"join","room":"r"}))
        .await;
    // seq 1 create, 2 join. The poster streams 400 messages without waiting.
    let send = tokio::spawn(async move {
        for k in 0..400 {
            poster
                .send(json!({"type":"message","room":"r","message":format!("m{k}")}))
                .await;
            if k % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        poster
    });
    // The reader sees some, drops, and resumes from what it saw, mid-stream.
    let seen = collect_events(&mut reader, "r", 40).await;
    let last_seen = seen.last().unwrap()["seq"].as_i64().unwrap();
    reader.close().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut back = node.client().await;
    back.send(json!({"user_id":"q","type":"join","room":"r","since":last_seen,"ref":"j"}))
        .await;
    let mut seqs = Vec::new();
    let mut acked = None;
    while acked.is_none() || seqs.last().copied().unwrap_or(last_seen) < 402 {
        let f = back.recv().await;
        if f["type"] == "ack" {
            assert_eq!(f["recovered"], true, "{f}");
            assert_eq!(
                f["seq"],
                seqs.last().copied().unwrap_or(last_seen),
                "ack seq = last given"
            );
            acked = Some(f);
        } else {
            seqs.push(f["seq"].as_i64().unwrap());
        }
    }
    assert!(acked.is_some(), "the join is acked");
    assert_eq!(seqs, ((last_seen + 1)..=402).collect::<Vec<_>>());
    send.await.unwrap();
}

async fn restart_keeps_rooms_members_and_history(b: Backend) {
    let mut node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"keep"}))
        .await;
    let mut c = node.client().await;
    c.ok(json!({"user_id":"c","type":"join","room":"keep"}))
        .await;
    a.ok(json!({"type":"message","room":"keep","message":"before restart"}))
        .await;
    let epoch = a.hello["epoch"].clone();
    let rooms_before = a.reply(json!({"type":"rooms"})).await["rooms"].clone();
    drop((a, c));
    assert!(node.terminate().success());

    let node2 = node.restart().await;
    let mut a = node2.client().await;
    assert_eq!(a.hello["epoch"], epoch, "same store, same epoch");
    assert_eq!(
        a.reply(json!({"user_id":"a","type":"rooms"})).await["rooms"],
        rooms_before
    );
    let members = a.reply(json!({"type":"members","room":"keep"})).await;
    let ids: BTreeSet<String> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, BTreeSet::from(["a".to_string(), "c".to_string()]));
    let page = a
        .reply(json!({"user_id":"a","type":"history","room":"keep"}))
        .await;
    assert_eq!(page["events"][2]["message"], "before restart");
    let ack = a
        .ok(json!({"type":"message","room":"keep","message":"after"}))
        .await;
    assert_eq!(ack["seq"], 4, "seq continues");
}

async fn kill_9_loses_no_acked_event_and_seq_continues(b: Backend) {
    let mut node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"crash"}))
        .await;
    // Stream messages, collect acks, kill -9 mid-stream.
    a.send_numbered("crash", 300).await;
    let mut acked: BTreeMap<i64, String> = BTreeMap::new();
    while acked.len() < 100 {
        let f = a.recv().await;
        if f["type"] == "ack" {
            acked.insert(f["seq"].as_i64().unwrap(), format!("m{}", f["ref"]));
        }
    }
    node.kill9();
    // Whatever else arrived before the socket died counts as acked too.
    let mut ws = a.into_inner();
    use futures_util::StreamExt;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        if let Ok(text) = msg.to_text() {
            if let Ok(f) = serde_json::from_str::<Value>(text) {
                if f["type"] == "ack" {
                    acked.insert(f["seq"].as_i64().unwrap(), format!("m{}", f["ref"]));
                }
            }
        }
    }

    let node2 = node.restart().await;
    let store = node2.store.open().await;
    let stored: HashMap<i64, String> = store
        .all_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.room.as_str() == "crash")
        .map(|e| (e.seq, e.message.unwrap_or_default()))
        .collect();
    for (seq, msg) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(msg),
            "acked event {seq} must be stored"
        );
    }
    let max = *stored.keys().max().unwrap();
    assert_eq!(
        stored.len() as i64,
        max,
        "stored seqs are 1..=max with no gap"
    );
    let mut a = node2.client().await;
    let ack = a
        .ok(json!({"user_id":"a","type":"message","room":"crash","message":"after"}))
        .await;
    assert_eq!(ack["seq"], max + 1, "seq continues after the crash");
}

async fn folding_the_log_gives_the_stored_rooms_and_members(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    let mut u = node.client().await;
    let mut v = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"one"}))
        .await;
    a.ok(json!({"type":"create","room":"two"})).await;
    a.ok(json!({"type":"create","room":"three","private":true}))
        .await;
    u.ok(json!({"user_id":"u","type":"join","room":"one"}))
        .await;
    u.ok(json!({"type":"join","room":"two"})).await;
    u.ok(json!({"type":"message","room":"one","message":"x"}))
        .await;
    u.ok(json!({"type":"leave","room":"one"})).await;
    u.ok(json!({"type":"join","room":"one"})).await;
    v.ok(json!({"user_id":"v","type":"join","room":"two"}))
        .await;
    a.ok(json!({"type":"set_role","room":"two","user":"v","role":"admin"}))
        .await;
    // The owner leaves: the admin inherits room two, though u joined first.
    a.ok(json!({"type":"leave","room":"two"})).await;
    u.ok(json!({"type":"message","room":"two","message":"y"}))
        .await;
    a.ok(json!({"type":"invite","room":"three","user":"u"}))
        .await;
    a.ok(json!({"type":"invite","room":"three","user":"v"}))
        .await;
    u.ok(json!({"type":"join","room":"three"})).await;
    a.ok(json!({"type":"kick","room":"three","user":"u"})).await;
    v.ok(json!({"user_id":"v","type":"join","room":"one"}))
        .await;
    a.ok(json!({"type":"ban","room":"one","user":"v","reason":"r"}))
        .await;
    a.ok(json!({"type":"set_role","room":"one","user":"u","role":"owner"}))
        .await;

    let store = node.store.open().await;
    let mut rooms: BTreeMap<String, i64> = BTreeMap::new();
    // room -> user -> role, as the rules of docs/protocol.md fold the log.
    let mut members: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut invited: BTreeSet<(String, String)> = BTreeSet::new();
    for e in store.all_events().await.unwrap() {
        let room = e.room.to_string();
        let user = e.user_id.to_string();
        let target = e.target.as_ref().map(|t| t.to_string()).unwrap_or_default();
        let last = rooms.entry(room.clone()).or_insert(0);
        assert_eq!(e.seq, *last + 1, "the log is gap-free per room");
        *last = e.seq;
        let m = members.entry(room.clone()).or_default();
        match e.kind.as_str() {
            "create" => {
                m.insert(user, "owner".into());
            }
            "join" => {
                let role = if m.is_empty() { "owner" } else { "member" };
                m.insert(user.clone(), role.into());
                invited.remove(&(room, user));
            }
            "leave" => {
                m.remove(&user);
            }
            "invite" => {
                invited.insert((room, target));
            }
            "uninvite" => {
                invited.remove(&(room, target));
            }
            "kick" | "ban" => {
                m.remove(&target);
                invited.remove(&(room, target));
            }
            "role" => {
                let role = e.role.expect("a role event names the role").as_str();
                if role == "owner" {
                    for r in m.values_mut().filter(|r| *r == "owner") {
                        *r = "admin".into();
                    }
                }
                m.insert(target, role.into());
            }
            _ => {}
        }
    }
    members.retain(|_, m| !m.is_empty());
    let snap = store.snapshot().await.unwrap();
    let stored_rooms: BTreeMap<String, i64> = snap
        .rooms
        .iter()
        .map(|(r, row)| (r.to_string(), row.last_seq))
        .collect();
    let mut stored_members: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (r, u, role) in &snap.members {
        stored_members
            .entry(r.to_string())
            .or_default()
            .insert(u.to_string(), role.as_str().to_string());
    }
    let stored_invited: BTreeSet<(String, String)> = snap
        .invites
        .iter()
        .map(|(r, u)| (r.to_string(), u.to_string()))
        .collect();
    assert_eq!(rooms, stored_rooms);
    assert_eq!(members, stored_members);
    assert_eq!(invited, stored_invited);
    // Each room's owner column agrees with its members' roles.
    for (name, row) in &snap.rooms {
        let owner = members.get(name.as_str()).and_then(|m| {
            m.iter()
                .find(|(_, r)| *r == "owner")
                .map(|(u, _)| u.clone())
        });
        assert_eq!(
            row.owner.as_ref().map(|o| o.to_string()),
            owner,
            "owner of {name}"
        );
    }
    assert_eq!(members["two"]["v"], "owner");
    assert_eq!(members["one"]["u"], "owner");
    assert_eq!(members["one"]["a"], "admin");
    assert!(!members["one"].contains_key("v"));
    assert_eq!(
        invited,
        BTreeSet::from([("three".to_string(), "v".to_string())])
    );
}

async fn sigterm_closes_sockets_with_1001(b: Backend) {
    let mut node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    let watcher = tokio::spawn(async move { a.closed().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(node.terminate().success(), "a clean exit after SIGTERM");
    assert_eq!(watcher.await.unwrap(), Some(1001));
}

/// A PostgreSQL database whose migrations the pre-refinery runner recorded
/// in `schema_migrations` is adopted: the node starts, keeps the epoch and
/// the rows, and runs nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_the_earlier_runner_is_adopted() {
    let store = common::StoreEnv::new(Backend::Postgres).await;
    let url = store.vars[0].1.clone();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    db.batch_execute(include_str!("../sql/0001_init.sql"))
        .await
        .unwrap();
    db.batch_execute(
        "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,
                                         applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO schema_migrations (version, name) VALUES (1, '0001_init');
         INSERT INTO rooms (name, created_by, created_at, last_seq) VALUES ('old', 'u', now(), 0);",
    )
    .await
    .unwrap();
    let epoch: String = db
        .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])
        .await
        .unwrap()
        .get(0);
    let node = TestNode::spawn(store, Vec::new()).await;
    let c = node.client().await;
    assert_eq!(
        c.hello["epoch"],
        epoch.as_str(),
        "the same store, not a new one"
    );
    let (status, body) = node.http("GET", "/rooms", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"old\""), "{body}");
    let recorded: i64 = db
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        recorded, 3,
        "migration 1 adopted, migrations 2 and 3 applied"
    );
}
