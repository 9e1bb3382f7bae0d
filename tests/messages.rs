//! Messages that live: replies, edits, deletes, reactions, mentions, typing,
//! read markers and unread counts (docs/protocol.md, "Messages that live"),
//! over real sockets and the REST API, on both stores, and what a delete
//! leaves in the database.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{assert_contiguous, settle, short, user, Backend, Client, TestNode};
use serde_json::{json, Value};

on_both_stores!(
    replies_point_at_messages_of_the_same_room,
    only_the_author_edits_and_the_message_counts_its_edits,
    the_author_the_owner_or_an_admin_deletes_a_message_once,
    reactions_count_each_user_once_per_emoji,
    reactions_name_the_first_20_users,
    emoji_are_1_to_32_characters_and_a_zwj_sequence_is_one,
    client_msg_id_retries_of_changes_ack_the_original,
    typing_is_acked_reaches_the_other_users_and_is_never_stored,
    read_markers_move_forward_and_tell_the_users_other_connections,
    unread_counts_skip_own_and_deleted_messages_and_survive_a_restart,
    mentions_are_kept_for_members_notified_and_counted,
    resume_and_history_give_the_log_with_each_messages_current_state,
    rest_routes_answer_like_the_commands,
    a_deleted_messages_text_is_in_no_row_of_the_database,
    a_private_room_answers_an_outsider_no_such_room_and_an_invitee_not_a_member,
);

// ---------------------------------------------------------------- helpers

/// Checks that `c` has been sent nothing: a ping is answered first, and
/// nothing follows for 300 ms.
async fn quiet(c: &mut Client, why: &str) {
    let mut frames = c.cmd(json!({"type":"ping"})).await;
    frames.pop();
    frames.extend(settle(c).await);
    assert!(frames.is_empty(), "{why}: got {frames:?}");
}

fn seq(f: &Value) -> i64 {
    f["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {f}"))
}

/// Posts `text` into `room`; returns its seq.
async fn post(c: &mut Client, room: &str, text: &str) -> i64 {
    seq(&c
        .ok(json!({"type":"message","room":room,"message":text}))
        .await)
}

/// A command that appends one event: the caller's (subscribed, drained)
/// connection gets exactly that event, then the ack with the same seq and
/// id. Returns the event and the ack.
async fn change(c: &mut Client, cmd: Value) -> (Value, Value) {
    let frames = c.cmd(cmd.clone()).await;
    assert_eq!(
        frames.len(),
        2,
        "{cmd}: the event, then the ack: {frames:?}"
    );
    let (ev, ack) = (frames[0].clone(), frames[1].clone());
    assert_eq!(ack["type"], "ack", "{cmd}: {ack}");
    assert_eq!(ack["command"], cmd["type"], "{cmd}: {ack}");
    assert_eq!(ack["room"], cmd["room"], "{cmd}: {ack}");
    assert_eq!(ev["type"], cmd["type"], "{cmd}: {ev}");
    assert_eq!(ack["seq"], ev["seq"], "{cmd}: {ev} {ack}");
    assert_eq!(ack["id"], ev["id"], "{cmd}: {ev} {ack}");
    assert!(ack.get("duplicate").is_none(), "{cmd}: {ack}");
    (ev, ack)
}

/// A command that must be acked `"duplicate":true` for the event at
/// `original` and append nothing (the connection gets the ack alone).
async fn duplicate(c: &mut Client, cmd: Value, original: i64) -> Value {
    let frames = c.cmd(cmd.clone()).await;
    assert_eq!(frames.len(), 1, "{cmd}: no event, only the ack: {frames:?}");
    let ack = frames[0].clone();
    assert_eq!(ack["type"], "ack", "{cmd}: {ack}");
    assert_eq!(ack["command"], cmd["type"], "{cmd}: {ack}");
    assert_eq!(ack["duplicate"], true, "{cmd}: {ack}");
    assert_eq!(ack["seq"], original, "{cmd} acks the original: {ack}");
    ack
}

/// The events of `room` with `seq > since` (up to 1000).
async fn history(c: &mut Client, room: &str, since: i64) -> Vec<Value> {
    let page = c
        .reply(json!({"type":"history","room":room,"since":since,"limit":1000}))
        .await;
    assert_eq!(page["type"], "history", "{page}");
    page["events"].as_array().expect("events").clone()
}

/// The event at `at` as `history` serves it now.
async fn event_at(c: &mut Client, room: &str, at: i64) -> Value {
    let page = c
        .reply(json!({"type":"history","room":room,"since":at - 1,"limit":1}))
        .await;
    let ev = page["events"][0].clone();
    assert_eq!(ev["seq"], at, "{page}");
    ev
}

/// The entry of `room` in the user's `rooms` reply.
async fn room_entry(c: &mut Client, room: &str) -> Value {
    let r = c.reply(json!({"type":"rooms"})).await;
    assert_eq!(r["type"], "rooms", "{r}");
    r["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == room)
        .cloned()
        .unwrap_or_else(|| panic!("no {room} in {r}"))
}

/// (`unread`, `mentions_unread`) of `room` in the user's `rooms` reply.
async fn unread(c: &mut Client, room: &str) -> (Value, Value) {
    let e = room_entry(c, room).await;
    (e["unread"].clone(), e["mentions_unread"].clone())
}

fn counts(unread: i64, mentions: i64) -> (Value, Value) {
    (json!(unread), json!(mentions))
}

/// `read_seq` of each member in a `members` reply.
async fn read_seqs(c: &mut Client, room: &str) -> BTreeMap<String, Value> {
    let r = c.reply(json!({"type":"members","room":room})).await;
    assert_eq!(r["type"], "members", "{r}");
    r["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().to_string(),
                m["read_seq"].clone(),
            )
        })
        .collect()
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

fn has_none_of(ev: &Value, keys: &[&str]) {
    for k in keys {
        assert!(ev.get(*k).is_none(), "{k} should be absent: {ev}");
    }
}

/// One REST request; the status and the body as JSON.
async fn rest(node: &TestNode, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, text) = node.http(method, path, body.as_ref()).await;
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status}, body is not JSON ({e}): {text}"));
    (status, v)
}

/// A REST POST that must fail with `status` and `code`.
async fn rest_err(node: &TestNode, path: &str, body: Value, status: u16, code: &str) -> Value {
    let (s, v) = rest(node, "POST", path, Some(body.clone())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (status, Some(code)),
        "POST {path} {body}: {v}"
    );
    assert_eq!(v["type"], "error", "{v}");
    v
}

/// A REST POST that must answer 200 with an ack.
async fn rest_ok(node: &TestNode, path: &str, body: Value) -> Value {
    let (s, v) = rest(node, "POST", path, Some(body.clone())).await;
    assert_eq!(s, 200, "POST {path} {body}: {v}");
    assert_eq!(v["type"], "ack", "POST {path} {body}: {v}");
    v
}

/// Reads `c` until the event of `room` at `last`; returns the events.
async fn events_to(c: &mut Client, room: &str, last: i64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let f = c.recv().await;
        if f["room"] == room && f["seq"].is_i64() && f["type"] != "ack" && f["type"] != "notice" {
            let s = seq(&f);
            out.push(f);
            if s >= last {
                assert_eq!(s, last, "{out:?}");
                return out;
            }
        }
    }
}

/// The log as it should read now, from the events as they were sent live:
/// each `message` event gets the current state of its message (text,
/// `edited`, `deleted`, `deleted_by`, `reactions`, `state_seq`), and a
/// deleted message's `edit` events lose their text.
fn fold(live: &[Value]) -> Vec<Value> {
    let mut out: Vec<Value> = live.to_vec();
    let pos: BTreeMap<i64, usize> = out
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "message")
        .map(|(i, e)| (seq(e), i))
        .collect();
    // message seq -> emoji -> users in the order they reacted
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

// ---------------------------------------------------------------- replies

async fn replies_point_at_messages_of_the_same_room(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    let q = post(&mut alice, "r", "question").await; // 3
    settle(&mut bob).await;

    let (ev, ack) = change(
        &mut bob,
        json!({"type":"message","room":"r","message":"answer","reply_to":q}),
    )
    .await;
    assert_eq!(
        short(&ev),
        json!({"type":"message","room":"r","seq":4,"user_id":"bob","message":"answer","reply_to":3})
    );
    assert_eq!(
        short(&ack),
        json!({"type":"ack","command":"message","room":"r","seq":4})
    );
    assert_eq!(
        alice.recv().await,
        ev,
        "the other member gets the same event"
    );

    // Another room whose seqs 2..=7 are messages.
    carol.ok(json!({"type":"create","room":"other"})).await;
    for k in 0..6 {
        post(&mut carol, "other", &format!("o{k}")).await;
    }
    for (to, why) in [
        (1, "the create"),
        (2, "a join"),
        (6, "a message of another room only"),
        (99, "beyond the last"),
    ] {
        let e = bob
            .err(
                json!({"type":"message","room":"r","message":"x","reply_to":to}),
                "no_such_event",
            )
            .await;
        assert_eq!(e["room"], "r", "reply_to {to} ({why}): {e}");
    }
    for bad in [json!("3"), json!(-1), json!(1.5), json!(true)] {
        bob.err(
            json!({"type":"message","room":"r","message":"x","reply_to":bad}),
            "invalid_field",
        )
        .await;
    }
    carol
        .err(
            json!({"type":"message","room":"r","message":"x","reply_to":q}),
            "not_a_member",
        )
        .await;
    // Nothing was appended by the refusals.
    assert_eq!(room_entry(&mut bob, "r").await["last_seq"], 4);

    // A reply to a deleted message is allowed.
    settle(&mut alice).await;
    change(&mut alice, json!({"type":"delete","room":"r","seq":q})).await; // 5
    settle(&mut bob).await;
    let (ev, _) = change(
        &mut bob,
        json!({"type":"message","room":"r","message":"too late","reply_to":q}),
    )
    .await;
    assert_eq!(ev["seq"], 6);
    assert_eq!(ev["reply_to"], 3);

    let page = history(&mut bob, "r", 2).await;
    assert_eq!(page[1]["reply_to"], 3, "{page:?}");
    assert_eq!(page[1]["message"], "answer", "{page:?}");
    assert_eq!(page[3]["reply_to"], 3, "{page:?}");
    assert!(
        page[0].get("reply_to").is_none(),
        "a message that answers nothing has no reply_to: {}",
        page[0]
    );
}

// ---------------------------------------------------------------- edits

async fn only_the_author_edits_and_the_message_counts_its_edits(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await; // the owner
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await; // never a member
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    carol.ok(json!({"type":"join","room":"r"})).await; // 3
    let m = post(&mut bob, "r", "v1").await; // 4
    assert_eq!(m, 4);
    settle(&mut alice).await;
    settle(&mut carol).await;

    let fresh = event_at(&mut alice, "r", m).await;
    has_none_of(
        &fresh,
        &["edited", "deleted", "deleted_by", "reactions", "state_seq"],
    );

    for c in [&mut alice, &mut carol] {
        c.err(
            json!({"type":"edit","room":"r","seq":m,"message":"not mine"}),
            "not_author",
        )
        .await;
    }
    dave.err(
        json!({"type":"edit","room":"r","seq":m,"message":"x"}),
        "not_a_member",
    )
    .await;
    dave.err(
        json!({"type":"edit","room":"nowhere","seq":m,"message":"x"}),
        "no_such_room",
    )
    .await;

    let (ev, ack) = change(
        &mut bob,
        json!({"type":"edit","room":"r","seq":m,"message":"v2"}),
    )
    .await;
    assert_eq!(
        short(&ev),
        json!({"type":"edit","room":"r","seq":5,"user_id":"bob","target":4,"message":"v2"})
    );
    assert_eq!(
        short(&ack),
        json!({"type":"ack","command":"edit","room":"r","seq":5})
    );
    assert_eq!(alice.recv().await, ev);
    assert_eq!(carol.recv().await, ev);
    change(
        &mut bob,
        json!({"type":"edit","room":"r","seq":m,"message":"v3"}),
    )
    .await; // 6

    let max = bob.hello["limits"]["max_message_chars"]
        .as_u64()
        .expect("max_message_chars") as usize;
    bob.err(
        json!({"type":"edit","room":"r","seq":m,"message":"x".repeat(max + 1)}),
        "message_too_long",
    )
    .await;
    for bad in [
        json!({"type":"edit","room":"r","seq":m,"message":""}),
        json!({"type":"edit","room":"r","seq":m}),
        json!({"type":"edit","room":"r","seq":m,"message":5}),
        json!({"type":"edit","room":"r","message":"x"}),
        json!({"type":"edit","room":"r","seq":"4","message":"x"}),
    ] {
        bob.err(bad, "invalid_field").await;
    }
    for (at, why) in [(1, "create"), (2, "join"), (5, "an edit"), (99, "beyond")] {
        let e = bob
            .err(
                json!({"type":"edit","room":"r","seq":at,"message":"x"}),
                "no_such_event",
            )
            .await;
        assert_eq!(e["room"], "r", "{why}: {e}");
    }
    let longest = "y".repeat(max);
    change(
        &mut bob,
        json!({"type":"edit","room":"r","seq":m,"message":longest}),
    )
    .await; // 7

    let msg = event_at(&mut carol, "r", m).await;
    assert_eq!(msg["message"], longest.as_str());
    assert_eq!(msg["edited"], 3, "{msg}");
    assert_eq!(msg["state_seq"], 7, "{msg}");
    has_none_of(&msg, &["deleted", "deleted_by", "reactions"]);
    let page = history(&mut carol, "r", 4).await;
    assert_contiguous(&page, 5, 7);
    assert_eq!(
        page.iter()
            .map(|e| e["message"].clone())
            .collect::<Vec<_>>(),
        vec![json!("v2"), json!("v3"), json!(longest)],
        "each edit event keeps its own text while the message lives"
    );

    // A deleted message cannot be edited, and its edits lose their text.
    settle(&mut bob).await;
    change(&mut bob, json!({"type":"delete","room":"r","seq":m})).await; // 8
    bob.err(
        json!({"type":"edit","room":"r","seq":m,"message":"back"}),
        "no_such_event",
    )
    .await;
    let msg = event_at(&mut carol, "r", m).await;
    has_none_of(&msg, &["message"]);
    assert_eq!(msg["deleted"], true, "{msg}");
    assert_eq!(msg["deleted_by"], "bob", "{msg}");
    assert_eq!(msg["edited"], 3, "{msg}");
    assert_eq!(msg["state_seq"], 8, "{msg}");
    for e in history(&mut carol, "r", 4).await {
        has_none_of(&e, &["message"]);
    }
}

// ---------------------------------------------------------------- deletes

async fn the_author_the_owner_or_an_admin_deletes_a_message_once(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await; // owner
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await; // admin
    let mut dave = user(&node, "dave").await;
    let mut erin = user(&node, "erin").await; // never a member
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    for c in [&mut bob, &mut carol, &mut dave] {
        c.ok(json!({"type":"join","room":"r"})).await; // 2..=4
    }
    alice
        .ok(json!({"type":"set_role","room":"r","user":"carol","role":"admin"}))
        .await; // 5
    let m1 = post(&mut bob, "r", "m1").await; // 6
    let m2 = post(&mut bob, "r", "m2").await; // 7
    let m3 = post(&mut bob, "r", "m3").await; // 8
    let d1 = post(&mut dave, "r", "d1").await; // 9
    let a1 = post(&mut alice, "r", "a1").await; // 10
    for c in [&mut alice, &mut bob, &mut carol, &mut dave] {
        settle(c).await;
    }

    let e = dave
        .err(json!({"type":"delete","room":"r","seq":m1}), "forbidden")
        .await;
    assert_eq!(e["room"], "r", "{e}");
    bob.err(json!({"type":"delete","room":"r","seq":d1}), "forbidden")
        .await;
    erin.err(json!({"type":"delete","room":"r","seq":m1}), "not_a_member")
        .await;

    let (ev, ack) = change(&mut bob, json!({"type":"delete","room":"r","seq":m1})).await;
    assert_eq!(
        short(&ev),
        json!({"type":"delete","room":"r","seq":11,"user_id":"bob","target":6})
    );
    assert_eq!(
        short(&ack),
        json!({"type":"ack","command":"delete","room":"r","seq":11})
    );
    for c in [&mut alice, &mut carol, &mut dave] {
        assert_eq!(c.recv().await, ev);
    }
    let (ev, _) = change(&mut alice, json!({"type":"delete","room":"r","seq":m2})).await;
    assert_eq!(ev["seq"], 12);
    settle(&mut carol).await;
    let (ev, _) = change(&mut carol, json!({"type":"delete","room":"r","seq":m3})).await;
    assert_eq!(ev["seq"], 13);
    // An admin may delete the owner's message too.
    let (ev, _) = change(&mut carol, json!({"type":"delete","room":"r","seq":a1})).await;
    assert_eq!(short(&ev)["user_id"], "carol");

    // Twice, by anyone: no_such_event.
    for c in [&mut bob, &mut alice] {
        c.err(
            json!({"type":"delete","room":"r","seq":m1}),
            "no_such_event",
        )
        .await;
    }
    for at in [5, 11, 99] {
        alice
            .err(
                json!({"type":"delete","room":"r","seq":at}),
                "no_such_event",
            )
            .await;
    }
    bob.err(json!({"type":"delete","room":"r"}), "invalid_field")
        .await;
    // No reaction to a deleted message, and none can be taken back.
    bob.err(
        json!({"type":"react","room":"r","seq":m2,"emoji":"👍"}),
        "no_such_event",
    )
    .await;
    bob.err(
        json!({"type":"unreact","room":"r","seq":m2,"emoji":"👍"}),
        "no_such_event",
    )
    .await;
    assert_eq!(room_entry(&mut bob, "r").await["last_seq"], 14);

    for (at, by, state) in [
        (m1, "bob", 11),
        (m2, "alice", 12),
        (m3, "carol", 13),
        (a1, "carol", 14),
    ] {
        let msg = event_at(&mut dave, "r", at).await;
        has_none_of(&msg, &["message", "edited", "reactions"]);
        assert_eq!(msg["deleted"], true, "{msg}");
        assert_eq!(msg["deleted_by"], by, "{msg}");
        assert_eq!(msg["state_seq"], state, "{msg}");
        assert_eq!(
            msg["user_id"],
            if at == a1 { "alice" } else { "bob" },
            "{msg}"
        );
    }
    let msg = event_at(&mut dave, "r", d1).await;
    assert_eq!(msg["message"], "d1");
    has_none_of(&msg, &["deleted", "deleted_by", "state_seq"]);
}

// ---------------------------------------------------------------- reactions

async fn reactions_count_each_user_once_per_emoji(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await; // never a member
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    carol.ok(json!({"type":"join","room":"r"})).await; // 3
    let m = post(&mut alice, "r", "react to me").await; // 4
    for c in [&mut alice, &mut bob, &mut carol] {
        settle(c).await;
    }

    let (ev, ack) = change(
        &mut bob,
        json!({"type":"react","room":"r","seq":m,"emoji":"👍"}),
    )
    .await;
    assert_eq!(
        short(&ev),
        json!({"type":"react","room":"r","seq":5,"user_id":"bob","target":4,"emoji":"👍"})
    );
    assert_eq!(
        short(&ack),
        json!({"type":"ack","command":"react","room":"r","seq":5})
    );
    assert_eq!(alice.recv().await, ev);
    assert_eq!(carol.recv().await, ev);

    // The same emoji again: acked as a duplicate, nothing appended or sent.
    let frames = bob
        .cmd(json!({"type":"react","room":"r","seq":m,"emoji":"👍"}))
        .await;
    assert_eq!(frames.len(), 1, "no event for a second react: {frames:?}");
    assert_eq!(frames[0]["type"], "ack", "{frames:?}");
    assert_eq!(frames[0]["command"], "react", "{frames:?}");
    assert_eq!(frames[0]["duplicate"], true, "{frames:?}");
    quiet(&mut alice, "a duplicate react is not broadcast").await;
    assert_eq!(room_entry(&mut bob, "r").await["last_seq"], 5);

    change(
        &mut carol,
        json!({"type":"react","room":"r","seq":m,"emoji":"👍"}),
    )
    .await; // 6
    settle(&mut bob).await;
    change(
        &mut bob,
        json!({"type":"react","room":"r","seq":m,"emoji":"🎉"}),
    )
    .await; // 7
    let msg = event_at(&mut alice, "r", m).await;
    assert_eq!(
        msg["reactions"],
        json!({"👍":{"count":2,"users":["bob","carol"]},"🎉":{"count":1,"users":["bob"]}})
    );
    assert_eq!(msg["state_seq"], 7, "{msg}");
    assert_eq!(msg["message"], "react to me");

    let e = carol
        .err(
            json!({"type":"unreact","room":"r","seq":m,"emoji":"🎉"}),
            "no_such_reaction",
        )
        .await;
    assert_eq!(e["room"], "r", "{e}");
    carol
        .err(
            json!({"type":"unreact","room":"r","seq":m,"emoji":"🙂"}),
            "no_such_reaction",
        )
        .await;
    settle(&mut bob).await;
    let (ev, _) = change(
        &mut bob,
        json!({"type":"unreact","room":"r","seq":m,"emoji":"👍"}),
    )
    .await;
    assert_eq!(
        short(&ev),
        json!({"type":"unreact","room":"r","seq":8,"user_id":"bob","target":4,"emoji":"👍"})
    );
    bob.err(
        json!({"type":"unreact","room":"r","seq":m,"emoji":"👍"}),
        "no_such_reaction",
    )
    .await;
    let msg = event_at(&mut alice, "r", m).await;
    assert_eq!(
        msg["reactions"],
        json!({"👍":{"count":1,"users":["carol"]},"🎉":{"count":1,"users":["bob"]}})
    );
    assert_eq!(msg["state_seq"], 8, "{msg}");

    // Of the create, of a react event, beyond the last.
    for at in [1, 5, 99] {
        bob.err(
            json!({"type":"react","room":"r","seq":at,"emoji":"👍"}),
            "no_such_event",
        )
        .await;
        bob.err(
            json!({"type":"unreact","room":"r","seq":at,"emoji":"👍"}),
            "no_such_event",
        )
        .await;
    }
    bob.err(json!({"type":"react","room":"r","seq":m}), "invalid_field")
        .await;
    dave.err(
        json!({"type":"react","room":"r","seq":m,"emoji":"👍"}),
        "not_a_member",
    )
    .await;

    settle(&mut carol).await;
    change(
        &mut carol,
        json!({"type":"unreact","room":"r","seq":m,"emoji":"👍"}),
    )
    .await; // 9
    settle(&mut bob).await;
    change(
        &mut bob,
        json!({"type":"unreact","room":"r","seq":m,"emoji":"🎉"}),
    )
    .await; // 10
    let msg = event_at(&mut alice, "r", m).await;
    has_none_of(&msg, &["reactions"]);
    assert_eq!(msg["state_seq"], 10, "{msg}");
}

async fn reactions_name_the_first_20_users(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    let m = post(&mut alice, "r", "popular").await; // 2
    let users: Vec<String> = (0..23).map(|k| format!("u{k:02}")).collect();
    for u in &users {
        rest_ok(&node, "/rooms/r/join", json!({"user_id":u})).await;
    }
    // In an order that is not the alphabetical one.
    let order: Vec<&String> = users.iter().rev().collect();
    for u in &order {
        rest_ok(
            &node,
            "/rooms/r/react",
            json!({"user_id":u,"seq":m,"emoji":"+1"}),
        )
        .await;
    }
    let msg = event_at(&mut alice, "r", m).await;
    let first: Vec<&String> = order.iter().take(20).copied().collect();
    assert_eq!(
        msg["reactions"],
        json!({"+1":{"count":23,"users":first}}),
        "the count of all, the first 20 users in the order they reacted"
    );
    // One of the first 20 takes theirs back: the 21st moves up.
    rest_ok(
        &node,
        "/rooms/r/unreact",
        json!({"user_id":order[0],"seq":m,"emoji":"+1"}),
    )
    .await;
    let msg = event_at(&mut alice, "r", m).await;
    let first: Vec<&String> = order.iter().skip(1).take(20).copied().collect();
    assert_eq!(msg["reactions"], json!({"+1":{"count":22,"users":first}}));
}

async fn emoji_are_1_to_32_characters_and_a_zwj_sequence_is_one(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    let m = post(&mut alice, "r", "emoji").await; // 2
    let family = "👩\u{200d}👩\u{200d}👧\u{200d}👦"; // 7 scalars, 25 bytes, one character
    assert_eq!((family.chars().count(), family.len()), (7, 25));
    let valid: Vec<String> = vec![
        "👍".into(),
        "+1".into(),
        ":party:".into(),
        "❤️".into(),
        family.into(),
        "a".repeat(32),
        // 36 scalar values, 12 characters, 108 bytes.
        format!("{}{}", family.repeat(4), "a".repeat(8)),
        // 8 characters, exactly 128 bytes.
        format!("{}abc", family.repeat(5)),
    ];
    for e in &valid {
        let (ev, _) = change(
            &mut alice,
            json!({"type":"react","room":"r","seq":m,"emoji":e}),
        )
        .await;
        assert_eq!(ev["emoji"], e.as_str(), "the emoji comes back as sent");
    }
    let msg = event_at(&mut alice, "r", m).await;
    let mut got: Vec<String> = msg["reactions"]
        .as_object()
        .unwrap_or_else(|| panic!("no reactions: {msg}"))
        .keys()
        .cloned()
        .collect();
    got.sort();
    let mut want = valid.clone();
    want.sort();
    assert_eq!(got, want);

    let invalid: Vec<(Value, &str)> = vec![
        (json!(""), "empty"),
        (json!("a".repeat(33)), "33 characters"),
        (
            json!(format!("{}{family}", "a".repeat(32))),
            "32 + a ZWJ sequence = 33 characters",
        ),
        (json!(format!("{}abcd", family.repeat(5))), "129 bytes"),
        (json!("a b"), "a space"),
        (json!(" "), "a space alone"),
        (json!("\t"), "a tab"),
        (json!("ok\n"), "a newline"),
        (json!("\u{3000}"), "an ideographic space"),
        (json!("\u{7}"), "BEL"),
        (json!("x\u{1b}"), "ESC"),
        (json!("\u{7f}"), "DEL"),
        (json!(1), "a number"),
        (json!(["👍"]), "a list"),
        (Value::Null, "null"),
    ];
    for (e, why) in &invalid {
        for kind in ["react", "unreact"] {
            let r = alice
                .reply(json!({"type":kind,"room":"r","seq":m,"emoji":e}))
                .await;
            assert_eq!(
                (r["type"].as_str(), r["code"].as_str()),
                (Some("error"), Some("invalid_field")),
                "{kind} with {why} ({e}): {r}"
            );
        }
    }
    assert_eq!(
        room_entry(&mut alice, "r").await["last_seq"],
        2 + valid.len() as i64,
        "no refused emoji was stored"
    );
}

// ------------------------------------------------------- client_msg_id

async fn client_msg_id_retries_of_changes_ack_the_original(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    let m = seq(&bob
        .ok(json!({"type":"message","room":"r","message":"v1","client_msg_id":"m-1"}))
        .await); // 3
    settle(&mut alice).await;

    let edit = json!({"type":"edit","room":"r","seq":m,"message":"v2","client_msg_id":"c-1"});
    let (ev, _) = change(&mut bob, edit.clone()).await; // 4
    let ack = duplicate(&mut bob, edit, 4).await;
    assert_eq!(ack["id"], ev["id"], "{ack}");
    // A retry whose text differs is still the same edit.
    duplicate(
        &mut bob,
        json!({"type":"edit","room":"r","seq":m,"message":"v2 again","client_msg_id":"c-1"}),
        4,
    )
    .await;

    let react = json!({"type":"react","room":"r","seq":m,"emoji":"👍","client_msg_id":"c-2"});
    change(&mut bob, react.clone()).await; // 5
    duplicate(&mut bob, react, 5).await;

    let unreact = json!({"type":"unreact","room":"r","seq":m,"emoji":"👍","client_msg_id":"c-3"});
    change(&mut bob, unreact.clone()).await; // 6
                                             // Not no_such_reaction: the retry is the same command.
    duplicate(&mut bob, unreact, 6).await;

    let delete = json!({"type":"delete","room":"r","seq":m,"client_msg_id":"c-4"});
    change(&mut bob, delete.clone()).await; // 7
                                            // Not no_such_event: the retry is the same command.
    duplicate(&mut bob, delete, 7).await;

    duplicate(
        &mut bob,
        json!({"type":"message","room":"r","message":"v1","client_msg_id":"m-1"}),
        3,
    )
    .await;

    let seen = settle(&mut alice).await;
    assert_contiguous(&seen, 4, 7);
    let page = history(&mut alice, "r", 2).await;
    assert_contiguous(&page, 3, 7);
    let msg = &page[0];
    assert_eq!(msg["edited"], 1, "{msg}");
    assert_eq!(msg["deleted_by"], "bob", "{msg}");
    assert_eq!(msg["state_seq"], 7, "{msg}");
    has_none_of(msg, &["message", "reactions"]);

    // The key is per user: alice's c-1 is a new edit.
    let a = post(&mut alice, "r", "mine").await; // 8
    settle(&mut alice).await;
    let (ev, _) = change(
        &mut alice,
        json!({"type":"edit","room":"r","seq":a,"message":"mine!","client_msg_id":"c-1"}),
    )
    .await;
    assert_eq!(ev["seq"], 9);
}

// ---------------------------------------------------------------- typing

async fn typing_is_acked_reaches_the_other_users_and_is_never_stored(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice1 = user(&node, "alice").await;
    let mut alice2 = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol1 = user(&node, "carol").await;
    let mut carol2 = user(&node, "carol").await; // a member's unsubscribed connection
    let mut erin = user(&node, "erin").await; // never a member
    alice1.ok(json!({"type":"create","room":"r"})).await; // 1
    alice2.ok(json!({"type":"join","room":"r"})).await;
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    carol1.ok(json!({"type":"join","room":"r"})).await; // 3
    post(&mut bob, "r", "hi").await; // 4
    for c in [&mut alice1, &mut alice2, &mut bob, &mut carol1, &mut carol2] {
        settle(c).await;
    }

    let typing = |on: bool| json!({"type":"typing","room":"r","typing":on});
    let frames = alice1.cmd(typing(true)).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"ack","command":"typing","room":"r"})
    );
    let frame = json!({"type":"typing","room":"r","user_id":"alice","typing":true,"ttl_ms":6000});
    assert_eq!(bob.recv().await, frame);
    assert_eq!(carol1.recv().await, frame);

    // Within 2 s, a second true is acked and dropped; a false goes through.
    let ack = alice1.ok(typing(true)).await;
    assert!(ack.get("seq").is_none(), "{ack}");
    alice1.ok(typing(false)).await;
    for c in [&mut bob, &mut carol1] {
        let f = c.recv().await;
        assert_eq!(
            (&f["type"], &f["user_id"], &f["typing"]),
            (&json!("typing"), &json!("alice"), &json!(false)),
            "the second true is not forwarded, the false is: {f}"
        );
        assert_eq!(f["room"], "r");
        assert!(f.get("seq").is_none(), "{f}");
    }
    quiet(&mut alice2, "the sender's own user gets no typing").await;
    quiet(&mut alice1, "the sender's own user gets no typing").await;
    quiet(&mut carol2, "a connection not subscribed gets no typing").await;

    tokio::time::sleep(Duration::from_millis(2100)).await;
    alice2.ok(typing(true)).await;
    assert_eq!(bob.recv().await, frame, "a true after 2 s goes through");
    assert_eq!(carol1.recv().await, frame);
    bob.ok(typing(true)).await;
    let from_bob = json!({"type":"typing","room":"r","user_id":"bob","typing":true,"ttl_ms":6000});
    assert_eq!(alice1.recv().await, from_bob);
    assert_eq!(alice2.recv().await, from_bob);
    assert_eq!(carol1.recv().await, from_bob);
    quiet(&mut bob, "the sender gets no typing").await;

    // Never stored, never replayed.
    let page = history(&mut bob, "r", 0).await;
    assert_contiguous(&page, 1, 4);
    assert!(page.iter().all(|e| e["type"] != "typing"), "{page:?}");
    assert_eq!(room_entry(&mut bob, "r").await["last_seq"], 4);
    let mut dave = user(&node, "dave").await;
    let frames = dave.cmd(json!({"type":"join","room":"r","since":0})).await;
    assert!(
        frames.iter().all(|f| f["type"] != "typing"),
        "a replay has no typing: {frames:?}"
    );
    assert_eq!(frames.last().unwrap()["recovered"], true);

    erin.err(typing(true), "not_a_member").await;
    erin.err(
        json!({"type":"typing","room":"nowhere","typing":true}),
        "no_such_room",
    )
    .await;
    for bad in [
        json!({"type":"typing","room":"r"}),
        json!({"type":"typing","room":"r","typing":"yes"}),
        json!({"type":"typing","room":"r","typing":1}),
    ] {
        bob.err(bad, "invalid_field").await;
    }
}

// ------------------------------------------------------- read markers

async fn read_markers_move_forward_and_tell_the_users_other_connections(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob1 = user(&node, "bob").await;
    let mut bob2 = user(&node, "bob").await; // not subscribed
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await; // never a member of r
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob1.ok(json!({"type":"join","room":"r"})).await; // 2
    for k in 3..=5 {
        assert_eq!(post(&mut alice, "r", &format!("m{k}")).await, k);
    }
    settle(&mut bob1).await;
    assert_eq!(unread(&mut bob1, "r").await, counts(3, 0));

    let frames = bob1.cmd(json!({"type":"read","room":"r","seq":4})).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"ack","command":"read","room":"r","seq":4})
    );
    // The user's other connection is told.
    assert_read_frame(&bob2.recv().await, "r", 4, "bob");
    quiet(&mut alice, "nobody else is told of a read").await;
    quiet(&mut bob1, "the reading connection gets only its ack").await;
    assert_eq!(unread(&mut bob1, "r").await, counts(1, 0));
    assert_eq!(unread(&mut bob2, "r").await, counts(1, 0));

    // Backwards or in place: unchanged, and nobody is told.
    for at in [3, 4, 0] {
        let frames = bob1.cmd(json!({"type":"read","room":"r","seq":at})).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(
            short(&frames[0]),
            json!({"type":"ack","command":"read","room":"r","seq":4,"unchanged":true}),
            "read {at}"
        );
    }
    quiet(&mut bob2, "an unchanged marker tells nobody").await;
    bob1.err(json!({"type":"read","room":"r","seq":6}), "invalid_field")
        .await;
    for bad in [
        json!({"type":"read","room":"r"}),
        json!({"type":"read","room":"r","seq":"5"}),
        json!({"type":"read","room":"r","seq":-1}),
    ] {
        bob1.err(bad, "invalid_field").await;
    }
    dave.err(json!({"type":"read","room":"r","seq":1}), "not_a_member")
        .await;
    dave.err(
        json!({"type":"read","room":"nowhere","seq":1}),
        "no_such_room",
    )
    .await;
    assert_eq!(unread(&mut bob1, "r").await, counts(1, 0));

    let seqs = read_seqs(&mut alice, "r").await;
    assert_eq!(seqs["bob"], 4, "{seqs:?}");
    assert_eq!(
        seqs["alice"], 5,
        "posting moves the poster's marker: {seqs:?}"
    );

    // From the other connection; the first one is told.
    bob2.ok(json!({"type":"read","room":"r","seq":5})).await;
    assert_read_frame(&bob1.recv().await, "r", 5, "bob");
    assert_eq!(unread(&mut bob1, "r").await, counts(0, 0));

    // A new member's marker starts at its join.
    carol.ok(json!({"type":"join","room":"r"})).await; // 6
    assert_eq!(unread(&mut carol, "r").await, counts(0, 0));
    assert_eq!(read_seqs(&mut alice, "r").await["carol"], 6);
    post(&mut alice, "r", "m7").await; // 7
    assert_eq!(unread(&mut carol, "r").await, counts(1, 0));
    assert_eq!(unread(&mut bob1, "r").await, counts(1, 0));
    assert_eq!(unread(&mut alice, "r").await, counts(0, 0));
    // Posting reads up to one's own message.
    post(&mut bob1, "r", "m8").await; // 8
    assert_eq!(unread(&mut bob1, "r").await, counts(0, 0));
    assert_eq!(read_seqs(&mut alice, "r").await["bob"], 8);
    assert_eq!(unread(&mut carol, "r").await, counts(2, 0));
}

async fn unread_counts_skip_own_and_deleted_messages_and_survive_a_restart(b: Backend) {
    let mut node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    post(&mut bob, "r", "b3").await; // 3
    let mention =
        |text: &str| json!({"type":"message","room":"r","message":text,"mentions":["bob"]});
    let m4 = seq(&alice.ok(mention("m4 @bob")).await); // 4
    let m5 = post(&mut alice, "r", "m5").await; // 5
    let m6 = seq(&alice.ok(mention("m6 @bob")).await); // 6
    post(&mut alice, "r", "m7").await; // 7
    assert_eq!(unread(&mut bob, "r").await, counts(4, 2));
    assert_eq!(unread(&mut alice, "r").await, counts(0, 0));

    // Edits and reactions change no count; a delete does.
    alice
        .ok(json!({"type":"edit","room":"r","seq":m5,"message":"m5'"}))
        .await; // 8
    bob.ok(json!({"type":"react","room":"r","seq":m4,"emoji":"👀"}))
        .await; // 9
    assert_eq!(unread(&mut bob, "r").await, counts(4, 2));
    alice.ok(json!({"type":"delete","room":"r","seq":m4})).await; // 10
    assert_eq!(unread(&mut bob, "r").await, counts(3, 1));

    bob.ok(json!({"type":"read","room":"r","seq":m6})).await;
    assert_eq!(unread(&mut bob, "r").await, counts(1, 0));
    alice.ok(mention("m11 @bob")).await; // 11
    alice.ok(mention("m12 @bob")).await; // 12
    alice.ok(json!({"type":"delete","room":"r","seq":7})).await; // 13: m7, unread, not a mention
    assert_eq!(unread(&mut bob, "r").await, counts(2, 2));
    assert_eq!(unread(&mut alice, "r").await, counts(0, 0));

    drop((alice, bob));
    assert!(node.terminate().success());
    let node = node.restart().await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    assert_eq!(unread(&mut bob, "r").await, counts(2, 2), "after a restart");
    assert_eq!(unread(&mut alice, "r").await, counts(0, 0));
    let seqs = read_seqs(&mut bob, "r").await;
    assert_eq!(seqs["bob"], 6, "{seqs:?}");
    assert_eq!(seqs["alice"], 12, "{seqs:?}");
    let frames = bob.cmd(json!({"type":"read","room":"r","seq":4})).await;
    assert_eq!(frames.last().unwrap()["unchanged"], true, "{frames:?}");
    assert_eq!(frames.last().unwrap()["seq"], 6, "{frames:?}");
    bob.ok(json!({"type":"read","room":"r","seq":11})).await;
    assert_eq!(unread(&mut bob, "r").await, counts(1, 1));
    bob.ok(json!({"type":"read","room":"r","seq":13})).await;
    assert_eq!(unread(&mut bob, "r").await, counts(0, 0));
}

// ---------------------------------------------------------------- mentions

async fn mentions_are_kept_for_members_notified_and_counted(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut carol_sub = user(&node, "carol").await;
    let mut carol_free = user(&node, "carol").await; // not subscribed
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    {
        let mut bob = user(&node, "bob").await;
        bob.ok(json!({"type":"join","room":"r"})).await; // 2
        bob.close().await; // bob is offline from here
    }
    carol_sub.ok(json!({"type":"join","room":"r"})).await; // 3
    settle(&mut alice).await;
    settle(&mut carol_free).await;

    let (ev, ack) = change(
        &mut alice,
        json!({"type":"message","room":"r","message":"hey @bob @carol @zed",
               "mentions":["bob","carol","zed","bob"]}),
    )
    .await;
    let mut kept: Vec<String> = ev["mentions"]
        .as_array()
        .unwrap_or_else(|| panic!("no mentions: {ev}"))
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    kept.sort();
    assert_eq!(kept, ["bob", "carol"], "members kept once each: {ev}");
    assert_eq!(ack["dropped_mentions"], json!(["zed"]), "{ack}");
    let at = seq(&ev);

    assert_eq!(
        carol_free.recv().await,
        json!({"type":"notice","kind":"mention","room":"r","seq":at,"by":"alice"})
    );
    assert_eq!(
        carol_sub.recv().await,
        ev,
        "a subscribed connection gets the event"
    );
    quiet(
        &mut carol_sub,
        "a subscribed connection gets no mention notice",
    )
    .await;
    quiet(&mut carol_free, "one notice").await;
    quiet(&mut alice, "the poster gets no notice").await;

    let mut bob = user(&node, "bob").await;
    assert_eq!(
        unread(&mut bob, "r").await,
        counts(1, 1),
        "an offline mention counts when bob comes back"
    );
    assert_eq!(unread(&mut carol_free, "r").await, counts(1, 1));
    let msg = event_at(&mut bob, "r", at).await;
    assert_eq!(msg["mentions"], ev["mentions"]);

    // No dropped_mentions when none was dropped.
    let ack = alice
        .ok(json!({"type":"message","room":"r","message":"hi @carol","mentions":["carol"]}))
        .await;
    assert!(ack.get("dropped_mentions").is_none(), "{ack}");
    let ack = alice
        .ok(json!({"type":"message","room":"r","message":"plain"}))
        .await;
    assert!(ack.get("dropped_mentions").is_none(), "{ack}");
    assert_eq!(
        carol_free.recv().await,
        json!({"type":"notice","kind":"mention","room":"r","seq":seq(&ack) - 1,"by":"alice"})
    );
    quiet(&mut carol_free, "no notice without a mention").await;
    assert_eq!(unread(&mut carol_free, "r").await, counts(3, 2));
    assert_eq!(unread(&mut bob, "r").await, counts(3, 1));

    // 50 is the most; the non-members among them are dropped.
    let mut fifty: Vec<String> = (0..49).map(|k| format!("x{k}")).collect();
    fifty.push("bob".into());
    let ack = alice
        .ok(json!({"type":"message","room":"r","message":"many","mentions":fifty}))
        .await;
    assert_eq!(
        ack["dropped_mentions"].as_array().map(Vec::len),
        Some(49),
        "{ack}"
    );
    let mut too_many = fifty.clone();
    too_many.push("x49".into());
    for bad in [
        json!(too_many),
        json!([]),
        json!("bob"),
        json!([""]),
        json!(["a\u{7}b"]),
        json!(["x".repeat(65)]),
    ] {
        alice
            .err(
                json!({"type":"message","room":"r","message":"m","mentions":bad}),
                "invalid_field",
            )
            .await;
    }
    assert_eq!(unread(&mut bob, "r").await, counts(4, 2));
}

// ------------------------------------------------ resume and history

async fn resume_and_history_give_the_log_with_each_messages_current_state(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut w = user(&node, "w").await; // watches, live
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await; // goes away and resumes
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    for c in [&mut w, &mut bob, &mut carol, &mut dave] {
        c.ok(json!({"type":"join","room":"r"})).await; // 2..=5
    }
    alice
        .ok(json!({"type":"set_role","room":"r","user":"carol","role":"admin"}))
        .await; // 6

    let a = post(&mut alice, "r", "hello").await; // 7
    let bm = seq(&bob
        .ok(
            json!({"type":"message","room":"r","message":"hi","reply_to":a,
                   "mentions":["alice","nobody"],"client_msg_id":"b-1"}),
        )
        .await); // 8
    bob.ok(json!({"type":"edit","room":"r","seq":bm,"message":"hi!"}))
        .await; // 9
    carol
        .ok(json!({"type":"react","room":"r","seq":a,"emoji":"👍"}))
        .await; // 10
    bob.ok(json!({"type":"react","room":"r","seq":a,"emoji":"👍"}))
        .await; // 11
    bob.ok(json!({"type":"react","room":"r","seq":a,"emoji":"🎉"}))
        .await; // 12
    let c = post(&mut alice, "r", "doomed").await; // 13
    alice
        .ok(json!({"type":"edit","room":"r","seq":c,"message":"doomed v2"}))
        .await; // 14
    let k = 14;
    let seen = events_to(&mut dave, "r", k).await;
    assert_eq!(seq(seen.last().unwrap()), k);
    dave.close().await;

    carol.ok(json!({"type":"delete","room":"r","seq":c})).await; // 15
    bob.ok(json!({"type":"unreact","room":"r","seq":a,"emoji":"🎉"}))
        .await; // 16
    let d = seq(&alice
        .ok(json!({"type":"message","room":"r","message":"after","reply_to":c}))
        .await); // 17
    carol
        .ok(json!({"type":"react","room":"r","seq":d,"emoji":"+1","client_msg_id":"c-1"}))
        .await; // 18
    bob.ok(json!({"type":"edit","room":"r","seq":bm,"message":"hi!!"}))
        .await; // 19
    let e = post(&mut carol, "r", "plain").await; // 20
    bob.ok(json!({"type":"delete","room":"r","seq":bm})).await; // 21
    let last = 21;

    // What w saw live, folded, is what history reads now.
    let live = events_to(&mut w, "r", last).await;
    assert_contiguous(&live, 3, last);
    let expected = fold(&live);
    let page = history(&mut w, "r", 2).await;
    assert_eq!(
        page, expected,
        "history = the live log with each message's current state"
    );

    // The same facts, spelled out.
    let at = |s: i64| page[(s - 3) as usize].clone();
    let msg = at(a);
    assert_eq!(msg["message"], "hello");
    assert_eq!(
        msg["reactions"],
        json!({"👍":{"count":2,"users":["carol","bob"]}})
    );
    assert_eq!(msg["state_seq"], 16);
    has_none_of(
        &msg,
        &["edited", "deleted", "deleted_by", "reply_to", "mentions"],
    );
    let msg = at(bm);
    has_none_of(&msg, &["message", "reactions"]);
    assert_eq!(
        (
            &msg["edited"],
            &msg["deleted"],
            &msg["deleted_by"],
            &msg["state_seq"]
        ),
        (&json!(2), &json!(true), &json!("bob"), &json!(21)),
        "{msg}"
    );
    assert_eq!(
        (&msg["reply_to"], &msg["mentions"]),
        (&json!(7), &json!(["alice"]))
    );
    assert_eq!(msg["client_msg_id"], "b-1");
    let msg = at(c);
    has_none_of(&msg, &["message", "reactions"]);
    assert_eq!(
        (&msg["edited"], &msg["deleted_by"], &msg["state_seq"]),
        (&json!(1), &json!("carol"), &json!(15))
    );
    for s in [9, 14, 19] {
        has_none_of(&at(s), &["message"]);
        assert_eq!(at(s)["type"], "edit");
    }
    let msg = at(d);
    assert_eq!(
        (&msg["message"], &msg["reply_to"], &msg["state_seq"]),
        (&json!("after"), &json!(13), &json!(18))
    );
    assert_eq!(
        msg["reactions"],
        json!({"+1":{"count":1,"users":["carol"]}})
    );
    let msg = at(e);
    assert_eq!(msg["message"], "plain");
    has_none_of(
        &msg,
        &[
            "edited",
            "deleted",
            "deleted_by",
            "reactions",
            "state_seq",
            "reply_to",
            "mentions",
        ],
    );
    let react = at(18);
    assert_eq!(
        (
            &react["type"],
            &react["user_id"],
            &react["target"],
            &react["emoji"]
        ),
        (&json!("react"), &json!("carol"), &json!(17), &json!("+1")),
        "{react}"
    );

    // Resuming from k replays exactly what history reads past k.
    let mut dave = user(&node, "dave").await;
    let mut frames = dave.cmd(json!({"type":"join","room":"r","since":k})).await;
    let ack = frames.pop().unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (&ack["recovered"], &ack["seq"]),
        (&json!(true), &json!(last))
    );
    let since_k = history(&mut dave, "r", k).await;
    assert_eq!(
        frames, since_k,
        "the replay is the log, JSON-equal to history"
    );
    assert_eq!(frames, expected[(k - 2) as usize..].to_vec());
    // And the REST API reads the same.
    let (status, v) = rest(
        &node,
        "GET",
        &format!("/rooms/r/events?since={k}&limit=1000"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["events"], json!(since_k));
    // From 0, too.
    let mut eve = user(&node, "eve").await;
    let mut frames = eve.cmd(json!({"type":"join","room":"r","since":0})).await;
    frames.pop();
    let join = frames.pop().unwrap();
    assert_eq!(
        (&join["type"], &join["user_id"]),
        (&json!("join"), &json!("eve"))
    );
    assert_eq!(
        frames,
        history(&mut eve, "r", 0).await[..last as usize].to_vec()
    );
}

// ---------------------------------------------------------------- private rooms

async fn a_private_room_answers_an_outsider_no_such_room_and_an_invitee_not_a_member(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await; // invited, not joined
    let mut dave = user(&node, "dave").await; // an outsider
    alice
        .ok(json!({"type":"create","room":"p","private":true}))
        .await; // 1
    let m = post(&mut alice, "p", "private").await; // 2
    alice
        .ok(json!({"type":"invite","room":"p","user":"bob"}))
        .await; // 3
    let cmds = [
        json!({"type":"edit","room":"p","seq":m,"message":"x"}),
        json!({"type":"delete","room":"p","seq":m}),
        json!({"type":"react","room":"p","seq":m,"emoji":"👍"}),
        json!({"type":"unreact","room":"p","seq":m,"emoji":"👍"}),
        json!({"type":"typing","room":"p","typing":true}),
        json!({"type":"read","room":"p","seq":m}),
        json!({"type":"message","room":"p","message":"x","reply_to":m}),
    ];
    for cmd in &cmds {
        let e = dave.err(cmd.clone(), "no_such_room").await;
        assert_eq!(e["room"], "p", "{e}");
        let e = bob.err(cmd.clone(), "not_a_member").await;
        assert_eq!(e["room"], "p", "{e}");
    }
    rest_err(
        &node,
        "/rooms/p/react",
        json!({"user_id":"dave","seq":m,"emoji":"👍"}),
        404,
        "no_such_room",
    )
    .await;
    assert_eq!(room_entry(&mut alice, "p").await["last_seq"], 3);
}

// ---------------------------------------------------------------- REST

async fn rest_routes_answer_like_the_commands(b: Backend) {
    let node = TestNode::start(b).await;
    let n = &node;
    let ack =
        |command: &str, seq: i64| json!({"type":"ack","command":command,"room":"r","seq":seq});
    let mut alice = user(n, "alice").await;
    let mut bob = user(n, "bob").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    let m = post(&mut bob, "r", "v1").await; // 3
    settle(&mut alice).await;
    settle(&mut bob).await;

    let v = rest_ok(
        n,
        "/rooms/r/edit",
        json!({"user_id":"bob","seq":m,"message":"v2","client_msg_id":"e-1"}),
    )
    .await;
    assert_eq!(short(&v), ack("edit", 4));
    let ev = alice.recv().await;
    assert_eq!(
        (&ev["type"], &ev["seq"], &ev["message"], &ev["target"]),
        (&json!("edit"), &json!(4), &json!("v2"), &json!(3)),
        "a REST command's event reaches sockets: {ev}"
    );
    assert_eq!(ev["id"], v["id"]);
    let v = rest_ok(
        n,
        "/rooms/r/edit",
        json!({"user_id":"bob","seq":m,"message":"v2","client_msg_id":"e-1"}),
    )
    .await;
    assert_eq!((&v["seq"], &v["duplicate"]), (&json!(4), &json!(true)));
    rest_err(
        n,
        "/rooms/r/edit",
        json!({"user_id":"alice","seq":m,"message":"x"}),
        403,
        "not_author",
    )
    .await;
    rest_err(
        n,
        "/rooms/r/edit",
        json!({"user_id":"bob","seq":1,"message":"x"}),
        404,
        "no_such_event",
    )
    .await;
    rest_err(
        n,
        "/rooms/r/edit",
        json!({"user_id":"bob","seq":m,"message":"x".repeat(5000)}),
        400,
        "message_too_long",
    )
    .await;
    rest_err(
        n,
        "/rooms/r/edit",
        json!({"seq":m,"message":"x"}),
        400,
        "invalid_field",
    )
    .await;
    rest_err(
        n,
        "/rooms/r/edit",
        json!({"user_id":"carol","seq":m,"message":"x"}),
        403,
        "not_a_member",
    )
    .await;
    rest_err(
        n,
        "/rooms/nowhere/edit",
        json!({"user_id":"bob","seq":m,"message":"x"}),
        404,
        "no_such_room",
    )
    .await;

    let v = rest_ok(
        n,
        "/rooms/r/react",
        json!({"user_id":"alice","seq":m,"emoji":"👍"}),
    )
    .await;
    assert_eq!(short(&v), ack("react", 5));
    let v = rest_ok(
        n,
        "/rooms/r/react",
        json!({"user_id":"alice","seq":m,"emoji":"👍"}),
    )
    .await;
    assert_eq!(v["duplicate"], true, "{v}");
    rest_err(
        n,
        "/rooms/r/react",
        json!({"user_id":"alice","seq":m,"emoji":"a b"}),
        400,
        "invalid_field",
    )
    .await;
    rest_err(
        n,
        "/rooms/r/react",
        json!({"user_id":"alice","seq":2,"emoji":"👍"}),
        404,
        "no_such_event",
    )
    .await;
    let v = rest_ok(
        n,
        "/rooms/r/unreact",
        json!({"user_id":"alice","seq":m,"emoji":"👍"}),
    )
    .await;
    assert_eq!(short(&v), ack("unreact", 6));
    rest_err(
        n,
        "/rooms/r/unreact",
        json!({"user_id":"alice","seq":m,"emoji":"👍"}),
        404,
        "no_such_reaction",
    )
    .await;

    // read: alice's socket is another connection of hers, so it is told.
    settle(&mut alice).await;
    let v = rest_ok(n, "/rooms/r/read", json!({"user_id":"alice","seq":6})).await;
    assert_eq!(short(&v), ack("read", 6));
    assert_read_frame(&alice.recv().await, "r", 6, "alice");
    let v = rest_ok(n, "/rooms/r/read", json!({"user_id":"alice","seq":3})).await;
    assert_eq!(
        short(&v),
        json!({"type":"ack","command":"read","room":"r","seq":6,"unchanged":true})
    );
    rest_err(
        n,
        "/rooms/r/read",
        json!({"user_id":"alice","seq":7}),
        400,
        "invalid_field",
    )
    .await;
    rest_err(
        n,
        "/rooms/r/read",
        json!({"user_id":"carol","seq":1}),
        403,
        "not_a_member",
    )
    .await;

    rest_ok(n, "/rooms/r/join", json!({"user_id":"dave"})).await; // 7
    rest_err(
        n,
        "/rooms/r/delete",
        json!({"user_id":"dave","seq":m}),
        403,
        "forbidden",
    )
    .await;
    let v = rest_ok(n, "/rooms/r/delete", json!({"user_id":"bob","seq":m})).await;
    assert_eq!(short(&v), ack("delete", 8));
    rest_err(
        n,
        "/rooms/r/delete",
        json!({"user_id":"bob","seq":m}),
        404,
        "no_such_event",
    )
    .await;

    let (status, page) = rest(n, "GET", "/rooms/r/events?since=2&limit=1", None).await;
    assert_eq!(status, 200, "{page}");
    let msg = &page["events"][0];
    assert_eq!(msg["seq"], 3, "{page}");
    has_none_of(msg, &["message", "reactions"]);
    assert_eq!(
        (
            &msg["edited"],
            &msg["deleted"],
            &msg["deleted_by"],
            &msg["state_seq"]
        ),
        (&json!(1), &json!(true), &json!("bob"), &json!(8)),
        "{msg}"
    );
    assert_eq!(unread(&mut alice, "r").await, counts(0, 0));
}

// ------------------------------------------------ deleted text, in the store

/// Rows of the node's database that hold `needle` in any column, as
/// "table: value" lines (SQLite: every table's every text and blob value;
/// PostgreSQL: every table of schema public, each row read as text).
async fn rows_holding(node: &TestNode, needle: &str) -> Vec<String> {
    let vars: BTreeMap<String, String> = node.store.vars.iter().cloned().collect();
    if let Some(path) = vars.get("SQLITE_PATH") {
        let (path, needle) = (path.clone(), needle.to_string());
        tokio::task::spawn_blocking(move || sqlite_rows_holding(&path, &needle))
            .await
            .expect("sqlite scan")
    } else {
        let url = vars
            .get("DATABASE_URL")
            .expect("SQLITE_PATH or DATABASE_URL");
        pg_rows_holding(url, needle).await
    }
}

fn sqlite_rows_holding(path: &str, needle: &str) -> Vec<String> {
    use rusqlite::types::ValueRef;
    let conn = rusqlite::Connection::open(path).expect("open the SQLite file");
    conn.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")
        .expect("pragmas");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    let mut hits = Vec::new();
    for t in tables {
        let mut st = conn
            .prepare(&format!("SELECT * FROM \"{}\"", t.replace('"', "\"\"")))
            .unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                let bytes = match row.get_ref(i).unwrap() {
                    ValueRef::Text(b) | ValueRef::Blob(b) => b,
                    _ => continue,
                };
                if contains(bytes, needle.as_bytes()) {
                    hits.push(format!("{t}: {}", String::from_utf8_lossy(bytes)));
                }
            }
        }
    }
    hits
}

async fn pg_rows_holding(url: &str, needle: &str) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the node's database");
    tokio::spawn(conn);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    let mut hits = Vec::new();
    for t in tables {
        let rows = client
            .query(
                &format!(
                    "SELECT x::text FROM public.\"{}\" AS x WHERE strpos(x::text, $1) > 0",
                    t.replace('"', "\"\"")
                ),
                &[&needle],
            )
            .await
            .unwrap();
        hits.extend(
            rows.iter()
                .map(|r| format!("{t}: {}", r.get::<_, String>(0))),
        );
    }
    hits
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A room where bob's message went through two edits and was deleted by
/// the owner; returns the secret prefix of its three texts and a text that
/// was kept.
async fn delete_an_edited_message(node: &TestNode) -> (String, String) {
    let tag = format!("{:016x}", rand::random::<u64>());
    let secret = format!("secret-{tag}");
    let kept = format!("kept-{tag}");
    let mut alice = user(node, "alice").await;
    let mut bob = user(node, "bob").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob.ok(json!({"type":"join","room":"r"})).await; // 2
    let m = post(&mut bob, "r", &format!("{secret}-first")).await; // 3
    bob.ok(json!({"type":"edit","room":"r","seq":m,"message":format!("{secret}-second")}))
        .await; // 4
    bob.ok(
        json!({"type":"edit","room":"r","seq":m,"message":format!("{secret}-third"),
                  "client_msg_id":"e-2"}),
    )
    .await; // 5
    post(&mut bob, "r", &kept).await; // 6
    alice
        .ok(json!({"type":"react","room":"r","seq":6,"emoji":"👍"}))
        .await; // 7
    alice.ok(json!({"type":"delete","room":"r","seq":m})).await; // 8
                                                                 // Nothing a client can read holds it.
    let page = alice.reply(json!({"type":"history","room":"r"})).await;
    assert!(!page.to_string().contains(&secret), "{page}");
    assert!(page.to_string().contains(&kept), "{page}");
    let (_, body) = node.http("GET", "/rooms/r/events", None).await;
    assert!(!body.contains(&secret), "{body}");
    let mut carol = user(node, "carol").await;
    let replay = carol.cmd(json!({"type":"join","room":"r","since":0})).await;
    assert!(!format!("{replay:?}").contains(&secret), "{replay:?}");
    (secret, kept)
}

async fn a_deleted_messages_text_is_in_no_row_of_the_database(b: Backend) {
    let node = TestNode::start(b).await;
    let (secret, kept) = delete_an_edited_message(&node).await;
    let found = rows_holding(&node, &kept).await;
    assert!(
        !found.is_empty(),
        "the scan finds the text of a message that was kept"
    );
    let found = rows_holding(&node, &secret).await;
    assert!(
        found.is_empty(),
        "a deleted message's text (and its edits') is gone from every table: {found:#?}"
    );
}

/// SQLite runs with secure_delete: once the WAL is checkpointed (every
/// 500 ms), the database file holds no byte of the deleted texts. The `-wal`
/// file is not checked: it keeps the old frames until SQLite reuses them, as
/// docs/security.md says ("A deleted message").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_deleted_messages_text_is_not_in_the_database_file() {
    let node = TestNode::start(Backend::Sqlite).await;
    let (secret, kept) = delete_an_edited_message(&node).await;
    let path = node.store.vars[0].1.clone();
    assert!(path.ends_with(".db"), "{path}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let main = std::fs::read(&path).expect("read the database file");
    assert!(
        contains(&main, kept.as_bytes()),
        "after a checkpoint the file holds the kept message"
    );
    assert!(
        !contains(&main, secret.as_bytes()),
        "the database file still holds a deleted message's text"
    );
}
