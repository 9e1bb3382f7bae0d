//! Rooms with owners, private rooms, direct messages, moderation and notices
//! (docs/protocol.md, "Rooms with owners, private rooms and direct
//! messages"), over real sockets and the REST API, on both stores.

mod common;

use std::collections::BTreeMap;

use common::{assert_contiguous, http_with, settle, short, user, Backend, Client, TestNode};
use serde_json::{json, Value};

on_both_stores!(
    only_invited_users_join_a_private_room_and_a_join_uses_the_invitation_up,
    members_invite_into_public_rooms_and_only_the_inviter_or_staff_uninvite,
    a_kick_ends_the_membership_and_stops_every_connection_of_the_target,
    a_ban_with_a_reason_keeps_the_user_out_until_unbanned,
    only_the_owner_sets_roles_and_admins_act_on_members_only,
    the_owner_leaving_hands_the_room_to_the_first_admin_else_the_first_member,
    a_dm_is_one_private_room_per_pair_whoever_asks,
    the_caller_of_a_new_dm_gets_its_create_and_join_before_the_ack,
    a_block_refuses_dms_and_invites_from_the_blocked_user_and_nothing_else,
    notices_reach_every_connection_of_the_target_and_no_one_else,
    rooms_and_members_show_each_user_what_it_may_see_with_its_role,
    a_private_room_answers_an_outsider_exactly_like_a_missing_room,
    join_with_since_replays_moderation_exactly_as_history_reads_it,
    rest_routes_answer_like_the_commands,
    in_token_mode_get_rooms_adds_the_token_users_private_rooms,
);

// ---------------------------------------------------------------- helpers

/// The next frame, which must be an event of `kind`; returned whole.
async fn event(c: &mut Client, kind: &str) -> Value {
    let f = c.recv().await;
    assert_eq!(f["type"], kind, "expected a {kind} event, got {f}");
    f
}

fn notice(kind: &str, room: &str, seq: i64, by: &str) -> Value {
    json!({"type":"notice","kind":kind,"room":room,"seq":seq,"by":by})
}

/// `members` of a `members` reply as user_id -> role.
fn roles(reply: &Value) -> BTreeMap<String, Value> {
    reply["members"]
        .as_array()
        .unwrap_or_else(|| panic!("not a members reply: {reply}"))
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().to_string(),
                m["role"].clone(),
            )
        })
        .collect()
}

fn role_map(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(u, r)| (u.to_string(), json!(r)))
        .collect()
}

/// The names in a `rooms` list.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list of rooms: {list}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

/// The entry for `room` in a `rooms` list.
fn entry(list: &Value, room: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == room)
        .cloned()
        .unwrap_or_else(|| panic!("no {room} in {list}"))
}

/// `v` with every occurrence of `from` in its text replaced by `to`.
fn swap(v: &Value, from: &str, to: &str) -> Value {
    serde_json::from_str(&v.to_string().replace(from, to)).unwrap()
}

/// One REST request; the status and the body as JSON.
async fn rest(node: &TestNode, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, text) = node.http(method, path, body.as_ref()).await;
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status}, body is not JSON ({e}): {text}"));
    (status, v)
}

/// A REST request that must fail with `status` and `code`.
async fn rest_err(
    node: &TestNode,
    method: &str,
    path: &str,
    body: Value,
    status: u16,
    code: &str,
) -> Value {
    let (s, v) = rest(node, method, path, Some(body.clone())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (status, Some(code)),
        "{method} {path} {body}: {v}"
    );
    assert_eq!(v["type"], "error", "{v}");
    v
}

/// A REST request that must succeed with `status` and an ack.
async fn rest_ok(node: &TestNode, method: &str, path: &str, body: Value, status: u16) -> Value {
    let (s, v) = rest(node, method, path, Some(body.clone())).await;
    assert_eq!(s, status, "{method} {path} {body}: {v}");
    assert_eq!(v["type"], "ack", "{method} {path} {body}: {v}");
    v
}

/// SHA-256 (FIPS 180-4), so that the DM name is checked against the rule and
/// not against the server's own function.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DM room of two users: `dm:` + the first 32 hex digits of
/// SHA-256(a + "\n" + b), the ids in byte order.
fn dm_name(one: &str, other: &str) -> String {
    let (a, b) = if one.as_bytes() <= other.as_bytes() {
        (one, other)
    } else {
        (other, one)
    };
    format!("dm:{}", &hex(&sha256(format!("{a}\n{b}").as_bytes()))[..32])
}

// ------------------------------------------------------- private rooms

async fn only_invited_users_join_a_private_room_and_a_join_uses_the_invitation_up(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;

    let frames = alice
        .cmd(json!({"type":"create","room":"team","private":true}))
        .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"create","room":"team","seq":1,"user_id":"alice","private":true})
    );
    assert_eq!(
        short(&frames[1]),
        json!({"type":"ack","command":"create","room":"team","seq":1})
    );
    carol
        .err(json!({"type":"join","room":"team"}), "no_such_room")
        .await;

    let frames = alice
        .cmd(json!({"type":"invite","room":"team","user":"bob"}))
        .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"invite","room":"team","seq":2,"user_id":"alice","target":"bob"})
    );
    assert_eq!(
        short(&frames[1]),
        json!({"type":"ack","command":"invite","room":"team","seq":2})
    );
    assert_eq!(frames[1]["id"], frames[0]["id"]);
    assert_eq!(bob.recv().await, notice("invite", "team", 2, "alice"));

    // Invited is not a member yet.
    for cmd in [
        json!({"type":"history","room":"team"}),
        json!({"type":"members","room":"team"}),
        json!({"type":"message","room":"team","message":"early"}),
        json!({"type":"leave","room":"team"}),
    ] {
        let e = bob.err(cmd, "not_a_member").await;
        assert_eq!(e["room"], "team", "{e}");
    }

    // A second invitation changes nothing and appends nothing.
    let frames = alice
        .cmd(json!({"type":"invite","room":"team","user":"bob"}))
        .await;
    assert_eq!(frames.len(), 1, "no event for an invitee: {frames:?}");
    assert_eq!(frames[0]["type"], "ack", "{frames:?}");
    assert_eq!(frames[0]["unchanged"], true, "{frames:?}");

    let frames = bob.cmd(json!({"type":"join","room":"team"})).await;
    assert_eq!(
        frames.len(),
        2,
        "no second notice, then join and ack: {frames:?}"
    );
    assert_eq!(
        short(&frames[0]),
        json!({"type":"join","room":"team","seq":3,"user_id":"bob"})
    );
    assert_eq!(frames[1]["seq"], 3);
    assert_eq!(event(&mut alice, "join").await["seq"], 3);
    bob.ok(json!({"type":"message","room":"team","message":"in"}))
        .await;
    assert_eq!(event(&mut alice, "message").await["message"], "in");

    alice
        .err(
            json!({"type":"invite","room":"team","user":"bob"}),
            "already_member",
        )
        .await;
    // A plain member may not invite into a private room.
    bob.err(
        json!({"type":"invite","room":"team","user":"carol"}),
        "forbidden",
    )
    .await;
    carol
        .err(json!({"type":"join","room":"team"}), "no_such_room")
        .await;

    // The join used the invitation up: after a leave, bob is an outsider.
    bob.ok(json!({"type":"leave","room":"team"})).await;
    assert_eq!(event(&mut alice, "leave").await["seq"], 5);
    bob.err(json!({"type":"join","room":"team"}), "no_such_room")
        .await;
    // So is a kicked member, until invited again.
    alice
        .ok(json!({"type":"invite","room":"team","user":"bob"}))
        .await;
    assert_eq!(bob.recv().await, notice("invite", "team", 6, "alice"));
    bob.ok(json!({"type":"join","room":"team"})).await;
    alice
        .ok(json!({"type":"kick","room":"team","user":"bob"}))
        .await;
    bob.err(json!({"type":"join","room":"team"}), "no_such_room")
        .await;

    // uninvite ends an invitation.
    let seq = alice
        .ok(json!({"type":"invite","room":"team","user":"carol"}))
        .await["seq"]
        .as_i64()
        .unwrap();
    assert_eq!(carol.recv().await, notice("invite", "team", seq, "alice"));
    let frames = alice
        .cmd(json!({"type":"uninvite","room":"team","user":"carol"}))
        .await;
    let uninvite = frames
        .iter()
        .find(|f| f["type"] == "uninvite")
        .unwrap_or_else(|| panic!("no uninvite event: {frames:?}"));
    assert_eq!(
        short(uninvite),
        json!({"type":"uninvite","room":"team","seq":seq + 1,"user_id":"alice","target":"carol"})
    );
    assert_eq!(frames.last().unwrap()["command"], "uninvite");
    alice
        .err(
            json!({"type":"uninvite","room":"team","user":"carol"}),
            "not_invited",
        )
        .await;
    carol
        .err(json!({"type":"join","room":"team"}), "no_such_room")
        .await;

    // Room names are one namespace.
    let e = carol
        .err(json!({"type":"create","room":"team"}), "room_exists")
        .await;
    assert_eq!(e["room"], "team");
}

async fn members_invite_into_public_rooms_and_only_the_inviter_or_staff_uninvite(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await;

    let frames = alice.cmd(json!({"type":"create","room":"pub"})).await;
    assert!(
        frames[0].get("private").is_none(),
        "a public room's create has no private: {}",
        frames[0]
    );
    bob.ok(json!({"type":"join","room":"pub"})).await;
    dave.ok(json!({"type":"join","room":"pub"})).await;
    assert_eq!(event(&mut bob, "join").await["user_id"], "dave");

    // Any member may invite into a public room.
    let frames = bob
        .cmd(json!({"type":"invite","room":"pub","user":"carol"}))
        .await;
    assert_eq!(
        short(&frames[0]),
        json!({"type":"invite","room":"pub","seq":4,"user_id":"bob","target":"carol"})
    );
    assert_eq!(carol.recv().await, notice("invite", "pub", 4, "bob"));
    // Only the inviter, the owner or an admin may take it back.
    dave.err(
        json!({"type":"uninvite","room":"pub","user":"carol"}),
        "forbidden",
    )
    .await;
    bob.ok(json!({"type":"uninvite","room":"pub","user":"carol"}))
        .await;
    bob.ok(json!({"type":"invite","room":"pub","user":"carol"}))
        .await;
    assert_eq!(carol.recv().await, notice("invite", "pub", 6, "bob"));
    alice
        .ok(json!({"type":"uninvite","room":"pub","user":"carol"}))
        .await;
    alice
        .err(
            json!({"type":"uninvite","room":"pub","user":"carol"}),
            "not_invited",
        )
        .await;
    // A public room needs no invitation.
    carol.ok(json!({"type":"join","room":"pub"})).await;

    // In a private room the owner and admins invite; a member neither
    // invites nor uninvites.
    alice
        .ok(json!({"type":"create","room":"priv","private":true}))
        .await;
    for who in ["bob", "dave"] {
        alice
            .ok(json!({"type":"invite","room":"priv","user":who}))
            .await;
    }
    bob.ok(json!({"type":"join","room":"priv"})).await;
    dave.ok(json!({"type":"join","room":"priv"})).await;
    alice
        .ok(json!({"type":"set_role","room":"priv","user":"bob","role":"admin"}))
        .await;
    let ack = bob
        .ok(json!({"type":"invite","room":"priv","user":"carol"}))
        .await;
    let seq = ack["seq"].as_i64().unwrap();
    let n = settle(&mut carol).await;
    assert!(
        n.contains(&notice("invite", "priv", seq, "bob")),
        "carol's frames: {n:?}"
    );
    dave.err(
        json!({"type":"invite","room":"priv","user":"erin"}),
        "forbidden",
    )
    .await;
    dave.err(
        json!({"type":"uninvite","room":"priv","user":"carol"}),
        "forbidden",
    )
    .await;
    alice
        .ok(json!({"type":"uninvite","room":"priv","user":"carol"}))
        .await;
    carol
        .err(json!({"type":"join","room":"priv"}), "no_such_room")
        .await;
}

// ---------------------------------------------------------------- moderation

async fn a_kick_ends_the_membership_and_stops_every_connection_of_the_target(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob1 = user(&node, "bob").await;
    let mut bob2 = user(&node, "bob").await;
    let mut bob3 = user(&node, "bob").await; // never subscribed to r
    let mut carol = user(&node, "carol").await;

    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob1.ok(json!({"type":"join","room":"r"})).await; // 2
    bob2.ok(json!({"type":"join","room":"r"})).await; // a member already: no event
    carol.ok(json!({"type":"join","room":"r"})).await; // 3
    assert_eq!(event(&mut alice, "join").await["seq"], 2);
    assert_eq!(event(&mut alice, "join").await["seq"], 3);
    assert_eq!(event(&mut bob1, "join").await["seq"], 3);
    assert_eq!(event(&mut bob2, "join").await["seq"], 3);

    let frames = alice
        .cmd(json!({"type":"kick","room":"r","user":"bob"}))
        .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    let kick = json!({"type":"kick","room":"r","seq":4,"user_id":"alice","target":"bob"});
    assert_eq!(short(&frames[0]), kick);
    assert_eq!(
        short(&frames[1]),
        json!({"type":"ack","command":"kick","room":"r","seq":4})
    );
    assert_eq!(short(&carol.recv().await), kick);
    alice
        .ok(json!({"type":"message","room":"r","message":"after"}))
        .await;
    assert_eq!(event(&mut carol, "message").await["message"], "after");

    // Both subscribed connections get the kick and the notice, in some
    // order, then nothing more; the third gets the notice only.
    let n = notice("kick", "r", 4, "alice");
    for (name, c) in [("bob1", &mut bob1), ("bob2", &mut bob2)] {
        let mut got: Vec<Value> = settle(c).await.iter().map(short).collect();
        got.sort_by_key(|f| f["type"].to_string());
        assert_eq!(got, vec![kick.clone(), n.clone()], "{name}");
    }
    assert_eq!(settle(&mut bob3).await, vec![n]);

    bob2.err(
        json!({"type":"message","room":"r","message":"x"}),
        "not_a_member",
    )
    .await;
    // A kick is not a ban: a public room takes the user back.
    bob2.ok(json!({"type":"join","room":"r"})).await;

    // Refusals.
    alice
        .err(
            json!({"type":"kick","room":"r","user":"dave"}),
            "no_such_member",
        )
        .await;
    carol
        .err(json!({"type":"kick","room":"r","user":"bob"}), "forbidden")
        .await;
    alice
        .err(
            json!({"type":"kick","room":"r","user":"alice"}),
            "forbidden",
        )
        .await;
    alice
        .err(json!({"type":"ban","room":"r","user":"alice"}), "forbidden")
        .await;
}

async fn a_ban_with_a_reason_keeps_the_user_out_until_unbanned(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob1 = user(&node, "bob").await;
    let mut bob2 = user(&node, "bob").await; // not subscribed
    let mut carol = user(&node, "carol").await;

    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    bob1.ok(json!({"type":"join","room":"r"})).await; // 2
    carol.ok(json!({"type":"join","room":"r"})).await; // 3
    settle(&mut alice).await;
    settle(&mut bob1).await;

    let frames = alice
        .cmd(json!({"type":"ban","room":"r","user":"bob","reason":"spam"}))
        .await;
    let ban =
        json!({"type":"ban","room":"r","seq":4,"user_id":"alice","target":"bob","reason":"spam"});
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(short(&frames[0]), ban);
    assert_eq!(
        short(&frames[1]),
        json!({"type":"ack","command":"ban","room":"r","seq":4})
    );
    alice
        .ok(json!({"type":"message","room":"r","message":"after"}))
        .await;
    let n = json!({"type":"notice","kind":"ban","room":"r","seq":4,"by":"alice","reason":"spam"});
    let mut got: Vec<Value> = settle(&mut bob1).await.iter().map(short).collect();
    got.sort_by_key(|f| f["type"].to_string());
    assert_eq!(got, vec![ban.clone(), n.clone()]);
    assert_eq!(settle(&mut bob2).await, vec![n]);

    let e = bob1.err(json!({"type":"join","room":"r"}), "banned").await;
    assert_eq!(e["room"], "r");
    bob1.err(
        json!({"type":"message","room":"r","message":"x"}),
        "not_a_member",
    )
    .await;
    alice
        .err(json!({"type":"invite","room":"r","user":"bob"}), "banned")
        .await;

    let bans = alice.reply(json!({"type":"bans","room":"r"})).await;
    assert_eq!(
        short(&bans),
        json!({"type":"bans","room":"r","bans":[{"user_id":"bob","by":"alice","reason":"spam","seq":4}]})
    );
    carol
        .err(json!({"type":"bans","room":"r"}), "forbidden")
        .await;
    alice
        .err(
            json!({"type":"ban","room":"r","user":"dave"}),
            "no_such_member",
        )
        .await;
    alice
        .err(
            json!({"type":"ban","room":"r","user":"carol","reason":"x".repeat(257)}),
            "invalid_field",
        )
        .await;

    // Without a reason, the event, the notice and the list have none.
    let frames = alice
        .cmd(json!({"type":"ban","room":"r","user":"carol","reason":"y".repeat(256)}))
        .await;
    assert_eq!(
        frames.last().unwrap()["type"],
        "ack",
        "256 characters is allowed: {frames:?}"
    );
    alice
        .ok(json!({"type":"unban","room":"r","user":"carol"}))
        .await;
    carol.ok(json!({"type":"join","room":"r"})).await; // 8 (5: "after", 6: ban, 7: unban)
    settle(&mut carol).await;
    let frames = alice
        .cmd(json!({"type":"ban","room":"r","user":"carol"}))
        .await;
    assert_eq!(
        short(&frames[frames.len() - 2]),
        json!({"type":"ban","room":"r","seq":9,"user_id":"alice","target":"carol"})
    );
    let got = settle(&mut carol).await;
    assert!(
        got.contains(&notice("ban", "r", 9, "alice")),
        "carol's frames: {got:?}"
    );
    let bans = alice.reply(json!({"type":"bans","room":"r"})).await;
    assert_eq!(
        bans["bans"],
        json!([
            {"user_id":"bob","by":"alice","reason":"spam","seq":4},
            {"user_id":"carol","by":"alice","seq":9},
        ])
    );

    let frames = alice
        .cmd(json!({"type":"unban","room":"r","user":"bob"}))
        .await;
    assert_eq!(
        short(&frames[frames.len() - 2]),
        json!({"type":"unban","room":"r","seq":10,"user_id":"alice","target":"bob"})
    );
    assert_eq!(
        short(&frames[frames.len() - 1]),
        json!({"type":"ack","command":"unban","room":"r","seq":10})
    );
    alice
        .err(
            json!({"type":"unban","room":"r","user":"bob"}),
            "not_banned",
        )
        .await;
    alice
        .err(
            json!({"type":"unban","room":"r","user":"dave"}),
            "not_banned",
        )
        .await;
    bob1.ok(json!({"type":"join","room":"r"})).await;
    let bans = alice.reply(json!({"type":"bans","room":"r"})).await;
    assert_eq!(
        bans["bans"],
        json!([{"user_id":"carol","by":"alice","seq":9}])
    );
}

async fn only_the_owner_sets_roles_and_admins_act_on_members_only(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await;
    let mut erin = user(&node, "erin").await;
    alice.ok(json!({"type":"create","room":"r"})).await;
    for c in [&mut bob, &mut carol, &mut dave, &mut erin] {
        c.ok(json!({"type":"join","room":"r"})).await; // 2..=5
    }
    settle(&mut alice).await;

    let frames = alice
        .cmd(json!({"type":"set_role","room":"r","user":"bob","role":"admin"}))
        .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"role","room":"r","seq":6,"user_id":"alice","target":"bob","role":"admin"})
    );
    assert_eq!(
        short(&frames[1]),
        json!({"type":"ack","command":"set_role","room":"r","seq":6})
    );
    let frames = alice
        .cmd(json!({"type":"set_role","room":"r","user":"bob","role":"admin"}))
        .await;
    assert_eq!(frames.len(), 1, "no event for the same role: {frames:?}");
    assert_eq!(frames[0]["unchanged"], true, "{frames:?}");

    carol
        .err(
            json!({"type":"set_role","room":"r","user":"dave","role":"admin"}),
            "forbidden",
        )
        .await;
    bob.err(
        json!({"type":"set_role","room":"r","user":"dave","role":"admin"}),
        "forbidden",
    )
    .await;
    alice
        .err(
            json!({"type":"set_role","room":"r","user":"alice","role":"member"}),
            "forbidden",
        )
        .await;
    alice
        .err(
            json!({"type":"set_role","room":"r","user":"bob","role":"god"}),
            "invalid_field",
        )
        .await;
    alice
        .err(
            json!({"type":"set_role","room":"r","user":"frank","role":"admin"}),
            "no_such_member",
        )
        .await;
    alice
        .ok(json!({"type":"set_role","room":"r","user":"carol","role":"admin"}))
        .await; // 7

    // An admin acts on members only; nobody acts on the owner.
    for (cmd, target) in [
        ("kick", "carol"),
        ("ban", "carol"),
        ("kick", "alice"),
        ("ban", "alice"),
    ] {
        bob.err(json!({"type":cmd,"room":"r","user":target}), "forbidden")
            .await;
    }
    dave.err(json!({"type":"kick","room":"r","user":"erin"}), "forbidden")
        .await;
    dave.err(json!({"type":"ban","room":"r","user":"erin"}), "forbidden")
        .await;
    dave.err(json!({"type":"bans","room":"r"}), "forbidden")
        .await;
    bob.ok(json!({"type":"kick","room":"r","user":"dave"}))
        .await; // 8
    bob.ok(json!({"type":"ban","room":"r","user":"erin","reason":"x"}))
        .await; // 9
    let bans = bob.reply(json!({"type":"bans","room":"r"})).await;
    assert_eq!(
        bans["bans"],
        json!([{"user_id":"erin","by":"bob","reason":"x","seq":9}])
    );
    bob.ok(json!({"type":"unban","room":"r","user":"erin"}))
        .await; // 10
    alice
        .err(
            json!({"type":"set_role","room":"r","user":"dave","role":"admin"}),
            "no_such_member",
        )
        .await;

    let frames = alice
        .cmd(json!({"type":"set_role","room":"r","user":"carol","role":"member"}))
        .await;
    assert_eq!(
        short(&frames[frames.len() - 2]),
        json!({"type":"role","room":"r","seq":11,"user_id":"alice","target":"carol","role":"member"})
    );
    let m = alice.reply(json!({"type":"members","room":"r"})).await;
    assert_eq!(
        roles(&m),
        role_map(&[("alice", "owner"), ("bob", "admin"), ("carol", "member")])
    );

    // Passing ownership: the old owner becomes an admin.
    let frames = alice
        .cmd(json!({"type":"set_role","room":"r","user":"bob","role":"owner"}))
        .await;
    assert_eq!(
        short(&frames[frames.len() - 2]),
        json!({"type":"role","room":"r","seq":12,"user_id":"alice","target":"bob","role":"owner"})
    );
    let m = carol.reply(json!({"type":"members","room":"r"})).await;
    assert_eq!(
        roles(&m),
        role_map(&[("alice", "admin"), ("bob", "owner"), ("carol", "member")])
    );
    alice
        .err(
            json!({"type":"set_role","room":"r","user":"carol","role":"admin"}),
            "forbidden",
        )
        .await;
    alice
        .err(json!({"type":"kick","room":"r","user":"bob"}), "forbidden")
        .await;
    alice
        .err(
            json!({"type":"set_role","room":"r","user":"bob","role":"member"}),
            "forbidden",
        )
        .await;
    bob.ok(json!({"type":"set_role","room":"r","user":"alice","role":"member"}))
        .await;
    alice
        .err(
            json!({"type":"kick","room":"r","user":"carol"}),
            "forbidden",
        )
        .await;
    let rooms = alice.reply(json!({"type":"rooms"})).await;
    assert_eq!(entry(&rooms["rooms"], "r")["role"], "member");
}

async fn the_owner_leaving_hands_the_room_to_the_first_admin_else_the_first_member(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await;
    let mut erin = user(&node, "erin").await;
    alice.ok(json!({"type":"create","room":"r"})).await; // 1
    for c in [&mut bob, &mut carol, &mut dave] {
        c.ok(json!({"type":"join","room":"r"})).await; // 2, 3, 4
    }
    // dave is made admin first, but carol joined first.
    alice
        .ok(json!({"type":"set_role","room":"r","user":"dave","role":"admin"}))
        .await; // 5
    alice
        .ok(json!({"type":"set_role","room":"r","user":"carol","role":"admin"}))
        .await; // 6
    erin.ok(json!({"type":"join","room":"r"})).await; // 7, erin watches from here

    let succession = |old: &str, new: &str, seq: i64| json!({"type":"role","room":"r","seq":seq,"user_id":old,"target":new,"role":"owner"});
    let leave = |who: &str, seq: i64| json!({"type":"leave","room":"r","seq":seq,"user_id":who});

    // The first admin to have joined, not the first promoted.
    settle(&mut alice).await;
    let frames = alice.cmd(json!({"type":"leave","room":"r"})).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(short(&frames[0]), leave("alice", 8));
    assert_eq!(frames[1]["type"], "ack");
    assert_eq!(short(&erin.recv().await), leave("alice", 8));
    assert_eq!(short(&erin.recv().await), succession("alice", "carol", 9));
    let m = erin.reply(json!({"type":"members","room":"r"})).await;
    assert_eq!(
        roles(&m),
        role_map(&[
            ("bob", "member"),
            ("carol", "owner"),
            ("dave", "admin"),
            ("erin", "member")
        ])
    );
    // The leaving owner gets nothing more from the room.
    assert!(settle(&mut alice).await.is_empty());

    // An admin still comes before bob, the earliest member.
    carol.ok(json!({"type":"leave","room":"r"})).await;
    assert_eq!(short(&erin.recv().await), leave("carol", 10));
    assert_eq!(short(&erin.recv().await), succession("carol", "dave", 11));
    // No admin left: the member who joined first.
    dave.ok(json!({"type":"leave","room":"r"})).await;
    assert_eq!(short(&erin.recv().await), leave("dave", 12));
    assert_eq!(short(&erin.recv().await), succession("dave", "bob", 13));
    settle(&mut bob).await;
    let frames = bob.cmd(json!({"type":"leave","room":"r"})).await;
    assert_eq!(short(&frames[0]), leave("bob", 14));
    assert_eq!(short(&erin.recv().await), leave("bob", 14));
    assert_eq!(short(&erin.recv().await), succession("bob", "erin", 15));
    let rooms = erin.reply(json!({"type":"rooms"})).await;
    assert_eq!(entry(&rooms["rooms"], "r")["role"], "owner");

    // The last member leaves: an empty room, no role event; the next joiner owns it.
    let frames = erin.cmd(json!({"type":"leave","room":"r"})).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(short(&frames[0]), leave("erin", 16));
    let mut frank = user(&node, "frank").await;
    let frames = frank.cmd(json!({"type":"join","room":"r"})).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"join","room":"r","seq":17,"user_id":"frank"})
    );
    let page = frank
        .reply(json!({"type":"history","room":"r","since":15}))
        .await;
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["leave", "join"], "{page}");
    let m = frank.reply(json!({"type":"members","room":"r"})).await;
    assert_eq!(roles(&m), role_map(&[("frank", "owner")]));
    let mut grace = user(&node, "grace").await;
    grace.ok(json!({"type":"join","room":"r"})).await;
    frank
        .ok(json!({"type":"set_role","room":"r","user":"grace","role":"admin"}))
        .await;
}

// ------------------------------------------------------- DMs and blocks

async fn the_caller_of_a_new_dm_gets_its_create_and_join_before_the_ack(b: Backend) {
    let node = TestNode::start(b).await;
    let mut bob = user(&node, "bob").await;
    let frames = bob.cmd(json!({"type":"dm","user":"alice"})).await;
    let got: Vec<(Value, Value)> = frames
        .iter()
        .map(|f| (f["type"].clone(), f["seq"].clone()))
        .collect();
    assert_eq!(
        got,
        [
            (json!("create"), json!(1)),
            (json!("join"), json!(2)),
            (json!("ack"), json!(2))
        ],
        "the events the dm caused, then its ack: {frames:?}"
    );
}

async fn a_dm_is_one_private_room_per_pair_whoever_asks(b: Backend) {
    // The helper that computes the expected name is SHA-256.
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        dm_name("bob", "alice"),
        "dm:1cb15457d1ddab60e205c0fe3ca2f65d"
    );

    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let dm = dm_name("alice", "bob");

    // bob asks (his id sorts second): the name sorts the ids.
    let frames = bob.cmd(json!({"type":"dm","user":"alice"})).await;
    let (join, ack) = (&frames[frames.len() - 2], &frames[frames.len() - 1]);
    let create = json!({"type":"create","room":dm,"seq":1,"user_id":"bob","private":true,"dm":true,"target":"alice"});
    let join_by = json!({"type":"join","room":dm,"seq":2,"user_id":"alice","by":"bob"});
    assert_eq!(short(join), join_by);
    assert_eq!(
        short(ack),
        json!({"type":"ack","command":"dm","room":dm,"seq":2,"with":"alice"})
    );
    assert_eq!(ack["id"], join["id"]);
    assert_eq!(alice.recv().await, notice("dm", &dm, 2, "bob"));
    let page = bob.reply(json!({"type":"history","room":dm})).await;
    let stored: Vec<Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(short)
        .collect();
    assert_eq!(stored, [create, join_by]);

    // From the other side: the same room, nothing appended.
    let frames = alice.cmd(json!({"type":"dm","user":"bob"})).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        frames[0],
        json!({"type":"ack","ref":frames[0]["ref"],"command":"dm","room":dm,"seq":2,"with":"bob"})
    );
    // Both are subscribed now.
    bob.ok(json!({"type":"message","room":dm,"message":"hi"}))
        .await;
    let m = event(&mut alice, "message").await;
    assert_eq!(
        (m["seq"].clone(), m["message"].clone()),
        (json!(3), json!("hi"))
    );
    let again = bob.reply(json!({"type":"dm","user":"alice"})).await;
    assert_eq!(
        short(&again),
        json!({"type":"ack","command":"dm","room":dm,"seq":3,"with":"alice"})
    );
    let rooms = bob.reply(json!({"type":"rooms"})).await;
    assert_eq!(
        entry(&rooms["rooms"], &dm),
        json!({"name":dm,"members":2,"last_seq":3,"private":true,"dm":true,"with":"alice","role":"member",
               "unread":0,"mentions_unread":0})
    );

    // Nobody else, ever.
    carol
        .err(json!({"type":"join","room":dm}), "no_such_room")
        .await;
    carol
        .err(json!({"type":"history","room":dm}), "no_such_room")
        .await;
    // Roles do not apply in a DM.
    for cmd in [
        json!({"type":"invite","room":dm,"user":"carol"}),
        json!({"type":"uninvite","room":dm,"user":"carol"}),
        json!({"type":"kick","room":dm,"user":"alice"}),
        json!({"type":"ban","room":dm,"user":"alice"}),
        json!({"type":"unban","room":dm,"user":"alice"}),
        json!({"type":"bans","room":dm}),
        json!({"type":"set_role","room":dm,"user":"alice","role":"admin"}),
        json!({"type":"set_role","room":dm,"user":"alice","role":"owner"}),
    ] {
        bob.err(cmd, "forbidden").await;
    }
    alice
        .err(json!({"type":"dm","user":"alice"}), "invalid_field")
        .await;
    carol
        .err(json!({"type":"create","room":"dm:x"}), "invalid_room")
        .await;
    carol
        .err(json!({"type":"create","room":dm}), "invalid_room")
        .await;
    carol
        .err(
            json!({"type":"create","room":dm_name("carol","zed"),"private":true}),
            "invalid_room",
        )
        .await;
    assert!(settle(&mut carol).await.is_empty(), "carol heard of the DM");

    // Either may leave and come back: a dm from the other adds them back
    // (with by, and a notice) ...
    alice.ok(json!({"type":"leave","room":dm})).await; // 4
    assert_eq!(event(&mut bob, "leave").await["seq"], 4);
    let frames = bob.cmd(json!({"type":"dm","user":"alice"})).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"join","room":dm,"seq":5,"user_id":"alice","by":"bob"})
    );
    assert_eq!(
        short(&frames[1]),
        json!({"type":"ack","command":"dm","room":dm,"seq":5,"with":"alice"})
    );
    assert_eq!(frames[1]["id"], frames[0]["id"]);
    let got = settle(&mut alice).await;
    assert_eq!(
        got,
        vec![notice("dm", &dm, 5, "bob")],
        "alice left: only the notice"
    );
    // ... a join ...
    alice.ok(json!({"type":"leave","room":dm})).await; // 6
    let frames = alice.cmd(json!({"type":"join","room":dm})).await;
    assert_eq!(
        short(&frames[0]),
        json!({"type":"join","room":dm,"seq":7,"user_id":"alice"})
    );
    // ... or their own dm (their join, without by).
    alice.ok(json!({"type":"leave","room":dm})).await; // 8
    let frames = alice.cmd(json!({"type":"dm","user":"bob"})).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        short(&frames[0]),
        json!({"type":"join","room":dm,"seq":9,"user_id":"alice"})
    );
    assert_eq!(
        short(&frames[1]),
        json!({"type":"ack","command":"dm","room":dm,"seq":9,"with":"bob"})
    );
    let got: Vec<i64> = settle(&mut bob)
        .await
        .iter()
        .map(|f| f["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [6, 7, 8, 9], "bob saw every change of his DM");
}

async fn a_block_refuses_dms_and_invites_from_the_blocked_user_and_nothing_else(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;

    for _ in 0..2 {
        let frames = bob.cmd(json!({"type":"block","user":"alice"})).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(short(&frames[0]), json!({"type":"ack","command":"block"}));
    }
    alice
        .err(json!({"type":"dm","user":"bob"}), "forbidden")
        .await;
    alice.ok(json!({"type":"create","room":"pub"})).await;
    alice
        .ok(json!({"type":"create","room":"priv","private":true}))
        .await;
    alice
        .err(
            json!({"type":"invite","room":"pub","user":"bob"}),
            "forbidden",
        )
        .await;
    alice
        .err(
            json!({"type":"invite","room":"priv","user":"bob"}),
            "forbidden",
        )
        .await;
    assert!(
        settle(&mut bob).await.is_empty(),
        "a refused dm or invite sends no notice"
    );

    // Others are not affected.
    carol.ok(json!({"type":"dm","user":"bob"})).await;
    assert_eq!(
        bob.recv().await,
        notice("dm", &dm_name("bob", "carol"), 2, "carol")
    );
    alice
        .ok(json!({"type":"invite","room":"priv","user":"carol"}))
        .await;
    // Nothing beyond that: bob still reads what alice says in a room.
    bob.ok(json!({"type":"join","room":"pub"})).await;
    alice
        .ok(json!({"type":"message","room":"pub","message":"still heard"}))
        .await;
    assert_eq!(event(&mut bob, "message").await["message"], "still heard");
    // The refused dm stored nothing.
    let rooms = bob.reply(json!({"type":"rooms"})).await;
    assert_eq!(
        names(&rooms["rooms"]),
        [dm_name("bob", "carol"), "pub".to_string()]
    );

    bob.err(json!({"type":"block","user":"bob"}), "invalid_field")
        .await;
    for _ in 0..2 {
        let ack = bob.reply(json!({"type":"unblock","user":"alice"})).await;
        assert_eq!(short(&ack), json!({"type":"ack","command":"unblock"}));
    }
    bob.ok(json!({"type":"unblock","user":"carol"})).await; // never blocked
    let ack = alice.ok(json!({"type":"dm","user":"bob"})).await;
    assert_eq!(ack["seq"], 2, "a new DM: {ack}");
    assert_eq!(ack["room"], dm_name("alice", "bob"));
    alice
        .ok(json!({"type":"invite","room":"priv","user":"bob"}))
        .await;
}

// ----------------------------------------------------------------- notices

async fn notices_reach_every_connection_of_the_target_and_no_one_else(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob_in_lobby = user(&node, "bob").await;
    let mut bob_idle = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    bob_in_lobby
        .ok(json!({"type":"create","room":"lobby"}))
        .await;
    carol.ok(json!({"type":"join","room":"lobby"})).await;
    settle(&mut bob_in_lobby).await;

    alice
        .ok(json!({"type":"create","room":"team","private":true}))
        .await;
    alice
        .ok(json!({"type":"invite","room":"team","user":"bob"}))
        .await;
    let dm = dm_name("alice", "bob");
    alice.ok(json!({"type":"dm","user":"bob"})).await;
    for c in [&mut bob_in_lobby, &mut bob_idle] {
        assert_eq!(
            settle(c).await,
            vec![
                notice("invite", "team", 2, "alice"),
                notice("dm", &dm, 2, "alice")
            ]
        );
    }
    assert!(settle(&mut carol).await.is_empty());
    assert!(
        settle(&mut alice).await.is_empty(),
        "the actor gets no notice"
    );
}

// ------------------------------------------------------- what users see

async fn rooms_and_members_show_each_user_what_it_may_see_with_its_role(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut eve = user(&node, "eve").await;
    let mut anon = node.client().await;

    alice.ok(json!({"type":"create","room":"pub"})).await;
    bob.ok(json!({"type":"join","room":"pub"})).await;
    alice
        .ok(json!({"type":"create","room":"priv","private":true}))
        .await;
    alice
        .ok(json!({"type":"invite","room":"priv","user":"carol"}))
        .await;
    alice.ok(json!({"type":"dm","user":"dave"})).await;
    let dm = dm_name("alice", "dave");

    let public = |role: Option<&str>| {
        let mut e = json!({"name":"pub","members":2,"last_seq":2,"private":false,"dm":false});
        if let Some(r) = role {
            e["role"] = json!(r);
            // A member's entry counts its unread messages (none here).
            e["unread"] = json!(0);
            e["mentions_unread"] = json!(0);
        }
        e
    };
    let private = |role: &str| {
        let mut e =
            json!({"name":"priv","members":1,"last_seq":2,"private":true,"dm":false,"role":role});
        if role != "invited" {
            e["unread"] = json!(0);
            e["mentions_unread"] = json!(0);
        }
        e
    };

    let rooms = alice.reply(json!({"type":"rooms"})).await;
    assert_eq!(names(&rooms["rooms"]), [dm.as_str(), "priv", "pub"]);
    assert_eq!(entry(&rooms["rooms"], "pub"), public(Some("owner")));
    assert_eq!(entry(&rooms["rooms"], "priv"), private("owner"));
    let mut d = entry(&rooms["rooms"], &dm);
    d.as_object_mut().unwrap().remove("role");
    assert_eq!(
        d,
        json!({"name":dm,"members":2,"last_seq":2,"private":true,"dm":true,"with":"dave",
               "unread":0,"mentions_unread":0})
    );

    let rooms = bob.reply(json!({"type":"rooms"})).await;
    assert_eq!(rooms["rooms"], json!([public(Some("member"))]));
    let rooms = carol.reply(json!({"type":"rooms"})).await;
    assert_eq!(rooms["rooms"], json!([private("invited"), public(None)]));
    let rooms = eve.reply(json!({"type":"rooms"})).await;
    assert_eq!(rooms["rooms"], json!([public(None)]));
    let rooms = anon.reply(json!({"type":"rooms"})).await;
    assert_eq!(rooms["rooms"], json!([public(None)]));
    let (status, list) = rest(&node, "GET", "/rooms", None).await;
    assert_eq!(status, 200);
    assert_eq!(names(&list), ["pub"]);

    let mut m = alice.reply(json!({"type":"members","room":"pub"})).await;
    let list = m["members"].as_array_mut().unwrap();
    list.sort_by_key(|x| x["user_id"].to_string());
    assert_eq!(
        m["members"],
        json!([
            {"user_id":"alice","online":true,"role":"owner","read_seq":1},
            {"user_id":"bob","online":true,"role":"member","read_seq":2},
        ])
    );
    let m = alice.reply(json!({"type":"members","room":"priv"})).await;
    assert_eq!(
        m["members"],
        json!([{"user_id":"alice","online":true,"role":"owner","read_seq":1}])
    );
    // A member of the private room sees it; promoted, the role changes.
    carol.ok(json!({"type":"join","room":"priv"})).await;
    alice
        .ok(json!({"type":"set_role","room":"priv","user":"carol","role":"admin"}))
        .await;
    let m = carol.reply(json!({"type":"members","room":"priv"})).await;
    assert_eq!(
        roles(&m),
        role_map(&[("alice", "owner"), ("carol", "admin")])
    );
    let rooms = carol.reply(json!({"type":"rooms"})).await;
    assert_eq!(
        entry(&rooms["rooms"], "priv"),
        json!({"name":"priv","members":2,"last_seq":4,"private":true,"dm":false,"role":"admin",
               "unread":0,"mentions_unread":0})
    );
}

async fn a_private_room_answers_an_outsider_exactly_like_a_missing_room(b: Backend) {
    const SECRET: &str = "hideout";
    const MISSING: &str = "nowhere";
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    alice
        .ok(json!({"type":"create","room":SECRET,"private":true}))
        .await;
    alice
        .ok(json!({"type":"message","room":SECRET,"message":"psst"}))
        .await;
    // Outsiders of every kind: never involved, kicked, banned, uninvited, left.
    let mut eve = user(&node, "eve").await;
    let mut bob = user(&node, "bob").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await;
    let mut frank = user(&node, "frank").await;
    for who in ["bob", "carol", "dave", "frank"] {
        alice
            .ok(json!({"type":"invite","room":SECRET,"user":who}))
            .await;
    }
    for c in [&mut bob, &mut carol, &mut frank] {
        c.ok(json!({"type":"join","room":SECRET})).await;
    }
    alice
        .ok(json!({"type":"kick","room":SECRET,"user":"bob"}))
        .await;
    alice
        .ok(json!({"type":"ban","room":SECRET,"user":"carol","reason":"r"}))
        .await;
    alice
        .ok(json!({"type":"uninvite","room":SECRET,"user":"dave"}))
        .await;
    frank.ok(json!({"type":"leave","room":SECRET})).await;

    let probes = |room: &str| {
        vec![
            json!({"type":"join","room":room}),
            json!({"type":"join","room":room,"since":0}),
            json!({"type":"leave","room":room}),
            json!({"type":"message","room":room,"message":"hi"}),
            json!({"type":"history","room":room}),
            json!({"type":"history","room":room,"since":0,"limit":5}),
            json!({"type":"members","room":room}),
            json!({"type":"invite","room":room,"user":"zoe"}),
            json!({"type":"uninvite","room":room,"user":"zoe"}),
            json!({"type":"kick","room":room,"user":"alice"}),
            json!({"type":"ban","room":room,"user":"alice","reason":"x"}),
            json!({"type":"unban","room":room,"user":"carol"}),
            json!({"type":"bans","room":room}),
            json!({"type":"set_role","room":room,"user":"alice","role":"admin"}),
        ]
    };
    let outsiders = [
        ("eve", &mut eve),
        ("bob (kicked)", &mut bob),
        ("carol (banned)", &mut carol),
        ("dave (uninvited)", &mut dave),
        ("frank (left)", &mut frank),
    ];
    for (who, c) in outsiders {
        for (hidden, missing) in probes(SECRET).into_iter().zip(probes(MISSING)) {
            let seen = short(&c.reply(hidden.clone()).await);
            let never = short(&c.reply(missing).await);
            assert_eq!(seen["code"], "no_such_room", "{who}: {hidden} -> {seen}");
            assert_eq!(
                seen,
                swap(&never, MISSING, SECRET),
                "{who}: {hidden} must answer like a room never created"
            );
        }
        let rooms = c.reply(json!({"type":"rooms"})).await;
        assert!(
            !names(&rooms["rooms"]).contains(&SECRET.to_string()),
            "{who}: {rooms}"
        );
        assert!(
            settle(c).await.is_empty(),
            "{who} got frames of the private room"
        );
    }
    let mut anon = node.client().await;
    let seen = short(&anon.reply(json!({"type":"members","room":SECRET})).await);
    let never = short(&anon.reply(json!({"type":"members","room":MISSING})).await);
    assert_eq!(seen["code"], "no_such_room", "{seen}");
    assert_eq!(seen, swap(&never, MISSING, SECRET));

    // A DM is a private room like any other.
    let dm = dm_name("alice", "bob");
    let never_dm = dm_name("x", "y");
    alice.ok(json!({"type":"dm","user":"bob"})).await;
    for kind in ["join", "history", "members", "leave"] {
        let seen = short(&eve.reply(json!({"type":kind,"room":dm})).await);
        let never = short(&eve.reply(json!({"type":kind,"room":never_dm})).await);
        assert_eq!(seen["code"], "no_such_room", "{seen}");
        assert_eq!(seen, swap(&never, &never_dm, &dm), "{kind} of a DM");
    }

    // The REST API, anonymous and as an outsider.
    let gets = [
        "/rooms/{}/events",
        "/rooms/{}/events?user_id=eve",
        "/rooms/{}/events?since=0&limit=5&user_id=bob",
        "/rooms/{}/members",
        "/rooms/{}/members?user_id=eve",
        "/rooms/{}/bans?user_id=carol",
    ];
    for path in gets {
        let seen = rest(&node, "GET", &path.replace("{}", SECRET), None).await;
        let never = rest(&node, "GET", &path.replace("{}", MISSING), None).await;
        assert_eq!(seen.0, 404, "GET {path}: {seen:?}");
        assert_eq!(seen.1["code"], "no_such_room", "GET {path}: {seen:?}");
        assert_eq!(seen.0, never.0);
        assert_eq!(seen.1, swap(&never.1, MISSING, SECRET), "GET {path}");
    }
    let posts = [
        ("messages", json!({"user_id":"eve","message":"hi"})),
        ("messages", json!({"user_id":"bob","message":"hi"})),
        ("join", json!({"user_id":"eve"})),
        ("join", json!({"user_id":"dave"})),
        ("leave", json!({"user_id":"frank"})),
        ("invite", json!({"user_id":"eve","user":"zoe"})),
        ("uninvite", json!({"user_id":"eve","user":"zoe"})),
        ("kick", json!({"user_id":"eve","user":"alice"})),
        ("ban", json!({"user_id":"eve","user":"alice","reason":"x"})),
        ("unban", json!({"user_id":"eve","user":"carol"})),
        (
            "role",
            json!({"user_id":"eve","user":"alice","role":"admin"}),
        ),
    ];
    for (route, body) in posts {
        let seen = rest(
            &node,
            "POST",
            &format!("/rooms/{SECRET}/{route}"),
            Some(body.clone()),
        )
        .await;
        let never = rest(
            &node,
            "POST",
            &format!("/rooms/{MISSING}/{route}"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(seen.0, 404, "POST {route} {body}: {seen:?}");
        assert_eq!(
            seen.1["code"], "no_such_room",
            "POST {route} {body}: {seen:?}"
        );
        assert_eq!(seen.0, never.0);
        assert_eq!(
            seen.1,
            swap(&never.1, MISSING, SECRET),
            "POST {route} {body}"
        );
    }
    let (status, list) = rest(&node, "GET", "/rooms", None).await;
    assert_eq!(status, 200);
    assert!(!names(&list).contains(&SECRET.to_string()), "{list}");
    assert!(!names(&list).contains(&dm), "{list}");

    // Nothing the outsiders tried was stored.
    let page = alice.reply(json!({"type":"history","room":SECRET})).await;
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "create", "message", "invite", "invite", "invite", "invite", "join", "join", "join",
            "kick", "ban", "uninvite", "leave"
        ]
    );
}

// ------------------------------------------------------------------ resume

async fn join_with_since_replays_moderation_exactly_as_history_reads_it(b: Backend) {
    let node = TestNode::start(b).await;
    let mut alice = user(&node, "alice").await;
    let mut carol = user(&node, "carol").await;
    let mut dave = user(&node, "dave").await;
    let mut erin = user(&node, "erin").await;
    let mut bob = user(&node, "bob").await;
    alice
        .ok(json!({"type":"create","room":"p","private":true}))
        .await; // 1
    alice
        .ok(json!({"type":"invite","room":"p","user":"bob"}))
        .await; // 2
    let since = bob.ok(json!({"type":"join","room":"p"})).await["seq"]
        .as_i64()
        .unwrap(); // 3
    assert_eq!(since, 3);
    bob.close().await;

    let invite = |who: &str| json!({"type":"invite","room":"p","user":who});
    let say = |m: &str| json!({"type":"message","room":"p","message":m});
    alice.ok(invite("carol")).await; // 4
    carol.ok(json!({"type":"join","room":"p"})).await; // 5
    alice
        .ok(json!({"type":"set_role","room":"p","user":"carol","role":"admin"}))
        .await; // 6
    alice.ok(say("m1")).await; // 7
    alice.ok(invite("dave")).await; // 8
    dave.ok(json!({"type":"join","room":"p"})).await; // 9
    carol
        .ok(json!({"type":"kick","room":"p","user":"dave"}))
        .await; // 10
    alice.ok(invite("erin")).await; // 11
    erin.ok(json!({"type":"join","room":"p"})).await; // 12
    carol
        .ok(json!({"type":"ban","room":"p","user":"erin","reason":"spam"}))
        .await; // 13
    alice
        .ok(json!({"type":"unban","room":"p","user":"erin"}))
        .await; // 14
    alice.ok(invite("frank")).await; // 15
    alice
        .ok(json!({"type":"uninvite","room":"p","user":"frank"}))
        .await; // 16
    alice
        .ok(json!({"type":"set_role","room":"p","user":"bob","role":"admin"}))
        .await; // 17
    carol.ok(say("m2")).await; // 18
    alice
        .ok(json!({"type":"set_role","room":"p","user":"carol","role":"owner"}))
        .await; // 19

    let mut back = user(&node, "bob").await;
    let frames = back
        .cmd(json!({"type":"join","room":"p","since":since}))
        .await;
    let (replay, ack) = frames.split_at(frames.len() - 1);
    assert_eq!(ack[0]["recovered"], true, "{}", ack[0]);
    assert_eq!(ack[0]["seq"], 19);
    assert_contiguous(replay, 4, 19);
    let kinds: Vec<&str> = replay.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "invite", "join", "role", "message", "invite", "join", "kick", "invite", "join", "ban",
            "unban", "invite", "uninvite", "role", "message", "role"
        ]
    );
    let page = back
        .reply(json!({"type":"history","room":"p","since":since}))
        .await;
    assert_eq!(page["events"], json!(replay), "replay and history differ");
    assert_eq!(page["more"], false);
    // Live events follow.
    carol.ok(say("live")).await;
    assert_eq!(event(&mut back, "message").await["seq"], 20);
}

// -------------------------------------------------------------------- REST

async fn rest_routes_answer_like_the_commands(b: Backend) {
    let node = TestNode::start(b).await;
    let n = &node;
    let ack = |command: &str, room: &str, seq: i64| json!({"type":"ack","command":command,"room":room,"seq":seq});

    let v = rest_ok(
        n,
        "POST",
        "/rooms",
        json!({"user_id":"alice","room":"crew","private":true}),
        201,
    )
    .await;
    assert_eq!(short(&v), ack("create", "crew", 1));
    let mut watcher = user(n, "alice").await;
    watcher.ok(json!({"type":"join","room":"crew"})).await;
    rest_err(
        n,
        "POST",
        "/rooms",
        json!({"user_id":"bob","room":"crew"}),
        409,
        "room_exists",
    )
    .await;
    rest_err(
        n,
        "POST",
        "/rooms",
        json!({"user_id":"bob","room":"dm:x"}),
        400,
        "invalid_room",
    )
    .await;

    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/invite",
        json!({"user_id":"alice","user":"bob"}),
        200,
    )
    .await;
    assert_eq!(short(&v), ack("invite", "crew", 2));
    assert_eq!(
        short(&event(&mut watcher, "invite").await),
        json!({"type":"invite","room":"crew","seq":2,"user_id":"alice","target":"bob"}),
        "a REST command's event reaches sockets"
    );
    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/invite",
        json!({"user_id":"alice","user":"bob"}),
        200,
    )
    .await;
    assert_eq!(v["unchanged"], true, "{v}");
    rest_err(
        n,
        "POST",
        "/rooms/crew/join",
        json!({"user_id":"carol"}),
        404,
        "no_such_room",
    )
    .await;
    let v = rest_ok(n, "POST", "/rooms/crew/join", json!({"user_id":"bob"}), 200).await;
    assert_eq!(short(&v), ack("join", "crew", 3));
    rest_err(
        n,
        "POST",
        "/rooms/crew/invite",
        json!({"user_id":"alice","user":"bob"}),
        409,
        "already_member",
    )
    .await;
    rest_err(
        n,
        "POST",
        "/rooms/crew/invite",
        json!({"user_id":"bob","user":"carol"}),
        403,
        "forbidden",
    )
    .await;
    rest_ok(
        n,
        "POST",
        "/rooms/crew/invite",
        json!({"user_id":"alice","user":"carol"}),
        200,
    )
    .await; // 4
    let (s, v) = rest(
        n,
        "POST",
        "/rooms/crew/messages",
        Some(json!({"user_id":"carol","message":"x"})),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (403, Some("not_a_member")),
        "an invitee: {v}"
    );
    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/uninvite",
        json!({"user_id":"alice","user":"carol"}),
        200,
    )
    .await;
    assert_eq!(short(&v), ack("uninvite", "crew", 5));
    rest_err(
        n,
        "POST",
        "/rooms/crew/uninvite",
        json!({"user_id":"alice","user":"carol"}),
        404,
        "not_invited",
    )
    .await;

    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/role",
        json!({"user_id":"alice","user":"bob","role":"admin"}),
        200,
    )
    .await;
    assert_eq!(short(&v), ack("set_role", "crew", 6));
    rest_err(
        n,
        "POST",
        "/rooms/crew/role",
        json!({"user_id":"bob","user":"alice","role":"member"}),
        403,
        "forbidden",
    )
    .await;
    rest_err(
        n,
        "POST",
        "/rooms/crew/role",
        json!({"user_id":"alice","user":"zed","role":"admin"}),
        404,
        "no_such_member",
    )
    .await;

    for who in ["dave", "erin", "frank"] {
        rest_ok(
            n,
            "POST",
            "/rooms/crew/invite",
            json!({"user_id":"alice","user":who}),
            200,
        )
        .await;
        rest_ok(n, "POST", "/rooms/crew/join", json!({"user_id":who}), 200).await;
    } // 7..=12
    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/kick",
        json!({"user_id":"bob","user":"dave"}),
        200,
    )
    .await;
    assert_eq!(short(&v), ack("kick", "crew", 13));
    rest_err(
        n,
        "POST",
        "/rooms/crew/kick",
        json!({"user_id":"bob","user":"dave"}),
        404,
        "no_such_member",
    )
    .await;
    rest_err(
        n,
        "POST",
        "/rooms/crew/kick",
        json!({"user_id":"frank","user":"erin"}),
        403,
        "forbidden",
    )
    .await;
    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/ban",
        json!({"user_id":"alice","user":"erin","reason":"spam"}),
        200,
    )
    .await;
    assert_eq!(short(&v), ack("ban", "crew", 14));
    rest_err(
        n,
        "POST",
        "/rooms/crew/ban",
        json!({"user_id":"alice","user":"dave"}),
        404,
        "no_such_member",
    )
    .await;
    rest_err(
        n,
        "POST",
        "/rooms/crew/ban",
        json!({"user_id":"bob","user":"alice"}),
        403,
        "forbidden",
    )
    .await;

    let (s, v) = rest(n, "GET", "/rooms/crew/bans?user_id=bob", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"type":"bans","room":"crew","bans":[{"user_id":"erin","by":"alice","reason":"spam","seq":14}]})
    );
    let (s, v) = rest(n, "GET", "/rooms/crew/bans?user_id=frank", None).await;
    assert_eq!((s, v["code"].as_str()), (403, Some("forbidden")), "{v}");
    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/unban",
        json!({"user_id":"alice","user":"erin"}),
        200,
    )
    .await;
    assert_eq!(short(&v), ack("unban", "crew", 15));
    rest_err(
        n,
        "POST",
        "/rooms/crew/unban",
        json!({"user_id":"alice","user":"erin"}),
        404,
        "not_banned",
    )
    .await;

    let (s, v) = rest(n, "GET", "/rooms/crew/members?user_id=frank", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["type"], "members");
    assert_eq!(
        roles(&v),
        role_map(&[("alice", "owner"), ("bob", "admin"), ("frank", "member")])
    );
    let (s, v) = rest(n, "GET", "/rooms/crew/members?user_id=dave", None).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("no_such_room")), "{v}");

    let v = rest_ok(
        n,
        "POST",
        "/rooms/crew/leave",
        json!({"user_id":"frank"}),
        200,
    )
    .await;
    assert_eq!(short(&v), ack("leave", "crew", 16));
    rest_ok(
        n,
        "POST",
        "/rooms",
        json!({"user_id":"alice","room":"open"}),
        201,
    )
    .await;
    rest_ok(n, "POST", "/rooms/open/join", json!({"user_id":"bob"}), 200).await;
    rest_ok(
        n,
        "POST",
        "/rooms/open/leave",
        json!({"user_id":"bob"}),
        200,
    )
    .await;
    rest_err(
        n,
        "POST",
        "/rooms/open/leave",
        json!({"user_id":"bob"}),
        403,
        "not_a_member",
    )
    .await;
    rest_err(
        n,
        "POST",
        "/rooms/open/ban",
        json!({"user_id":"alice","user":"alice"}),
        403,
        "forbidden",
    )
    .await;

    let dm = dm_name("alice", "bob");
    let v = rest_ok(n, "POST", "/dm/bob", json!({"user_id":"alice"}), 200).await;
    assert_eq!(
        short(&v),
        json!({"type":"ack","command":"dm","room":dm,"seq":2,"with":"bob"})
    );
    let v = rest_ok(n, "POST", "/dm/alice", json!({"user_id":"bob"}), 200).await;
    assert_eq!(
        short(&v),
        json!({"type":"ack","command":"dm","room":dm,"seq":2,"with":"alice"})
    );
    rest_err(
        n,
        "POST",
        "/dm/alice",
        json!({"user_id":"alice"}),
        400,
        "invalid_field",
    )
    .await;
    rest_err(
        n,
        "POST",
        &format!("/rooms/{dm}/kick"),
        json!({"user_id":"alice","user":"bob"}),
        403,
        "forbidden",
    )
    .await;

    let v = rest_ok(n, "POST", "/blocks/carol", json!({"user_id":"bob"}), 200).await;
    assert_eq!(v, json!({"type":"ack","command":"block"}));
    rest_err(
        n,
        "POST",
        "/dm/bob",
        json!({"user_id":"carol"}),
        403,
        "forbidden",
    )
    .await;
    rest_err(
        n,
        "POST",
        "/blocks/bob",
        json!({"user_id":"bob"}),
        400,
        "invalid_field",
    )
    .await;
    let e = rest_err(
        n,
        "DELETE",
        "/blocks/carol",
        json!({}),
        400,
        "invalid_field",
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("user_id"), "{e}");
    let v = rest_ok(n, "DELETE", "/blocks/carol", json!({"user_id":"bob"}), 200).await;
    assert_eq!(v, json!({"type":"ack","command":"unblock"}));
    let v = rest_ok(n, "POST", "/dm/bob", json!({"user_id":"carol"}), 200).await;
    assert_eq!(short(&v)["with"], "bob", "{v}");
}

const TOKEN_SECRET: &str = "rooms-test-secret-0123456789abcdef0123";

/// An HS256 token for `user`, valid for ten minutes.
fn token(user: &str) -> String {
    common::token_for(TOKEN_SECRET, user, 600)
}

/// A GET with the bearer token of `user`: the status and the body as JSON.
async fn get_as(node: &TestNode, user: &str, path: &str) -> (u16, Value) {
    let bearer = format!("Bearer {}", token(user));
    let (status, _, body) = http_with(
        &node.addr,
        "GET",
        path,
        &[("Authorization", bearer.as_str())],
        None,
    )
    .await;
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: {status}, body is not JSON ({e}): {body}"));
    (status, v)
}

async fn in_token_mode_get_rooms_adds_the_token_users_private_rooms(b: Backend) {
    let node = TestNode::start_with(b, &[("AUTH_SECRET", TOKEN_SECRET)]).await;
    let mut alice = Client::connect(&format!("{}?token={}", node.ws_url(), token("alice"))).await;
    assert_eq!(alice.hello["user_id"], "alice");
    alice.ok(json!({"type":"create","room":"pub"})).await;
    alice
        .ok(json!({"type":"create","room":"priv","private":true}))
        .await;
    alice
        .ok(json!({"type":"invite","room":"priv","user":"bob"}))
        .await;

    let (status, list) = get_as(&node, "alice", "/rooms").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(names(&list), ["priv", "pub"]);
    assert_eq!(
        entry(&list, "priv"),
        json!({"name":"priv","members":1,"last_seq":2,"private":true,"dm":false,"role":"owner",
               "unread":0,"mentions_unread":0})
    );
    let (_, list) = get_as(&node, "bob", "/rooms").await;
    assert_eq!(entry(&list, "priv")["role"], "invited", "{list}");
    let (_, list) = get_as(&node, "eve", "/rooms").await;
    assert_eq!(names(&list), ["pub"]);

    // The member reads it like its socket's history.
    let (status, page) = get_as(&node, "alice", "/rooms/priv/events?since=0").await;
    assert_eq!(status, 200, "{page}");
    let socket = alice
        .reply(json!({"type":"history","room":"priv","since":0}))
        .await;
    assert_eq!(page["events"], socket["events"]);
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");
    for path in ["/rooms/{}/events", "/rooms/{}/members", "/rooms/{}/bans"] {
        let seen = get_as(&node, "eve", &path.replace("{}", "priv")).await;
        let never = get_as(&node, "eve", &path.replace("{}", "gone")).await;
        assert_eq!(seen.0, 404, "{path}: {seen:?}");
        assert_eq!(seen.0, never.0, "{path}");
        assert_eq!(seen.1, swap(&never.1, "gone", "priv"), "{path}");
    }
    let (status, err) = get_as(&node, "bob", "/rooms/priv/events").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (403, Some("not_a_member")),
        "an invitee: {err}"
    );
}
