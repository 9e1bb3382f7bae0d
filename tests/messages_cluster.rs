//! Messages that live across two nodes on one PostgreSQL and one Redis
//! (docs/protocol.md, "Messages that live"): unread counts for a user with a
//! connection on each node through reads, deletes and a node restart; typing
//! that crosses nodes and is never stored; mention notices and offline
//! mentions; edits, deletes and reactions made on one node replayed on the
//! other exactly as `history` reads them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_contiguous, settle, short, Client, Cluster, TestNode};
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

fn seq(f: &Value) -> i64 {
    f["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {f}"))
}

/// A connection on node `i` of `cluster` that speaks for `user` from the
/// handshake on.
async fn client_as(cluster: &Cluster, i: usize, user: &str) -> Client {
    let c = Client::connect(&format!("{}?user_id={user}", cluster.node(i).ws_url())).await;
    assert_eq!(c.hello["user_id"], user, "{}", c.hello);
    c
}

/// Checks that `c` gets nothing: a ping is answered first, and nothing
/// follows for 700 ms (time for a peer's frame to cross the bus).
async fn quiet(c: &mut Client, why: &str) {
    let mut frames = c.cmd(json!({"type":"ping"})).await;
    frames.pop();
    while let Some(f) = c.try_recv(Duration::from_millis(700)).await {
        frames.push(f);
    }
    assert!(frames.is_empty(), "{why}: got {frames:?}");
}

/// Whether `f` is an event of `room` (not a reply, notice or ephemeral frame).
fn is_event_of(f: &Value, room: &str) -> bool {
    f["room"] == room
        && f["seq"].is_i64()
        && !matches!(
            f["type"].as_str(),
            Some("ack" | "error" | "notice" | "history" | "members" | "read" | "typing")
        )
}

/// Reads `c` until the event of `room` at `last`; returns the events.
async fn events_to(c: &mut Client, room: &str, last: i64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = c.recv().await;
        if is_event_of(&f, room) {
            let s = seq(&f);
            out.push(f);
            if s >= last {
                assert_eq!(s, last, "{out:?}");
                return out;
            }
        }
    }
}

/// Reads `c` until a frame of `kind` arrives (within 10 s); returns it and
/// checks that only events came before it.
async fn next_of(c: &mut Client, kind: &str) -> Value {
    let mut seen = Vec::new();
    loop {
        match c.try_recv(Duration::from_secs(10)).await {
            Some(f) if f["type"] == kind => return f,
            Some(f) => {
                assert!(
                    f["seq"].is_i64() && f["type"] != "notice",
                    "before a {kind} frame: {f}"
                );
                seen.push(f)
            }
            None => panic!("no {kind} frame within 10 s; frames: {seen:?}"),
        }
    }
}

/// A `read` frame: `{"type":"read","room","seq"}` (docs/protocol.md); a
/// `user_id` beside them, if the server adds one, must be the user's own.
fn assert_read_frame(f: &Value, room: &str, at: i64, user: &str) {
    let mut f = f.clone();
    if let Some(u) = f.as_object_mut().and_then(|o| o.remove("user_id")) {
        assert_eq!(u, user, "a read frame names only the reader: {f}");
    }
    assert_eq!(f, json!({"type":"read","room":room,"seq":at}));
}

/// The events of `room` with `seq > since` (up to 1000).
async fn history(c: &mut Client, room: &str, since: i64) -> Vec<Value> {
    let page = c
        .reply(json!({"type":"history","room":room,"since":since,"limit":1000}))
        .await;
    assert_eq!(page["type"], "history", "{page}");
    page["events"].as_array().expect("events").clone()
}

/// (`unread`, `mentions_unread`) of `room` in the user's `rooms` reply.
async fn unread(c: &mut Client, room: &str) -> (Value, Value) {
    let r = c.reply(json!({"type":"rooms"})).await;
    let e = r["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("not a rooms reply: {r}"))
        .iter()
        .find(|e| e["name"] == room)
        .cloned()
        .unwrap_or_else(|| panic!("no {room} in {r}"));
    (e["unread"].clone(), e["mentions_unread"].clone())
}

fn counts(unread: i64, mentions: i64) -> (Value, Value) {
    (json!(unread), json!(mentions))
}

/// The room's `last_seq` in the user's `rooms` reply.
async fn last_seq(c: &mut Client, room: &str) -> Value {
    let r = c.reply(json!({"type":"rooms"})).await;
    r["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == room)
        .map(|e| e["last_seq"].clone())
        .unwrap_or_else(|| panic!("no {room} in {r}"))
}

/// SIGTERM to node `i`, then a new process on the same store, settings and
/// `NODE_ID`.
async fn restart(cluster: &mut Cluster, i: usize) {
    let mut old = cluster.nodes[i].take().expect("node is running");
    assert!(old.terminate().success(), "node {i} stops cleanly");
    let fresh = TestNode::spawn(old.store.clone(), old.env.clone()).await;
    cluster.nodes[i] = Some(fresh);
}

/// The log as it should read now, from the events as they were sent live
/// (see tests/messages.rs): each `message` event gets its message's current
/// state, and a deleted message's `edit` events lose their text.
fn fold(live: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = live.to_vec();
    let pos: BTreeMap<i64, usize> = out
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "message")
        .map(|(i, e)| (seq(e), i))
        .collect();
    let mut reactions: BTreeMap<i64, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    let mut deleted: Vec<i64> = Vec::new();
    for ev in live {
        let kind = ev["type"].as_str().unwrap();
        if !matches!(kind, "edit" | "delete" | "react" | "unreact") {
            continue;
        }
        let target = ev["target"].as_i64().expect("a numeric target");
        let m = out[pos[&target]].as_object_mut().unwrap();
        m.insert("state_seq".into(), ev["seq"].clone());
        match kind {
            "edit" => {
                m.insert("message".into(), ev["message"].clone());
                let n = m.get("edited").and_then(Value::as_i64).unwrap_or(0);
                m.insert("edited".into(), json!(n + 1));
            }
            "delete" => {
                m.remove("message");
                m.insert("deleted".into(), json!(true));
                m.insert("deleted_by".into(), ev["user_id"].clone());
                deleted.push(target);
            }
            "react" => reactions
                .entry(target)
                .or_default()
                .entry(ev["emoji"].as_str().unwrap().to_string())
                .or_default()
                .push(ev["user_id"].clone()),
            _ => {
                let per = reactions.entry(target).or_default();
                let emoji = ev["emoji"].as_str().unwrap();
                let users = per.get_mut(emoji).expect("an unreact of a reaction");
                users.retain(|u| *u != ev["user_id"]);
                if users.is_empty() {
                    per.remove(emoji);
                }
            }
        }
    }
    for (target, per) in reactions {
        if per.is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, Value> = per
            .into_iter()
            .map(|(emoji, users)| {
                let first: Vec<Value> = users.iter().take(20).cloned().collect();
                (emoji, json!({"count": users.len(), "users": first}))
            })
            .collect();
        out[pos[&target]]["reactions"] = Value::Object(obj);
    }
    for ev in &mut out {
        if ev["type"] == "edit" && deleted.contains(&ev["target"].as_i64().unwrap()) {
            ev.as_object_mut().unwrap().remove("message");
        }
    }
    out
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_agree_on_both_nodes_through_reads_deletes_and_a_restart() {
    let mut cluster = Cluster::start(2).await;
    let mut alice = client_as(&cluster, 0, "alice").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    let mut bob0 = client_as(&cluster, 0, "bob").await;
    bob0.ok(json!({"type":"join","room":"r"})).await; // 2
    let mut bob1 = client_as(&cluster, 1, "bob").await;
    bob1.ok(json!({"type":"join","room":"r"})).await; // a member already: subscribes only
    let mention =
        |text: &str| json!({"type":"message","room":"r","message":text,"mentions":["bob"]});
    alice.ok(mention("m3 @bob")).await; // 3
    alice
        .ok(json!({"type":"message","room":"r","message":"m4"}))
        .await; // 4
    let m5 = seq(&alice.ok(mention("m5 @bob")).await); // 5
    alice
        .ok(json!({"type":"message","room":"r","message":"m6"}))
        .await; // 6
    events_to(&mut bob1, "r", 6).await;
    events_to(&mut bob0, "r", 6).await;
    assert_eq!(unread(&mut bob0, "r").await, counts(4, 2));
    assert_eq!(unread(&mut bob1, "r").await, counts(4, 2));
    assert_eq!(unread(&mut alice, "r").await, counts(0, 0));

    // A read on node 0 reaches bob's connection on node 1.
    let ack = bob0.ok(json!({"type":"read","room":"r","seq":4})).await;
    assert_eq!(
        short(&ack),
        json!({"type":"ack","command":"read","room":"r","seq":4})
    );
    assert_read_frame(&next_of(&mut bob1, "read").await, "r", 4, "bob");
    assert_eq!(unread(&mut bob1, "r").await, counts(2, 1));
    assert_eq!(unread(&mut bob0, "r").await, counts(2, 1));
    quiet(&mut alice, "nobody else is told of bob's read").await;

    // A delete on node 0 lowers the count on node 1.
    alice.ok(json!({"type":"delete","room":"r","seq":m5})).await; // 7
    events_to(&mut bob1, "r", 7).await;
    assert_eq!(unread(&mut bob1, "r").await, counts(1, 0));
    assert_eq!(unread(&mut bob0, "r").await, counts(1, 0));
    alice.ok(mention("m8 @bob")).await; // 8
    events_to(&mut bob1, "r", 8).await;
    assert_eq!(unread(&mut bob1, "r").await, counts(2, 1));

    // A read on node 1 reaches node 0.
    settle(&mut bob0).await;
    bob1.ok(json!({"type":"read","room":"r","seq":6})).await;
    assert_read_frame(&next_of(&mut bob0, "read").await, "r", 6, "bob");
    assert_eq!(unread(&mut bob0, "r").await, counts(1, 1));
    let frames = bob0.cmd(json!({"type":"read","room":"r","seq":5})).await;
    assert_eq!(
        short(frames.last().unwrap()),
        json!({"type":"ack","command":"read","room":"r","seq":6,"unchanged":true}),
        "node 0 knows the marker node 1 moved"
    );

    // Node 1 restarts: the counts are the same there.
    drop(bob1);
    restart(&mut cluster, 1).await;
    let mut bob1 = client_as(&cluster, 1, "bob").await;
    assert_eq!(
        unread(&mut bob1, "r").await,
        counts(1, 1),
        "after node 1 restarted"
    );
    let mut alice1 = client_as(&cluster, 1, "alice").await;
    assert_eq!(unread(&mut alice1, "r").await, counts(0, 0));
    let members = alice1.reply(json!({"type":"members","room":"r"})).await;
    let bob = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == "bob")
        .cloned()
        .unwrap_or_else(|| panic!("{members}"));
    assert_eq!(bob["read_seq"], 6, "{members}");

    bob1.ok(json!({"type":"join","room":"r"})).await;
    alice.ok(mention("m9 @bob")).await; // 9
    events_to(&mut bob1, "r", 9).await;
    assert_eq!(unread(&mut bob1, "r").await, counts(2, 2));
    settle(&mut bob0).await;
    bob1.ok(json!({"type":"read","room":"r","seq":9})).await;
    assert_read_frame(&next_of(&mut bob0, "read").await, "r", 9, "bob");
    assert_eq!(unread(&mut bob0, "r").await, counts(0, 0));
    assert_eq!(unread(&mut bob1, "r").await, counts(0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_nodes_and_is_never_stored() {
    let cluster = Cluster::start(2).await;
    let mut alice0 = client_as(&cluster, 0, "alice").await;
    alice0.ok(json!({"type":"create","room":"r"})).await; // 1
    let mut alice1 = client_as(&cluster, 1, "alice").await;
    alice1.ok(json!({"type":"join","room":"r"})).await;
    let mut bob1 = client_as(&cluster, 1, "bob").await;
    bob1.ok(json!({"type":"join","room":"r"})).await; // 2
    let mut carol0 = client_as(&cluster, 0, "carol").await;
    carol0.ok(json!({"type":"join","room":"r"})).await; // 3
    alice0
        .ok(json!({"type":"message","room":"r","message":"hi"}))
        .await; // 4: alice0 has had 1..=4 with its ack
    for c in [&mut alice1, &mut bob1, &mut carol0] {
        events_to(c, "r", 4).await;
    }

    let typing = |on: bool| json!({"type":"typing","room":"r","typing":on});
    let frames = alice0.cmd(typing(true)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"ack","command":"typing","room":"r"})
    );
    let from_alice =
        json!({"type":"typing","room":"r","user_id":"alice","typing":true,"ttl_ms":6000});
    assert_eq!(bob1.recv().await, from_alice, "on the other node");
    assert_eq!(carol0.recv().await, from_alice, "on the same node");

    // A second true within 2 s is not forwarded; a false is.
    alice0.ok(typing(true)).await;
    alice0.ok(typing(false)).await;
    for (name, c) in [("bob1", &mut bob1), ("carol0", &mut carol0)] {
        let f = c.recv().await;
        assert_eq!(
            (&f["type"], &f["room"], &f["user_id"], &f["typing"]),
            (
                &json!("typing"),
                &json!("r"),
                &json!("alice"),
                &json!(false)
            ),
            "{name}: the false comes next: {f}"
        );
        assert!(f.get("seq").is_none(), "{f}");
    }
    quiet(&mut alice1, "the sender's user gets no typing, on no node").await;
    quiet(&mut alice0, "the sender gets no typing").await;

    let from_bob = json!({"type":"typing","room":"r","user_id":"bob","typing":true,"ttl_ms":6000});
    bob1.ok(typing(true)).await;
    assert_eq!(alice0.recv().await, from_bob);
    assert_eq!(alice1.recv().await, from_bob);
    assert_eq!(carol0.recv().await, from_bob);
    quiet(&mut bob1, "the sender gets no typing").await;

    // Nothing stored: every node reads 1..=4, and a replay has no typing.
    for c in [&mut alice0, &mut bob1] {
        let page = history(c, "r", 0).await;
        assert_contiguous(&page, 1, 4);
        assert!(page.iter().all(|e| e["type"] != "typing"), "{page:?}");
        assert_eq!(last_seq(c, "r").await, 4);
    }
    let mut dave = client_as(&cluster, 1, "dave").await;
    let frames = dave.cmd(json!({"type":"join","room":"r","since":0})).await;
    assert!(frames.iter().all(|f| f["type"] != "typing"), "{frames:?}");
    assert_eq!(frames.len(), 6, "1..=4, dave's join, the ack: {frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mention_notices_cross_nodes_and_an_offline_mention_counts_after_reconnect() {
    let cluster = Cluster::start(2).await;
    let mut alice = client_as(&cluster, 0, "alice").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    {
        let mut bob = client_as(&cluster, 1, "bob").await;
        bob.ok(json!({"type":"join","room":"r"})).await; // 2
        bob.close().await; // offline from here
    }
    let mut carol_sub = client_as(&cluster, 0, "carol").await;
    carol_sub.ok(json!({"type":"join","room":"r"})).await; // 3
    let mut carol_free = client_as(&cluster, 1, "carol").await; // not subscribed
    settle(&mut alice).await;
    settle(&mut carol_free).await;

    let frames = alice
        .cmd(
            json!({"type":"message","room":"r","message":"@bob @carol @zed",
                    "mentions":["bob","carol","zed"]}),
        )
        .await;
    let ack = frames.last().unwrap().clone();
    assert_eq!(ack["type"], "ack", "{frames:?}");
    assert_eq!(ack["dropped_mentions"], json!(["zed"]), "{ack}");
    let ev = frames[0].clone();
    let mut kept: Vec<&str> = ev["mentions"]
        .as_array()
        .unwrap_or_else(|| panic!("no mentions: {ev}"))
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["bob", "carol"], "{ev}");

    assert_eq!(
        next_of(&mut carol_free, "notice").await,
        json!({"type":"notice","kind":"mention","room":"r","seq":4,"by":"alice"}),
        "carol's unsubscribed connection on the other node"
    );
    assert_eq!(carol_sub.recv().await, ev);
    quiet(&mut carol_sub, "a subscribed connection gets no notice").await;
    quiet(&mut carol_free, "one notice").await;

    for i in [1, 0] {
        let mut bob = client_as(&cluster, i, "bob").await;
        assert_eq!(
            unread(&mut bob, "r").await,
            counts(1, 1),
            "bob, back on node {i}"
        );
    }
    assert_eq!(unread(&mut carol_free, "r").await, counts(1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_both_nodes_replay_on_either_exactly_as_history_reads_them() {
    let cluster = Cluster::start(2).await;
    let mut alice = client_as(&cluster, 0, "alice").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    let mut bob = client_as(&cluster, 1, "bob").await;
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    let mut w = client_as(&cluster, 1, "w").await; // watches, on node 1
    w.ok(json!({"type":"join","room":"r"})).await; // 3
    let mut carol = client_as(&cluster, 0, "carol").await;
    carol.ok(json!({"type":"join","room":"r"})).await; // 4

    let a = seq(&alice
        .ok(json!({"type":"message","room":"r","message":"hello"}))
        .await); // 5
    let b = seq(&bob
        .ok(json!({"type":"message","room":"r","message":"hi","reply_to":a,"mentions":["alice"]}))
        .await); // 6
    bob.ok(json!({"type":"edit","room":"r","seq":b,"message":"hi!"}))
        .await; // 7
    carol
        .ok(json!({"type":"react","room":"r","seq":a,"emoji":"👍"}))
        .await; // 8
    bob.ok(json!({"type":"react","room":"r","seq":a,"emoji":"👍"}))
        .await; // 9
    let c = seq(&alice
        .ok(json!({"type":"message","room":"r","message":"doomed"}))
        .await); // 10
    alice
        .ok(json!({"type":"edit","room":"r","seq":c,"message":"doomed v2"}))
        .await; // 11
                // Refusals decided on the other node than the author's.
    bob.err(
        json!({"type":"edit","room":"r","seq":c,"message":"x"}),
        "not_author",
    )
    .await;
    carol
        .err(json!({"type":"delete","room":"r","seq":b}), "forbidden")
        .await;
    alice.ok(json!({"type":"delete","room":"r","seq":c})).await; // 12
    bob.err(
        json!({"type":"react","room":"r","seq":c,"emoji":"👍"}),
        "no_such_event",
    )
    .await;
    bob.err(
        json!({"type":"unreact","room":"r","seq":a,"emoji":"🎉"}),
        "no_such_reaction",
    )
    .await;
    bob.ok(json!({"type":"unreact","room":"r","seq":a,"emoji":"👍"}))
        .await; // 13
    alice.ok(json!({"type":"delete","room":"r","seq":b})).await; // 14 (the owner deletes bob's)
    let last = 14;

    let live = events_to(&mut w, "r", last).await;
    assert_contiguous(&live, 4, last);
    let expected = fold(&live);
    assert_eq!(history(&mut w, "r", 3).await, expected, "node 1's history");
    assert_eq!(
        history(&mut alice, "r", 3).await,
        expected,
        "node 0's history"
    );
    let msg = &expected[(b - 4) as usize];
    assert_eq!(
        (
            &msg["edited"],
            &msg["deleted_by"],
            &msg["state_seq"],
            &msg["reply_to"]
        ),
        (&json!(1), &json!("alice"), &json!(14), &json!(5)),
        "{msg}"
    );
    let msg = &expected[(a - 4) as usize];
    assert_eq!(
        msg["reactions"],
        json!({"👍":{"count":1,"users":["carol"]}})
    );

    for i in [0, 1] {
        let mut dave = client_as(&cluster, i, "dave").await;
        if i == 0 {
            dave.ok(json!({"type":"join","room":"r"})).await; // 15
        }
        let mut frames = dave.cmd(json!({"type":"join","room":"r","since":6})).await;
        let ack = frames.pop().unwrap();
        assert_eq!(ack["recovered"], true, "{ack}");
        assert_eq!(ack["seq"], 15, "{ack}");
        let page = history(&mut dave, "r", 6).await;
        assert_eq!(
            frames, page,
            "node {i}: the replay is the log, JSON-equal to history"
        );
        assert_eq!(frames[..(last - 6) as usize], expected[(7 - 4) as usize..]);
    }
}
