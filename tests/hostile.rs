//! Hostile input: what a client sends to break a node, or other clients.
//!
//! - U+0000 in a text field is refused when the command is parsed
//!   (PostgreSQL's `text` cannot hold it; one such message used to fail its
//!   whole write batch, so every concurrent sender got `unavailable`).
//! - One request the database refuses fails alone: the writer appends the
//!   rest of its batch one request at a time.
//! - 500 malformed frames on one connection: each gets an `error` frame
//!   with a protocol code, the connection stays open, the node stays healthy.

mod common;

use std::time::Duration;

use common::{Backend, Client, StoreEnv, TestNode};
use serde_json::{json, Value};

/// The error codes a malformed frame may get (never `internal`).
const PROTOCOL_CODES: &[&str] = &[
    "invalid_json",
    "unknown_type",
    "invalid_field",
    "invalid_room",
    "message_too_long",
    "no_such_room",
    "not_a_member",
    "user_mismatch",
    "unsupported_frame",
];

fn database_url(store: &StoreEnv) -> String {
    store
        .vars
        .iter()
        .find(|(k, _)| k == "DATABASE_URL")
        .map(|(_, v)| v.clone())
        .expect("a PostgreSQL store")
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

/// Reads frames until every ref in `refs` has its reply (an ack or an
/// error); returns the replies by ref.
async fn replies(c: &mut Client, refs: usize) -> Vec<Value> {
    let mut got: Vec<Option<Value>> = vec![None; refs];
    while got.iter().any(Option::is_none) {
        let f = c.recv().await;
        if matches!(f["type"].as_str(), Some("ack" | "error")) {
            let r = f["ref"].as_u64().unwrap_or_else(|| panic!("no ref: {f}")) as usize;
            assert!(got[r].is_none(), "two replies for ref {r}");
            got[r] = Some(f);
        }
    }
    got.into_iter().flatten().collect()
}

/// The issue's repro: one message with U+0000 among 20 of another user's,
/// sent at once, on PostgreSQL. It used to fail the whole write batch (19 of
/// the 20 got `unavailable`); now it is refused alone when it is parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_message_among_20_of_another_users_is_refused_alone() {
    let node = TestNode::start(Backend::Postgres).await;
    let mut owner = node.client().await;
    owner
        .ok(json!({"user_id":"o","type":"create","room":"r"}))
        .await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"join","room":"r"})).await;
    let mut b = node.client().await;
    b.ok(json!({"user_id":"b","type":"join","room":"r"})).await;
    while a.try_recv(Duration::from_millis(200)).await.is_some() {}

    for k in 0..10 {
        a.send(json!({"type":"message","room":"r","message":format!("m{k}"),"ref":k}))
            .await;
    }
    b.send(json!({"type":"message","room":"r","message":"bad\u{0}text","ref":"nul"}))
        .await;
    for k in 10..20 {
        a.send(json!({"type":"message","room":"r","message":format!("m{k}"),"ref":k}))
            .await;
    }
    let acks = replies(&mut a, 20).await;
    for (k, ack) in acks.iter().enumerate() {
        assert_eq!(ack["type"], "ack", "message {k}: {ack}");
    }
    let refused = loop {
        let f = b.recv().await;
        if f["ref"] == "nul" {
            break f;
        }
    };
    assert_eq!(refused["code"], "invalid_field", "{refused}");
    assert_eq!(
        refused["message"],
        "message must not contain the NUL character (U+0000)"
    );
    // client_msg_id too, and the REST path.
    b.err(
        json!({"type":"message","room":"r","message":"x","client_msg_id":"c\u{0}"}),
        "invalid_field",
    )
    .await;
    let (status, body) = node
        .http(
            "POST",
            "/rooms/r/messages",
            Some(&json!({"user_id":"b","message":"\u{0}"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("NUL"), "{body}");

    let stored = node.store.open().await.all_events().await.unwrap();
    assert_eq!(
        stored.len(),
        3 + 20,
        "create, two joins and a's 20 messages"
    );
    assert!(stored
        .iter()
        .all(|e| !e.message.as_deref().unwrap_or("").contains('\0')));
}

/// A request that passes parsing but that the database refuses fails alone:
/// the writer appends the rest of its batch one request at a time. The test
/// makes PostgreSQL refuse one message with a CHECK constraint on its own
/// database, and holds the room's row lock while 20 messages queue up, so
/// that they reach the writer as one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_fails_alone_not_its_batch() {
    let node = TestNode::start(Backend::Postgres).await;
    let url = database_url(&node.store);
    let admin = pg(&url).await;
    admin
        .batch_execute(
            "ALTER TABLE events ADD CONSTRAINT hostile_test_poison \
             CHECK (message IS DISTINCT FROM 'poison')",
        )
        .await
        .unwrap();
    let mut c = node.client().await;
    c.ok(json!({"user_id":"o","type":"create","room":"r"}))
        .await;

    let mut locker = pg(&url).await;
    let tx = locker.transaction().await.unwrap();
    tx.query("SELECT 1 FROM rooms WHERE name = 'r' FOR UPDATE", &[])
        .await
        .unwrap();
    for k in 0..20 {
        let text = if k == 10 {
            "poison".to_string()
        } else {
            format!("m{k}")
        };
        c.send(json!({"type":"message","room":"r","message":text,"ref":k}))
            .await;
    }
    // Every append waits behind the lock; the writer's next batch takes the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.rollback().await.unwrap();

    let got = replies(&mut c, 20).await;
    let mut seqs = Vec::new();
    for (k, r) in got.iter().enumerate() {
        if k == 10 {
            assert_eq!(r["code"], "unavailable", "the refused one: {r}");
        } else {
            assert_eq!(r["type"], "ack", "message {k}: {r}");
            seqs.push(r["seq"].as_i64().unwrap());
        }
    }
    assert_eq!(seqs, (2..=20).collect::<Vec<_>>(), "in order, no gap");
    node.wait_for_log(&["appending its requests one at a time"])
        .await;
    node.wait_for_log(&["append of one message in room r by o failed alone"])
        .await;
    let stored = node.store.open().await.all_events().await.unwrap();
    assert_eq!(stored.len(), 20, "the create and 19 messages");
    assert!(stored
        .iter()
        .all(|e| e.message.as_deref() != Some("poison")));
    // The client never sees the database's words.
    assert!(!got
        .iter()
        .any(|r| r.to_string().contains("hostile_test_poison")));
    // And the room goes on.
    let ack = c
        .ok(json!({"type":"message","room":"r","message":"after"}))
        .await;
    assert_eq!(ack["seq"], 21);
}

/// 500 malformed frames, built from a list of kinds, each kind several times
/// with something changed.
fn malformed_frames() -> Vec<(String, Option<&'static str>)> {
    let long = |n: usize| "x".repeat(n);
    let mut base: Vec<(String, Option<&'static str>)> = Vec::new();
    let mut add = |frame: String, code: Option<&'static str>| base.push((frame, code));

    // Not JSON, or not one object.
    for s in [
        "",
        " ",
        "{",
        "}",
        "nul",
        "{\"type\":",
        "{\"type\":\"ping\"",
        "{\"type\":\"ping\",}",
        "{'type':'ping'}",
        "[1,2]",
        "[]",
        "null",
        "42",
        "\"create\"",
        "true",
        "{\"type\":\"ping\"}{\"type\":\"ping\"}",
    ] {
        add(s.to_string(), Some("invalid_json"));
    }
    // Truncated commands.
    let whole = r#"{"user_id":"h","type":"message","room":"nope","message":"hello","client_msg_id":"c1","ref":"t"}"#;
    for cut in (1..whole.len() - 1).step_by(7) {
        add(whole[..cut].to_string(), Some("invalid_json"));
    }
    // Nesting 10,000 deep, in several places (serde_json stops at 128).
    add(
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        Some("invalid_json"),
    );
    add(
        format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)),
        Some("invalid_json"),
    );
    add(
        format!(
            "{{\"type\":\"ping\",\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        ),
        Some("invalid_json"),
    );
    // Numbers too large for any type.
    add(
        r#"{"type":"ping","ref":1e400}"#.into(),
        Some("invalid_json"),
    );
    add(
        r#"{"type":"history","room":"nope","since":-1e400}"#.into(),
        Some("invalid_json"),
    );
    add(
        r#"{"type":"history","room":"nope","since":99999999999999999999999}"#.into(),
        Some("invalid_field"),
    );
    add(
        r#"{"type":"history","room":"nope","limit":99999999999999999999999}"#.into(),
        Some("invalid_field"),
    );
    add(
        r#"{"type":"ping","ref":99999999999999999999999}"#.into(),
        Some("invalid_field"),
    );
    add(
        r#"{"type":"ping","ref":9223372036854775808}"#.into(),
        Some("invalid_field"),
    );
    add(
        r#"{"type":"ping","user_id":99999999999999999999999}"#.into(),
        Some("invalid_field"),
    );
    add(
        r#"{"type":"join","room":"nope","since":1e2}"#.into(),
        Some("invalid_field"),
    );
    // Lone surrogates.
    for field in ["type", "room", "message", "user_id", "ref", "client_msg_id"] {
        add(
            format!(r#"{{"type":"message","room":"nope","message":"m","{field}":"\ud800"}}"#),
            Some("invalid_json"),
        );
        add(
            format!(r#"{{"type":"message","room":"nope","message":"m","{field}":"a\udfffb"}}"#),
            Some("invalid_json"),
        );
    }
    // NUL and other control characters in every string field.
    for ch in [
        "\\u0000", "\\u0001", "\\u0007", "\\u001b", "\\u007f", "\\u0085",
    ] {
        let nul = ch == "\\u0000";
        add(format!(r#"{{"type":"ping{ch}"}}"#), Some("unknown_type"));
        add(
            format!(r#"{{"type":"join","room":"r{ch}"}}"#),
            Some("invalid_room"),
        );
        add(
            format!(r#"{{"type":"message","room":"nope","message":"a{ch}b"}}"#),
            Some(if nul { "invalid_field" } else { "no_such_room" }),
        );
        add(
            format!(r#"{{"type":"message","room":"nope","message":"m","client_msg_id":"c{ch}"}}"#),
            Some(if nul { "invalid_field" } else { "no_such_room" }),
        );
        // C0, DEL and C1 are all control characters (char::is_control).
        add(
            format!(r#"{{"type":"join","room":"nope","user_id":"h{ch}"}}"#),
            Some("invalid_field"),
        );
        add(
            format!(r#"{{"type":"join","room":"nope","ref":"r{ch}"}}"#),
            Some(if nul { "invalid_field" } else { "no_such_room" }),
        );
    }
    // Wrong types in every field.
    for v in ["5", "1.5", "true", "null", "[]", "{}", "[\"general\"]"] {
        add(format!(r#"{{"type":{v}}}"#), Some("unknown_type"));
        add(
            format!(r#"{{"type":"join","room":{v}}}"#),
            Some("invalid_field"),
        );
        add(
            format!(r#"{{"type":"message","room":"nope","message":{v}}}"#),
            Some("invalid_field"),
        );
        if v != "null" {
            add(
                format!(r#"{{"type":"message","room":"nope","message":"m","client_msg_id":{v}}}"#),
                Some("invalid_field"),
            );
            add(
                format!(r#"{{"type":"join","room":"nope","since":{v}}}"#),
                Some(if v == "5" {
                    "no_such_room"
                } else {
                    "invalid_field"
                }),
            );
            add(
                format!(r#"{{"type":"history","room":"nope","limit":{v}}}"#),
                Some(if v == "5" {
                    "no_such_room"
                } else {
                    "invalid_field"
                }),
            );
        }
        // user_id null counts as absent; 5 is user "5", not this connection's.
        add(
            format!(r#"{{"type":"join","room":"nope","user_id":{v}}}"#),
            Some(match v {
                "null" => "no_such_room",
                "5" => "user_mismatch",
                _ => "invalid_field",
            }),
        );
        if v != "5" {
            add(
                format!(r#"{{"type":"ping","ref":{v}}}"#),
                Some("invalid_field"),
            );
        }
    }
    // Ids, refs, rooms and user ids of 500 characters; strings of 60 KiB.
    for n in [65, 500, 60 * 1024] {
        let s = long(n);
        add(
            format!(r#"{{"type":"join","room":"{s}"}}"#),
            Some("invalid_room"),
        );
        add(
            format!(r#"{{"type":"join","room":"nope","user_id":"{s}"}}"#),
            Some("invalid_field"),
        );
        add(
            format!(r#"{{"type":"ping","ref":"{s}"}}"#),
            Some("invalid_field"),
        );
        add(
            format!(r#"{{"type":"message","room":"nope","message":"m","client_msg_id":"{s}"}}"#),
            Some("invalid_field"),
        );
        add(format!(r#"{{"type":"{s}"}}"#), Some("unknown_type"));
    }
    add(
        format!(
            r#"{{"type":"message","room":"nope","message":"{}"}}"#,
            long(60 * 1024)
        ),
        Some("message_too_long"),
    );
    add(
        format!(
            r#"{{"type":"message","room":"nope","message":"{}"}}"#,
            "\\u00e9".repeat(10_000)
        ),
        Some("message_too_long"),
    );
    // Unknown types, empty objects, fields that do not belong.
    for t in [
        "dance", "", "PING", "ping ", "hello", "ack", "error", "internal",
    ] {
        add(format!(r#"{{"type":"{t}"}}"#), Some("unknown_type"));
    }
    add("{}".into(), Some("unknown_type"));
    add(r#"{"ref":"only"}"#.into(), Some("unknown_type"));
    add(
        r#"{"type":"ping","type":"join"}"#.into(),
        Some("invalid_field"),
    );
    add(
        r#"{"type":"message","room":"nope","message":""}"#.into(),
        Some("invalid_field"),
    );
    add(
        r#"{"type":"leave","room":"nope","user_id":"someone-else"}"#.into(),
        Some("user_mismatch"),
    );
    add(
        r#"{"type":"members","room":"nope"}"#.into(),
        Some("no_such_room"),
    );
    add(
        r#"{"type":"history","room":"nope"}"#.into(),
        Some("no_such_room"),
    );

    // Each kind again with an unknown field of growing size beside it, until 500.
    let kinds = base.len();
    let mut frames = base.clone();
    let mut round = 0;
    while frames.len() < 500 {
        let (frame, code) = &base[round % kinds];
        let pad = format!("\"pad{round}\":\"{}\"", "p".repeat(round % 50));
        let padded = match frame.strip_prefix('{') {
            // Still one object when it was one (the pad goes first).
            Some("}") => format!("{{{pad}}}"),
            Some(rest) if rest.len() < 60_000 && code != &Some("invalid_json") => {
                format!("{{{pad},{rest}")
            }
            _ => frame.clone(),
        };
        frames.push((padded, *code));
        round += 1;
    }
    frames.truncate(500);
    frames
}

async fn malformed_frames_get_protocol_errors_and_the_node_stays_healthy(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut c = node.client().await;
    // The connection speaks for "h": frames naming another user get user_mismatch.
    assert_eq!(
        c.reply(json!({"type":"ping","user_id":"h"})).await["type"],
        "pong"
    );
    let frames = malformed_frames();
    assert_eq!(frames.len(), 500);
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for (i, (frame, expected)) in frames.iter().enumerate() {
        let binary = i % 50 == 49;
        if binary {
            c.send_binary(frame.clone().into_bytes()).await;
        } else {
            c.send_text(frame.clone()).await;
        }
        let reply = match tokio::time::timeout(common::FRAME_TIMEOUT, c.try_recv_or_close()).await {
            Ok(Ok(f)) => f,
            Ok(Err(code)) => panic!("frame {i} closed the connection ({code:?}): {frame:.200}"),
            Err(_) => panic!("no reply to frame {i} in time: {frame:.200}"),
        };
        let shown: String = frame.chars().take(200).collect();
        assert_eq!(reply["type"], "error", "frame {i} {shown}: {reply}");
        let code = reply["code"].as_str().unwrap_or_default();
        assert!(
            PROTOCOL_CODES.contains(&code),
            "frame {i} {shown}: {code} is not a protocol code: {reply}"
        );
        let want = if binary {
            "unsupported_frame"
        } else {
            expected.unwrap_or(code)
        };
        assert_eq!(code, want, "frame {i} {shown}: {reply}");
        *codes.entry(code.to_string()).or_default() += 1;
    }
    eprintln!("codes of 500 malformed frames: {codes:?}");

    // The same connection still works, and so does the node.
    assert_eq!(c.reply(json!({"type":"ping"})).await["type"], "pong");
    c.ok(json!({"type":"create","room":"after"})).await;
    let ack = c
        .ok(json!({"type":"message","room":"after","message":"still here"}))
        .await;
    assert_eq!(ack["seq"], 2);
    let (status, body) = node.http("GET", "/health", None).await;
    assert_eq!(status, 200, "{body}");
    let mut d = node.client().await;
    d.ok(json!({"user_id":"d","type":"join","room":"after"}))
        .await;
    let h = d.reply(json!({"type":"history","room":"after"})).await;
    assert_eq!(h["events"].as_array().map(Vec::len), Some(3), "{h}");
    let log = node.log_lines().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_protocol_errors_and_the_node_stays_healthy_sqlite() {
    malformed_frames_get_protocol_errors_and_the_node_stays_healthy(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_protocol_errors_and_the_node_stays_healthy_postgres() {
    malformed_frames_get_protocol_errors_and_the_node_stays_healthy(Backend::Postgres).await
}
