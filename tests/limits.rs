//! Connection limits and failure handling: rate limit (1008), frame size
//! (1009), slow consumers (4000), idle timeout, and an event store that goes
//! away (`unavailable`, 503, recovery).

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Client, CutProxy, TestNode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_rate_limit_is_refused_then_closed_with_1008() {
    let node = TestNode::start_with(
        Backend::Sqlite,
        &[
            ("RATE_LIMIT_PER_SEC", "1"),
            ("RATE_LIMIT_BURST", "3"),
            ("RATE_LIMIT_CLOSE_AFTER", "5"),
        ],
    )
    .await;
    let mut c = node.client().await;
    for i in 0..3 {
        c.send(json!({"type":"ping","ref":i})).await;
    }
    for _ in 0..3 {
        assert_eq!(c.recv().await["type"], "pong", "the burst passes");
    }
    for i in 0..20 {
        c.send(json!({"type":"ping","ref":i})).await;
    }
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), c.try_recv_or_close()).await {
            Ok(Ok(f)) if f["code"] == "rate_limited" => limited += 1,
            Ok(Ok(f)) if f["type"] == "pong" => {} // a token refilled meanwhile
            Ok(Ok(f)) => panic!("unexpected {f}"),
            Ok(Err(code)) => break code,
            Err(_) => panic!("no close after {limited} refusals"),
        }
    };
    assert_eq!(
        limited, 5,
        "refusals up to RATE_LIMIT_CLOSE_AFTER, then the close"
    );
    assert_eq!(code, Some(1008));
    // Another connection is not affected.
    let mut d = node.client().await;
    assert_eq!(d.reply(json!({"type":"ping"})).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_maximum_closes_with_1009() {
    let node = TestNode::start_with(Backend::Sqlite, &[("MAX_FRAME_BYTES", "1024")]).await;
    let mut c = node.client().await;
    assert_eq!(c.hello["limits"]["max_frame_bytes"], 1024);
    c.send(json!({"type":"ping","pad":"x".repeat(900)})).await;
    assert_eq!(c.recv().await["type"], "pong", "under the limit is fine");
    c.send(json!({"type":"ping","pad":"x".repeat(2000)})).await;
    assert_eq!(c.closed().await, Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_evicted_with_4000_and_slows_nobody() {
    const N: usize = 600;
    let node = TestNode::start_with(
        Backend::Sqlite,
        &[
            ("SESSION_MAILBOX", "256"),
            ("MAX_MESSAGE_CHARS", "60000"),
            ("MAX_FRAME_BYTES", "262144"),
        ],
    )
    .await;
    let mut poster = node.client().await;
    poster
        .ok(json!({"user_id":"p","type":"create","room":"r"}))
        .await;
    let mut slow = node.client().await;
    slow.ok(json!({"user_id":"s","type":"join","room":"r"}))
        .await;
    let mut healthy = node.client().await;
    healthy
        .ok(json!({"user_id":"h","type":"join","room":"r"}))
        .await;
    poster.recv().await;
    poster.recv().await;
    // The healthy reader drains while the slow one reads nothing at all.
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < N {
            let f = healthy.recv().await;
            if f["type"] == "message" {
                seqs.push(f["seq"].as_i64().unwrap());
            }
        }
        seqs
    });
    // 30 MB in all, ten messages in flight at a time.
    let big = "x".repeat(50_000);
    for window in 0..N / 10 {
        for k in 0..10 {
            poster
                .send(json!({"type":"message","room":"r","message":big,"ref":window * 10 + k}))
                .await;
        }
        let mut acks = 0;
        while acks < 10 {
            if poster.recv().await["type"] == "ack" {
                acks += 1;
            }
        }
    }
    let seqs = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the healthy client gets every message in time")
        .unwrap();
    assert_eq!(seqs, (4..4 + N as i64).collect::<Vec<_>>());
    // The slow client finds, after what was already in its buffers, a 4000 close.
    assert_eq!(slow.closed().await, Some(4000));
    let (_, metrics) = node.http("GET", "/metrics", None).await;
    assert!(
        metrics.contains("confab_evictions_total{node="),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_dropped_after_the_idle_timeout() {
    let node = TestNode::start_with(
        Backend::Sqlite,
        &[
            ("HEARTBEAT_INTERVAL_SECS", "1"),
            ("CLIENT_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let c = node.client().await;
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let started = Instant::now();
    let mut c: Client = c;
    assert_eq!(
        c.closed().await,
        None,
        "dropped without a close frame (1006)"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // A client that reads (and so answers pings) stays.
    let mut d = node.client().await;
    assert!(d.try_recv(Duration::from_secs(4)).await.is_none());
    assert_eq!(d.reply(json!({"type":"ping"})).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_appends_are_unavailable_and_the_node_recovers() {
    let store = common::StoreEnv::new(Backend::Postgres).await;
    let url = store.vars[0].1.clone();
    let (target, _) = common::reroute_url(&url, "x");
    let proxy = CutProxy::start(target).await;
    let (_, via_proxy) = common::reroute_url(&url, &format!("127.0.0.1:{}", proxy.port));
    let mut store = store;
    store.vars = vec![("DATABASE_URL".into(), via_proxy)];
    let node = TestNode::spawn(store, Vec::new()).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;

    proxy.cut();
    let started = Instant::now();
    let e = a
        .err(
            json!({"type":"message","room":"r","message":"lost?"}),
            "unavailable",
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "unavailable within 2 s, took {:?}",
        started.elapsed()
    );
    assert!(
        !e["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("postgres"),
        "no database text leaks: {e}"
    );
    a.err(json!({"type":"history","room":"r"}), "unavailable")
        .await;
    let (status, body) = node.http("GET", "/health", None).await;
    assert_eq!(status, 503, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["services"]["postgres"], "down");
    // The socket stays open through the outage.
    assert_eq!(a.reply(json!({"type":"ping"})).await["type"], "pong");

    proxy.restore();
    let mut ack = None;
    for _ in 0..50 {
        let r = a
            .reply(json!({"type":"message","room":"r","message":"back"}))
            .await;
        if r["type"] == "ack" {
            ack = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ack = ack.expect("appends work again once PostgreSQL is back");
    assert_eq!(ack["seq"], 2, "nothing refused was stored");
    let (status, _) = node.http("GET", "/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_answers_unavailable_and_stores_nothing_of_it() {
    let node = TestNode::start_with(
        Backend::Sqlite,
        &[("WRITER_QUEUE", "1"), ("WRITER_BATCH_MAX", "1")],
    )
    .await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    a.send_numbered("r", 300).await;
    let mut acked = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeSet::new();
    while acked.len() + refused.len() < 300 {
        let f = a.recv().await;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("ack"), _) => {
                acked.insert(f["ref"].as_i64().unwrap());
            }
            (Some("error"), Some("unavailable")) => {
                refused.insert(f["ref"].as_i64().unwrap());
            }
            (Some("message"), _) => {}
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "a queue of one cannot take 300 at once"
    );
    let store = node.store.open().await;
    let stored: std::collections::BTreeSet<i64> = store
        .all_events()
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.message.as_deref()?.strip_prefix('m')?.parse().ok())
        .collect();
    assert_eq!(stored, acked, "exactly the acked messages are stored");
}
