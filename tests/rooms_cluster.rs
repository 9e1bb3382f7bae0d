//! Rooms with owners, private rooms, DMs, moderation and notices across two
//! nodes on one PostgreSQL and one Redis (docs/protocol.md, "Rooms with
//! owners, private rooms and direct messages"): what a kick, a ban or an
//! invite made on one node does to a user's connections on the other, DMs
//! asked for from both sides at once, resume across moderation, and
//! membership decided in the store.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Client, Cluster, OwnRedis};
use serde_json::{json, Value};

fn seq(f: &Value) -> i64 {
    f["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {f}"))
}

/// Gives the connection an identity (the first command carrying `user_id`).
async fn identify(c: &mut Client, user: &str) {
    let r = c.reply(json!({"type":"ping","user_id":user})).await;
    assert_eq!(r["type"], "pong", "{r}");
}

/// A connection on node `i` of `cluster` that speaks for `user`.
async fn client_as(cluster: &Cluster, i: usize, user: &str) -> Client {
    let mut c = cluster.client(i).await;
    identify(&mut c, user).await;
    c
}

/// Sends `v` with ref `r` and does not wait for the reply.
async fn send_ref(c: &mut Client, mut v: Value, r: &str) {
    v["ref"] = json!(r);
    c.send(v).await;
}

/// Reads frames up to the one with ref `r`: (the frames before it, it).
async fn until_ref(c: &mut Client, r: &str) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let f = c.recv().await;
        if f["ref"] == json!(r) {
            return (before, f);
        }
        before.push(f);
    }
}

/// Whether `f` is an event of `room` (not a reply, not a notice).
fn is_event_of(f: &Value, room: &str) -> bool {
    f["room"] == room
        && f["seq"].is_i64()
        && !matches!(
            f["type"].as_str(),
            Some("ack" | "error" | "notice" | "history" | "members" | "bans" | "rooms")
        )
}

/// Reads `c` until it has had the `kind` event of `room` at `at_seq` and the
/// `kind` notice for it (in either order); checks that no event of the room
/// came after the event. Returns the event and the notice.
async fn moderation_seen(c: &mut Client, room: &str, kind: &str, at_seq: i64) -> (Value, Value) {
    let mut event: Option<Value> = None;
    let mut notice: Option<Value> = None;
    let mut seen = Vec::new();
    while event.is_none() || notice.is_none() {
        let f = match c.try_recv(Duration::from_secs(10)).await {
            Some(f) => f,
            None => panic!(
                "no {kind} event and notice for seq {at_seq} of {room} within 10 s; frames: {seen:?}"
            ),
        };
        seen.push(f.clone());
        if f["type"] == "notice" && f["kind"] == kind && f["room"] == room {
            assert!(notice.is_none(), "a second {kind} notice: {seen:?}");
            notice = Some(f);
        } else if is_event_of(&f, room) {
            assert!(
                event.is_none(),
                "an event of {room} after the {kind} event: {seen:?}"
            );
            if seq(&f) == at_seq {
                assert_eq!(f["type"], kind, "{seen:?}");
                event = Some(f);
            } else {
                assert!(seq(&f) < at_seq, "an event past the {kind}: {seen:?}");
            }
        }
    }
    (event.unwrap(), notice.unwrap())
}

/// Reads `c` until a notice of `kind` for `room` arrives; returns it.
async fn wait_notice(c: &mut Client, kind: &str, room: &str) -> Value {
    let mut seen = Vec::new();
    loop {
        match c.try_recv(Duration::from_secs(10)).await {
            Some(f) if f["type"] == "notice" && f["kind"] == kind && f["room"] == room => return f,
            Some(f) => seen.push(f),
            None => panic!("no {kind} notice for {room} within 10 s; frames: {seen:?}"),
        }
    }
}

/// Reads `c` until the event of `room` with `want` seq arrives.
async fn read_to_seq(c: &mut Client, room: &str, want: i64) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let f = c.recv().await;
        if is_event_of(&f, room) {
            let s = seq(&f);
            events.push(f);
            if s >= want {
                assert_eq!(s, want, "{events:?}");
                return events;
            }
        }
    }
}

/// Checks that `c` gets no event of `room`: it answers a ping, then stays
/// quiet about the room for half a second.
async fn assert_hears_nothing_of(c: &mut Client, room: &str, why: &str) {
    let frames = c.cmd(json!({"type":"ping"})).await;
    let mut frames: Vec<Value> = frames;
    while let Some(f) = c.try_recv(Duration::from_millis(500)).await {
        frames.push(f);
    }
    let leaked: Vec<&Value> = frames.iter().filter(|f| is_event_of(f, room)).collect();
    assert!(leaked.is_empty(), "{why}: got {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_and_ban_on_one_node_cut_the_user_off_on_the_other() {
    let cluster = Cluster::start(2).await;
    let mut alice = client_as(&cluster, 0, "alice").await;
    alice.ok(json!({"type":"create","room":"lobby"})).await; // seq 1
    let mut bob = client_as(&cluster, 1, "bob").await;
    bob.ok(json!({"type":"join","room":"lobby"})).await; // 2
                                                         // Another connection of bob's, on node 0, not subscribed to the room.
    let mut bob0 = client_as(&cluster, 0, "bob").await;
    let mut dave = client_as(&cluster, 1, "dave").await;
    dave.ok(json!({"type":"join","room":"lobby"})).await; // 3
    let mut carol = client_as(&cluster, 1, "carol").await;
    let ack = carol.ok(json!({"type":"join","room":"lobby"})).await; // 4
    assert_eq!(seq(&ack), 4);
    // Node 0 has heard every join before anyone is acted on.
    read_to_seq(&mut alice, "lobby", 4).await;

    // Kick on node 0; bob's connection on node 1 gets the event and a notice.
    let kick = alice
        .ok(json!({"type":"kick","room":"lobby","user":"bob"}))
        .await;
    assert_eq!(seq(&kick), 5, "{kick}");
    let (event, notice) = moderation_seen(&mut bob, "lobby", "kick", 5).await;
    assert_eq!(event["user_id"], "alice", "{event}");
    assert_eq!(event["target"], "bob", "{event}");
    assert_eq!(notice["by"], "alice", "{notice}");
    assert_eq!(notice["seq"], 5, "{notice}");
    let notice0 = wait_notice(&mut bob0, "kick", "lobby").await;
    assert_eq!(
        notice0["seq"], 5,
        "bob's other connection, on node 0: {notice0}"
    );
    assert_eq!(notice0["by"], "alice", "{notice0}");

    // A later message reaches node 1 (carol has it) but not bob's connection.
    let m = alice
        .ok(json!({"type":"message","room":"lobby","message":"after the kick"}))
        .await;
    assert_eq!(seq(&m), 6);
    read_to_seq(&mut carol, "lobby", 6).await;
    assert_hears_nothing_of(&mut bob, "lobby", "bob was kicked").await;
    bob.err(
        json!({"type":"message","room":"lobby","message":"still here?"}),
        "not_a_member",
    )
    .await;
    // A kick is not a ban: a public room takes bob back.
    let back = bob.ok(json!({"type":"join","room":"lobby"})).await;
    assert_eq!(seq(&back), 7, "{back}");

    // Ban on node 0, with a reason.
    let ban = alice
        .ok(json!({"type":"ban","room":"lobby","user":"dave","reason":"spam"}))
        .await;
    assert_eq!(seq(&ban), 8, "{ban}");
    let (event, notice) = moderation_seen(&mut dave, "lobby", "ban", 8).await;
    assert_eq!(event["user_id"], "alice", "{event}");
    assert_eq!(event["target"], "dave", "{event}");
    assert_eq!(event["reason"], "spam", "{event}");
    assert_eq!(notice["by"], "alice", "{notice}");
    assert_eq!(notice["seq"], 8, "{notice}");
    assert_eq!(notice["reason"], "spam", "{notice}");

    let m = alice
        .ok(json!({"type":"message","room":"lobby","message":"after the ban"}))
        .await;
    assert_eq!(seq(&m), 9);
    read_to_seq(&mut carol, "lobby", 9).await;
    let bob_view = read_to_seq(&mut bob, "lobby", 9).await;
    assert!(
        bob_view.iter().any(|e| e["message"] == "after the ban"),
        "bob, back in the room, hears it: {bob_view:?}"
    );
    assert_hears_nothing_of(&mut dave, "lobby", "dave was banned").await;

    // The banned user's join is refused on both nodes.
    let e = dave
        .err(json!({"type":"join","room":"lobby"}), "banned")
        .await;
    assert_eq!(e["room"], "lobby", "{e}");
    let mut dave0 = client_as(&cluster, 0, "dave").await;
    dave0
        .err(json!({"type":"join","room":"lobby"}), "banned")
        .await;
    dave0
        .err(json!({"type":"join","room":"lobby","since":0}), "banned")
        .await;

    // Both nodes list the ban the same way.
    let mut alice1 = client_as(&cluster, 1, "alice").await;
    for c in [&mut alice, &mut alice1] {
        let bans = c.reply(json!({"type":"bans","room":"lobby"})).await;
        assert_eq!(bans["type"], "bans", "{bans}");
        assert_eq!(bans["room"], "lobby", "{bans}");
        let list = bans["bans"].as_array().expect("bans list");
        assert_eq!(list.len(), 1, "{bans}");
        assert_eq!(list[0]["user_id"], "dave", "{bans}");
        assert_eq!(list[0]["by"], "alice", "{bans}");
        assert_eq!(list[0]["reason"], "spam", "{bans}");
        assert_eq!(list[0]["seq"], 8, "{bans}");
    }
    // Dave is no longer a member anywhere; bob is again.
    let members = alice1.reply(json!({"type":"members","room":"lobby"})).await;
    let names: BTreeSet<String> = members["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members reply: {members}"))
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["alice", "bob", "carol"].map(String::from).into(),
        "{members}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_on_one_node_reaches_the_invitee_on_the_other_who_can_join() {
    let cluster = Cluster::start(2).await;
    let mut alice = client_as(&cluster, 0, "alice").await;
    let created = alice
        .ok(json!({"type":"create","room":"hideout","private":true}))
        .await;
    assert_eq!(seq(&created), 1);
    // Bob's two connections: one on each node, neither in the room.
    let mut bob = client_as(&cluster, 1, "bob").await;
    let mut bob0 = client_as(&cluster, 0, "bob").await;
    // Before the invitation the room does not exist for bob, on either node.
    bob.err(json!({"type":"join","room":"hideout"}), "no_such_room")
        .await;
    bob0.err(json!({"type":"join","room":"hideout"}), "no_such_room")
        .await;

    let invite = alice
        .ok(json!({"type":"invite","room":"hideout","user":"bob"}))
        .await;
    assert_eq!(seq(&invite), 2, "{invite}");
    for (name, c) in [("node 1", &mut bob), ("node 0", &mut bob0)] {
        let mut seen = Vec::new();
        let notice = loop {
            let f = match c.try_recv(Duration::from_secs(10)).await {
                Some(f) => f,
                None => panic!("bob's connection on {name}: no invite notice; frames: {seen:?}"),
            };
            if f["type"] == "notice" {
                break f;
            }
            seen.push(f);
        };
        assert!(
            seen.iter().all(|f| !is_event_of(f, "hideout")),
            "bob on {name} is not subscribed, yet got {seen:?}"
        );
        assert_eq!(notice["kind"], "invite", "{name}: {notice}");
        assert_eq!(notice["room"], "hideout", "{name}: {notice}");
        assert_eq!(notice["seq"], 2, "{name}: {notice}");
        assert_eq!(notice["by"], "alice", "{name}: {notice}");
    }

    // Node 1 lists the room for bob as one he is invited to.
    let rooms = bob.reply(json!({"type":"rooms"})).await;
    let entry = rooms["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("rooms reply: {rooms}"))
        .iter()
        .find(|r| r["name"] == "hideout")
        .unwrap_or_else(|| panic!("the invitee sees the room: {rooms}"))
        .clone();
    assert_eq!(entry["private"], true, "{entry}");
    assert_eq!(entry["role"], "invited", "{entry}");

    // Bob joins on node 1 and is in the room from then on.
    let frames = bob.cmd(json!({"type":"join","room":"hideout"})).await;
    let ack = frames.last().unwrap();
    assert_eq!(ack["type"], "ack", "{frames:?}");
    assert_eq!(seq(ack), 3, "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "join" && f["seq"] == 3 && f["user_id"] == "bob"),
        "its own join event before the ack: {frames:?}"
    );
    let m = alice
        .ok(json!({"type":"message","room":"hideout","message":"welcome"}))
        .await;
    assert_eq!(seq(&m), 4);
    let got = read_to_seq(&mut bob, "hideout", 4).await;
    assert_eq!(got.last().unwrap()["message"], "welcome", "{got:?}");
    // Bob's other connection, not subscribed, heard nothing of the room.
    assert_hears_nothing_of(&mut bob0, "hideout", "bob's node-0 connection did not join").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_asked_for_from_both_sides_at_once_on_two_nodes_is_one_room() {
    let cluster = Cluster::start(2).await;
    for i in 0..5 {
        let (ua, ub) = (format!("dm-a{i}"), format!("dm-b{i}"));
        let mut a = client_as(&cluster, 0, &ua).await;
        let mut b = client_as(&cluster, 1, &ub).await;
        // Both at the same moment; then both replies.
        send_ref(&mut a, json!({"type":"dm","user":ub}), "dm").await;
        send_ref(&mut b, json!({"type":"dm","user":ua}), "dm").await;
        let (_, ack_a) = until_ref(&mut a, "dm").await;
        let (_, ack_b) = until_ref(&mut b, "dm").await;
        for (ack, other) in [(&ack_a, &ub), (&ack_b, &ua)] {
            assert_eq!(ack["type"], "ack", "pair {i}: {ack}");
            assert_eq!(ack["command"], "dm", "pair {i}: {ack}");
            assert_eq!(ack["with"], json!(other), "pair {i}: {ack}");
            assert_eq!(ack["seq"], 2, "pair {i}: the room's last seq: {ack}");
        }
        let room = ack_a["room"].as_str().expect("room in the ack").to_string();
        assert_eq!(ack_b["room"], json!(room), "pair {i}: one room for both");
        let hex = room.strip_prefix("dm:").expect("dm: prefix");
        assert!(
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "pair {i}: dm: and 32 lowercase hex digits: {room}"
        );

        // The log, read on both nodes: one create, both users in once.
        for (c, who) in [(&mut a, &ua), (&mut b, &ub)] {
            let h = c
                .reply(json!({"type":"history","room":room,"since":0,"limit":1000}))
                .await;
            assert_eq!(h["type"], "history", "pair {i}, {who}: {h}");
            let events = h["events"].as_array().expect("events");
            let creates: Vec<&Value> = events.iter().filter(|e| e["type"] == "create").collect();
            assert_eq!(creates.len(), 1, "pair {i}: exactly one create: {h}");
            let create = creates[0];
            assert_eq!(create["private"], true, "{create}");
            assert_eq!(create["dm"], true, "{create}");
            let creator = create["user_id"].as_str().unwrap().to_string();
            let other = if creator == ua { &ub } else { &ua };
            assert!(creator == ua || creator == ub, "{create}");
            assert_eq!(create["target"], json!(other), "{create}");
            assert_eq!(
                events.len(),
                2,
                "pair {i}: create and the other's join: {h}"
            );
            assert_eq!(events[0], *create, "{h}");
            assert_eq!(events[1]["type"], "join", "{h}");
            assert_eq!(events[1]["user_id"], json!(other), "{h}");
            assert_eq!(events[1]["by"], json!(creator), "{h}");
            assert_contiguous_seqs(events);

            let members = c.reply(json!({"type":"members","room":room})).await;
            let names: BTreeSet<String> = members["members"]
                .as_array()
                .unwrap_or_else(|| panic!("pair {i}: members reply: {members}"))
                .iter()
                .map(|m| m["user_id"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                names,
                [ua.clone(), ub.clone()].into(),
                "pair {i}: both are members: {members}"
            );
        }

        // Both connections are subscribed: a message crosses the nodes.
        let frames = a
            .cmd(json!({"type":"message","room":room,"message":"hi"}))
            .await;
        let m = frames.last().unwrap();
        assert_eq!(m["type"], "ack", "{frames:?}");
        assert_eq!(seq(m), 3, "{m}");
        let own: Vec<&Value> = frames.iter().filter(|f| is_event_of(f, &room)).collect();
        assert_eq!(
            own.len(),
            1,
            "pair {i}: after the ack at seq 2, only its message: {frames:?}"
        );
        assert_eq!(seq(own[0]), 3, "{frames:?}");
        // Its stream continues from the ack's seq: no event of the room
        // again, just the new one.
        let got = read_to_seq(&mut b, &room, 3).await;
        assert_eq!(got.len(), 1, "pair {i}: after the ack at seq 2: {got:?}");
        assert_eq!(got[0]["message"], "hi", "{got:?}");
        let m = b
            .ok(json!({"type":"message","room":room,"message":"hello"}))
            .await;
        assert_eq!(seq(&m), 4, "{m}");
        let got = read_to_seq(&mut a, &room, 4).await;
        assert_eq!(
            got.len(),
            1,
            "pair {i}: after its own message at seq 3: {got:?}"
        );
        assert_eq!(got[0]["message"], "hello", "{got:?}");
    }
}

fn assert_contiguous_seqs(events: &[Value]) {
    common::assert_contiguous(events, 1, events.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_one_node_replays_moderation_made_on_the_other_exactly_as_history() {
    let cluster = Cluster::start(2).await;
    let mut alice = client_as(&cluster, 0, "alice").await;
    alice
        .ok(json!({"type":"create","room":"mod","private":true}))
        .await; // 1
    let mut wendy = client_as(&cluster, 1, "wendy").await;
    alice
        .ok(json!({"type":"invite","room":"mod","user":"wendy"}))
        .await; // 2
                // Like a client, wendy joins once her node has told her of the invitation.
    wait_notice(&mut wendy, "invite", "mod").await;
    let joined = wendy.ok(json!({"type":"join","room":"mod"})).await; // 3
    let since = seq(&joined);
    assert_eq!(since, 3);
    wendy.close().await;

    // While wendy is away, node 0 sees invites, joins, role changes, kicks,
    // a ban and an unban, and the owner's leave.
    let mut others = Vec::new();
    for u in ["bob", "carl", "dave", "erin", "finn"] {
        alice
            .ok(json!({"type":"invite","room":"mod","user":u}))
            .await;
        let mut c = client_as(&cluster, 0, u).await;
        c.ok(json!({"type":"join","room":"mod"})).await;
        others.push(c);
    }
    alice
        .ok(json!({"type":"invite","room":"mod","user":"gus"}))
        .await;
    alice
        .ok(json!({"type":"uninvite","room":"mod","user":"gus"}))
        .await;
    alice
        .ok(json!({"type":"set_role","room":"mod","user":"bob","role":"admin"}))
        .await;
    alice
        .ok(json!({"type":"set_role","room":"mod","user":"erin","role":"admin"}))
        .await;
    alice
        .ok(json!({"type":"message","room":"mod","message":"rules"}))
        .await;
    alice
        .ok(json!({"type":"set_role","room":"mod","user":"erin","role":"member"}))
        .await;
    // An admin kicks a member.
    others[0]
        .ok(json!({"type":"kick","room":"mod","user":"carl"}))
        .await;
    alice
        .ok(json!({"type":"ban","room":"mod","user":"dave","reason":"flood"}))
        .await;
    alice
        .ok(json!({"type":"ban","room":"mod","user":"finn"}))
        .await;
    others[0]
        .ok(json!({"type":"unban","room":"mod","user":"finn"}))
        .await;
    others[3]
        .ok(json!({"type":"message","room":"mod","message":"erin here"}))
        .await;
    // The owner leaves: ownership passes to the admin who joined first.
    let left = alice.ok(json!({"type":"leave","room":"mod"})).await;
    let m = others[0]
        .ok(json!({"type":"message","room":"mod","message":"bob owns it"}))
        .await;
    let last = seq(&m);
    assert_eq!(
        last,
        seq(&left) + 2,
        "the leave, the role event, the message"
    );

    // Wendy resumes on node 1.
    let mut wendy = client_as(&cluster, 1, "wendy").await;
    let frames = wendy
        .cmd(json!({"type":"join","room":"mod","since":since}))
        .await;
    let ack = frames.last().unwrap().clone();
    assert_eq!(ack["type"], "ack", "{frames:?}");
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut replayed: Vec<Value> = frames
        .iter()
        .filter(|f| is_event_of(f, "mod"))
        .cloned()
        .collect();
    assert_eq!(
        replayed.last().map(seq).unwrap_or(since),
        seq(&ack),
        "the ack's seq is the last event sent: {frames:?}"
    );
    // If node 1 was still behind, the rest follows live, with no gap.
    if seq(&ack) < last {
        replayed.extend(read_to_seq(&mut wendy, "mod", last).await);
    }
    let history = wendy
        .reply(json!({"type":"history","room":"mod","since":since,"limit":1000}))
        .await;
    assert_eq!(history["type"], "history", "{history}");
    assert_eq!(history["more"], false, "{history}");
    let logged = history["events"].as_array().expect("events").clone();
    common::assert_contiguous(&logged, since + 1, last);
    assert_eq!(replayed, logged, "the resume replays exactly the log");
    // The same range read on node 0.
    let h0 = others[0]
        .reply(json!({"type":"history","room":"mod","since":since,"limit":1000}))
        .await;
    assert_eq!(h0["events"], json!(logged), "both nodes serve one log");

    let kinds: Vec<&str> = logged.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for k in [
        "invite", "uninvite", "join", "role", "kick", "ban", "unban", "leave", "message",
    ] {
        assert!(kinds.contains(&k), "the range holds a {k} event: {kinds:?}");
    }
    let succession = &logged[logged.len() - 2];
    assert_eq!(succession["type"], "role", "{succession}");
    assert_eq!(succession["user_id"], "alice", "{succession}");
    assert_eq!(succession["target"], "bob", "{succession}");
    assert_eq!(succession["role"], "owner", "{succession}");
    let ban = logged
        .iter()
        .find(|e| e["type"] == "ban" && e["target"] == "dave")
        .expect("dave's ban");
    assert_eq!(ban["reason"], "flood", "{ban}");

    // Roles as the log says, on both nodes.
    for c in [&mut wendy, &mut others[0]] {
        let members = c.reply(json!({"type":"members","room":"mod"})).await;
        let mut roles: Vec<(String, String)> = members["members"]
            .as_array()
            .unwrap_or_else(|| panic!("members reply: {members}"))
            .iter()
            .map(|m| {
                (
                    m["user_id"].as_str().unwrap().to_string(),
                    m["role"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        roles.sort();
        let want: Vec<(String, String)> =
            [("bob", "owner"), ("erin", "member"), ("wendy", "member")]
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        assert_eq!(roles, want, "{members}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_kicked_on_one_node_is_refused_private_members_on_the_other_at_once() {
    // A Redis of its own: the last round stops it, so that node 1 cannot
    // hear of the kick at all and only the store can tell.
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start_on(2, redis.url()).await;
    let mut alice = client_as(&cluster, 0, "alice").await;
    alice
        .ok(json!({"type":"create","room":"vault","private":true}))
        .await;
    // Bob's subscribed connection and a second one that only asks.
    let mut bob = client_as(&cluster, 1, "bob").await;
    let mut probe = client_as(&cluster, 1, "bob").await;
    const ROUNDS: usize = 5;
    for round in 0..=ROUNDS {
        alice
            .ok(json!({"type":"invite","room":"vault","user":"bob"}))
            .await;
        wait_notice(&mut bob, "invite", "vault").await;
        bob.ok(json!({"type":"join","room":"vault"})).await;
        let members = probe.reply(json!({"type":"members","room":"vault"})).await;
        assert_eq!(
            members["type"], "members",
            "round {round}: a member may: {members}"
        );
        let mut roles: Vec<(String, String)> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["user_id"].as_str().unwrap().to_string(),
                    m["role"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        roles.sort();
        assert_eq!(
            roles,
            vec![
                ("alice".to_string(), "owner".to_string()),
                ("bob".to_string(), "member".to_string())
            ],
            "{members}"
        );

        let bus_down = round == ROUNDS;
        if bus_down {
            redis.kill();
        }
        alice
            .ok(json!({"type":"kick","room":"vault","user":"bob"}))
            .await;
        // At once, whether or not node 1 has heard of the kick yet.
        let started = Instant::now();
        let e = probe.reply(json!({"type":"members","room":"vault"})).await;
        assert_eq!(
            e["type"], "error",
            "round {round}: a kicked user sees no members: {e}"
        );
        assert_eq!(
            e["code"], "no_such_room",
            "round {round}: kicked from a private room, bob is an outsider: {e}"
        );
        let h = probe.reply(json!({"type":"history","room":"vault"})).await;
        assert_eq!(h["type"], "error", "round {round}: nor history: {h}");
        assert_eq!(h["code"], "no_such_room", "round {round}: {h}");
        eprintln!(
            "round {round}: refused {:?} after the kick's ack",
            started.elapsed()
        );
        if bus_down {
            // Nor may the kicked user post, though node 1 still thinks him in.
            let m = bob
                .reply(json!({"type":"message","room":"vault","message":"still in?"}))
                .await;
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(m["code"], "no_such_room", "{m}");
            break;
        }
        // The subscribed connection got the kick; drain it before the next round.
        let mut seen = Vec::new();
        loop {
            let f = bob.recv().await;
            let done = f["type"] == "kick" && f["target"] == "bob";
            seen.push(f);
            if done {
                break;
            }
        }
        assert!(!seen.iter().any(|f| f["type"] == "message"), "{seen:?}");
    }
}
