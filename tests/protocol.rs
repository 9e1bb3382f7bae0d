//! Every command and error code of docs/protocol.md over real sockets, on both stores.

mod common;

use std::time::Duration;

use common::{assert_contiguous, Backend, TestNode};
use serde_json::{json, Value};

on_both_stores!(
    readme_session_creates_a_room_and_posts,
    joiner_gets_its_join_event_before_the_ack_and_members_see_it,
    refusals_name_the_rule,
    repeated_client_msg_id_acks_the_original,
    leave_stops_every_connection_of_the_user,
    history_pages_both_ways,
    rooms_and_members_report_state_and_presence,
    identity_is_taken_from_the_first_valid_user_id,
    malformed_commands_get_protocol_errors,
    rest_api_reads_and_posts_like_the_socket,
    join_with_since_replays_what_was_missed,
    join_with_since_past_the_replay_limit_is_not_recovered,
    a_resume_is_served_from_memory_until_a_delete_changes_the_log,
);

async fn readme_session_creates_a_room_and_posts(b: Backend) {
    let node = TestNode::start(b).await;
    let mut c = node.client().await;
    assert_eq!(c.hello["protocol"], 1);
    assert!(c.hello["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(c.hello["user_id"], Value::Null);

    let frames = c
        .cmd(json!({"user_id":"1","type":"create","room":"general"}))
        .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["type"], "create");
    assert_eq!(frames[0]["seq"], 1);
    assert_eq!(frames[0]["user_id"], "1");
    assert!(frames[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(frames[1]["type"], "ack");
    assert_eq!(frames[1]["command"], "create");
    assert_eq!(frames[1]["seq"], 1);
    assert_eq!(frames[1]["id"], frames[0]["id"]);

    let frames = c
        .cmd(json!({"user_id":"1","type":"message","room":"general","message":"Hello World!"}))
        .await;
    assert_eq!(frames[0]["type"], "message");
    assert_eq!(frames[0]["message"], "Hello World!");
    assert_eq!(frames[0]["seq"], 2);
    assert_eq!(frames[1]["type"], "ack");
    assert_eq!(frames[1]["seq"], 2);
    assert_eq!(frames[1]["command"], "message");

    let r = c.reply(json!({"type":"ping"})).await;
    assert_eq!(r["type"], "pong");
}

async fn joiner_gets_its_join_event_before_the_ack_and_members_see_it(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    let mut b2 = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    let frames = b2
        .cmd(json!({"user_id":"b","type":"join","room":"r"}))
        .await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["type"], "join");
    assert_eq!(frames[0]["user_id"], "b");
    assert_eq!(frames[1]["type"], "ack");
    assert_eq!(frames[1]["seq"], 2);
    let seen = a.recv().await;
    assert_eq!(
        (seen["type"].clone(), seen["seq"].clone()),
        (json!("join"), json!(2))
    );

    // A second join by a member appends nothing and acks the room's last seq.
    let frames = b2.cmd(json!({"type":"join","room":"r"})).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["seq"], 2);

    b2.ok(json!({"type":"message","room":"r","message":"hi"}))
        .await;
    let m = a.recv().await;
    assert_eq!(
        (m["message"].clone(), m["seq"].clone()),
        (json!("hi"), json!(3))
    );
}

async fn refusals_name_the_rule(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    let mut x = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    let e = a
        .err(json!({"type":"create","room":"r"}), "room_exists")
        .await;
    assert_eq!(e["room"], "r");
    x.err(
        json!({"user_id":"x","type":"join","room":"nope"}),
        "no_such_room",
    )
    .await;
    x.err(
        json!({"type":"message","room":"r","message":"hi"}),
        "not_a_member",
    )
    .await;
    x.err(json!({"type":"leave","room":"r"}), "not_a_member")
        .await;
    x.err(json!({"type":"history","room":"r"}), "not_a_member")
        .await;
    x.err(json!({"type":"members","room":"nope"}), "no_such_room")
        .await;
    // Nothing refused was stored.
    let page = a.reply(json!({"type":"history","room":"r"})).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

async fn repeated_client_msg_id_acks_the_original(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    let first = a
        .cmd(json!({"type":"message","room":"r","message":"once","client_msg_id":"c-1"}))
        .await;
    let ack = first.last().unwrap();
    assert_eq!(ack["seq"], 2);
    assert!(ack.get("duplicate").is_none());
    // The retry (say after a reconnect) appends nothing and gets no event.
    let again = a
        .cmd(json!({"type":"message","room":"r","message":"once","client_msg_id":"c-1"}))
        .await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["duplicate"], true);
    assert_eq!(again[0]["seq"], 2);
    assert_eq!(again[0]["id"], ack["id"]);
    // The same id in the same batch window from another connection of the user.
    let mut a2 = node.client().await;
    let dup = a2
        .reply(
            json!({"user_id":"a","type":"message","room":"r","message":"x","client_msg_id":"c-1"}),
        )
        .await;
    assert_eq!(dup["duplicate"], true);
    let page = a.reply(json!({"type":"history","room":"r"})).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
}

async fn leave_stops_every_connection_of_the_user(b: Backend) {
    let node = TestNode::start(b).await;
    let mut owner = node.client().await;
    let mut u1 = node.client().await;
    let mut u2 = node.client().await;
    owner
        .ok(json!({"user_id":"o","type":"create","room":"r"}))
        .await;
    u1.ok(json!({"user_id":"u","type":"join","room":"r"})).await;
    u2.ok(json!({"user_id":"u","type":"join","room":"r"})).await;
    // u2's join (the user is a member already) adds no event.
    assert_eq!(owner.recv().await["type"], "join");
    owner
        .ok(json!({"type":"message","room":"r","message":"before"}))
        .await;
    let m = u1.recv().await;
    assert_eq!(m["message"], "before", "{m}");
    let m = u2.recv().await;
    assert_eq!(m["message"], "before", "{m}");

    let frames = u1.cmd(json!({"type":"leave","room":"r"})).await;
    assert_eq!(frames[0]["type"], "leave");
    assert_eq!(frames[1]["type"], "ack");
    // The other connection of the same user gets the leave, then nothing more.
    let l = u2.recv().await;
    assert_eq!(l["type"], "leave", "{l}");
    assert_eq!(owner.recv().await["type"], "leave");
    owner
        .ok(json!({"type":"message","room":"r","message":"after"}))
        .await;
    assert!(u2.try_recv(Duration::from_millis(300)).await.is_none());
    assert!(u1.try_recv(Duration::from_millis(100)).await.is_none());
    u2.err(
        json!({"type":"message","room":"r","message":"x"}),
        "not_a_member",
    )
    .await;
}

async fn history_pages_both_ways(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    for i in 0..10 {
        a.ok(json!({"type":"message","room":"r","message":format!("m{i}")}))
            .await;
    }
    // seqs: 1 create, 2..=11 messages.
    let latest = a
        .reply(json!({"type":"history","room":"r","limit":3}))
        .await;
    assert_eq!(latest["type"], "history");
    assert_contiguous(latest["events"].as_array().unwrap(), 9, 11);
    assert_eq!(latest["more"], true);
    let before = a
        .reply(json!({"type":"history","room":"r","before":9,"limit":3}))
        .await;
    assert_contiguous(before["events"].as_array().unwrap(), 6, 8);
    assert_eq!(before["more"], true);
    let first = a
        .reply(json!({"type":"history","room":"r","before":3,"limit":5}))
        .await;
    assert_contiguous(first["events"].as_array().unwrap(), 1, 2);
    assert_eq!(first["more"], false);
    let since = a
        .reply(json!({"type":"history","room":"r","since":2,"limit":4}))
        .await;
    assert_contiguous(since["events"].as_array().unwrap(), 3, 6);
    assert_eq!(since["more"], true);
    let tail = a
        .reply(json!({"type":"history","room":"r","since":8}))
        .await;
    assert_contiguous(tail["events"].as_array().unwrap(), 9, 11);
    assert_eq!(tail["more"], false);
    let both = a
        .reply(json!({"type":"history","room":"r","since":2,"before":6,"limit":2}))
        .await;
    assert_contiguous(both["events"].as_array().unwrap(), 3, 4);
    assert_eq!(both["more"], true);
    let all = a.reply(json!({"type":"history","room":"r"})).await;
    assert_contiguous(all["events"].as_array().unwrap(), 1, 11);
    assert_eq!(all["more"], false);
    assert_eq!(all["events"][1]["message"], "m0");
}

async fn rooms_and_members_report_state_and_presence(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"beta"}))
        .await;
    a.ok(json!({"type":"create","room":"alpha"})).await;
    let mut bee = node.client().await;
    bee.ok(json!({"user_id":"b","type":"join","room":"beta"}))
        .await;
    let rooms = a.reply(json!({"type":"rooms"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([
            {"name":"alpha","members":1,"last_seq":1,"private":false,"dm":false,"role":"owner",
             "unread":0,"mentions_unread":0},
            {"name":"beta","members":2,"last_seq":2,"private":false,"dm":false,"role":"owner",
             "unread":0,"mentions_unread":0}
        ])
    );
    let online = |m: &Value, who: &str| {
        m["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["user_id"] == who)
            .map(|x| x["online"].as_bool().unwrap())
    };
    let m = a.reply(json!({"type":"members","room":"beta"})).await;
    assert_eq!(online(&m, "a"), Some(true));
    assert_eq!(online(&m, "b"), Some(true));
    bee.close().await;
    let mut offline = false;
    for _ in 0..50 {
        let m = a.reply(json!({"type":"members","room":"beta"})).await;
        if online(&m, "b") == Some(false) {
            offline = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        offline,
        "b should go offline after closing its only connection"
    );
}

async fn identity_is_taken_from_the_first_valid_user_id(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    // A failing command still sets the identity.
    a.err(
        json!({"user_id":7,"type":"join","room":"nope"}),
        "no_such_room",
    )
    .await;
    a.err(
        json!({"user_id":"8","type":"create","room":"r"}),
        "user_mismatch",
    )
    .await;
    let ack = a
        .ok(json!({"user_id":"7","type":"create","room":"r"}))
        .await;
    assert_eq!(ack["seq"], 1);
    let page = a.reply(json!({"type":"history","room":"r"})).await;
    assert_eq!(
        page["events"][0]["user_id"], "7",
        "an integer id is read as a string"
    );

    let mut anon = node.client().await;
    let e = anon
        .err(json!({"type":"create","room":"s"}), "invalid_field")
        .await;
    assert!(e["message"].as_str().unwrap().contains("user_id"));
    anon.err(
        json!({"user_id":"","type":"create","room":"s"}),
        "invalid_field",
    )
    .await;
    anon.err(
        json!({"user_id":"x\u{0007}y","type":"create","room":"s"}),
        "invalid_field",
    )
    .await;
    // rooms and ping need no identity.
    assert_eq!(anon.reply(json!({"type":"rooms"})).await["type"], "rooms");

    let mut q = common::Client::connect(&format!("{}?user_id=q1", node.ws_url())).await;
    assert_eq!(q.hello["user_id"], "q1");
    q.ok(json!({"type":"join","room":"r"})).await;
    q.err(
        json!({"user_id":"q2","type":"leave","room":"r"}),
        "user_mismatch",
    )
    .await;
}

async fn malformed_commands_get_protocol_errors(b: Backend) {
    let node = TestNode::start_with(b, &[("MAX_MESSAGE_CHARS", "10")]).await;
    let mut c = node.client().await;
    c.send_text("not json".into()).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "invalid_json");
    assert!(e.get("ref").is_none());
    c.send_text("[1]".into()).await;
    assert_eq!(c.recv().await["code"], "invalid_json");
    c.err(json!({"type":"dance"}), "unknown_type").await;
    c.err(json!({"nothing":true}), "unknown_type").await;
    let e = c.err(json!({"type":"join"}), "invalid_field").await;
    assert!(e["message"].as_str().unwrap().contains("room"));
    c.err(
        json!({"user_id":"u","type":"join","room":"no spaces"}),
        "invalid_room",
    )
    .await;
    c.err(
        json!({"type":"create","room":"x".repeat(65)}),
        "invalid_room",
    )
    .await;
    c.ok(json!({"type":"create","room":"r"})).await;
    c.err(
        json!({"type":"message","room":"r","message":"01234567890"}),
        "message_too_long",
    )
    .await;
    c.err(
        json!({"type":"message","room":"r","message":""}),
        "invalid_field",
    )
    .await;
    c.err(
        json!({"type":"history","room":"r","limit":0}),
        "invalid_field",
    )
    .await;
    c.err(
        json!({"type":"join","room":"r","since":-1}),
        "invalid_field",
    )
    .await;
    // An invalid ref is refused without a ref.
    c.send(json!({"type":"ping","ref":{"x":1}})).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "invalid_field");
    assert!(e.get("ref").is_none());
    // Integer refs are echoed as integers.
    c.send(json!({"type":"ping","ref":42})).await;
    assert_eq!(c.recv().await, json!({"type":"pong","ref":42}));
    c.send_binary(vec![1, 2, 3]).await;
    assert_eq!(c.recv().await["code"], "unsupported_frame");
    // The connection is still open and working after every error.
    c.ok(json!({"type":"message","room":"r","message":"still ok"}))
        .await;
}

async fn rest_api_reads_and_posts_like_the_socket(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;

    let (status, body) = node
        .http(
            "POST",
            "/rooms/r/messages",
            Some(&json!({"user_id":"a","message":"via http","client_msg_id":"h1"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let ev: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (ev["type"].clone(), ev["seq"].clone()),
        (json!("message"), json!(2))
    );
    let live = a.recv().await;
    assert_eq!(live["message"], "via http", "a REST post reaches sockets");

    let (status, body) = node
        .http(
            "POST",
            "/rooms/r/messages",
            Some(&json!({"user_id":"a","message":"via http","client_msg_id":"h1"})),
        )
        .await;
    assert_eq!(
        status, 200,
        "a repeated client_msg_id gives the original: {body}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["id"],
        ev["id"]
    );
    let (status, body) = node
        .http(
            "POST",
            "/rooms/r/messages",
            Some(&json!({"user_id":"z","message":"x"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "not_a_member"
    );
    let (status, _) = node
        .http(
            "POST",
            "/rooms/nope/messages",
            Some(&json!({"user_id":"a","message":"x"})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = node
        .http("POST", "/rooms/r/messages", Some(&json!({"message":"x"})))
        .await;
    assert_eq!(status, 400);

    let (status, body) = node
        .http("GET", "/rooms/r/events?since=1&limit=5", None)
        .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_contiguous(page["events"].as_array().unwrap(), 2, 2);
    assert_eq!(page["more"], false);
    let (status, _) = node.http("GET", "/rooms/r/events?limit=5000", None).await;
    assert_eq!(status, 400);

    let (status, body) = node.http("GET", "/rooms", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([{"name":"r","members":1,"last_seq":2,"private":false,"dm":false}])
    );

    let (status, body) = node.http("GET", "/health", None).await;
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "healthy");
    let (status, body) = node.http("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("confab_events_committed_total"), "{body}");
    let (status, body) = node.http("GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("<html"));
}

async fn join_with_since_replays_what_was_missed(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    let mut reader = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    reader
        .ok(json!({"user_id":"b","type":"join","room":"r"}))
        .await;
    a.recv().await;
    for i in 0..5 {
        a.ok(json!({"type":"message","room":"r","message":format!("m{i}")}))
            .await;
    }
    // The reader saw up to seq 4 and reconnects.
    for _ in 0..5 {
        reader.recv().await;
    }
    reader.close().await;
    for i in 5..8 {
        a.ok(json!({"type":"message","room":"r","message":format!("m{i}")}))
            .await;
    }
    // seqs: 1 create, 2 join, 3..=10 messages.
    let mut back = node.client().await;
    let frames = back
        .cmd(json!({"user_id":"b","type":"join","room":"r","since":4}))
        .await;
    let (events, ack) = frames.split_at(frames.len() - 1);
    assert_contiguous(events, 5, 10);
    assert_eq!(ack[0]["recovered"], true);
    assert_eq!(ack[0]["seq"], 10);
    a.ok(json!({"type":"message","room":"r","message":"live"}))
        .await;
    assert_eq!(back.recv().await["seq"], 11);
}

async fn join_with_since_past_the_replay_limit_is_not_recovered(b: Backend) {
    let node = TestNode::start_with(b, &[("REPLAY_LIMIT", "3")]).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    for i in 0..6 {
        a.ok(json!({"type":"message","room":"r","message":format!("m{i}")}))
            .await;
    }
    let mut c = node.client().await;
    let frames = c
        .cmd(json!({"user_id":"a","type":"join","room":"r","since":1}))
        .await;
    assert_eq!(frames.len(), 1, "nothing partial is replayed: {frames:?}");
    assert_eq!(frames[0]["recovered"], false);
    assert_eq!(frames[0]["seq"], 7);
    // Within the limit it recovers.
    let mut d = node.client().await;
    let frames = d
        .cmd(json!({"user_id":"a","type":"join","room":"r","since":4}))
        .await;
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[3]["recovered"], true);
    a.ok(json!({"type":"message","room":"r","message":"live"}))
        .await;
    assert_eq!(c.recv().await["seq"], 8, "live events follow the ack's seq");
}

/// `history` of room r past seq 2.
fn since_2() -> Value {
    json!({"type":"history","room":"r","since":2,"limit":100})
}

/// The value of a counter in the node's /metrics.
async fn counter(node: &TestNode, name: &str) -> u64 {
    let (_, body) = node.http("GET", "/metrics", None).await;
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics"))
}

async fn a_resume_is_served_from_memory_until_a_delete_changes_the_log(b: Backend) {
    let node = TestNode::start(b).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    for i in 0..5 {
        a.ok(json!({"type":"message","room":"r","message":format!("m{i}")}))
            .await;
    }
    // seqs: 1 create, 2..=6 messages. A resume from 2 comes from memory.
    let mut b1 = node.client().await;
    let mut frames = b1
        .cmd(json!({"user_id":"a","type":"join","room":"r","since":2}))
        .await;
    assert_eq!(frames.pop().unwrap()["recovered"], true);
    assert_eq!(json!(frames), b1.reply(since_2()).await["events"]);
    assert_eq!(counter(&node, "confab_replays_from_memory_total").await, 1);

    // A delete erases seq 3's text in the store: the next resume must show
    // that, so it is read from the store, not from what was delivered.
    a.ok(json!({"type":"delete","room":"r","seq":3})).await;
    let mut b2 = node.client().await;
    let mut frames = b2
        .cmd(json!({"user_id":"a","type":"join","room":"r","since":2}))
        .await;
    assert_eq!(frames.pop().unwrap()["recovered"], true);
    assert_eq!(frames[0]["seq"], 3);
    assert!(frames[0].get("message").is_none(), "{}", frames[0]);
    assert_eq!(json!(frames), b2.reply(since_2()).await["events"]);
    assert_eq!(counter(&node, "confab_replays_total").await, 2);
    assert_eq!(counter(&node, "confab_replays_from_memory_total").await, 1);

    // Events after the delete are served from memory again.
    a.ok(json!({"type":"message","room":"r","message":"m5"}))
        .await;
    let mut b3 = node.client().await;
    let mut frames = b3
        .cmd(json!({"user_id":"a","type":"join","room":"r","since":7}))
        .await;
    assert_eq!(frames.pop().unwrap()["recovered"], true);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["message"], "m5");
    assert_eq!(counter(&node, "confab_replays_from_memory_total").await, 2);
}
