//! Connection limits and failure handling: rate limit (1008), frame size
//! (1009), slow consumers (4000), idle timeout, and an event store that goes
//! away (`unavailable`, 503, recovery).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    let reader = read_messages(healthy, N);
    // 30 MB in all, ten messages in flight at a time.
    post_in_windows(&mut poster, "r", N, &"x".repeat(50_000), &reader).await;
    let seqs = tokio::time::timeout(Duration::from_secs(60), reader.task)
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

/// A member that reads: its task collects the seqs of `n` messages in
/// arrival order, and `progress` says how many it has read so far.
struct Reader {
    task: tokio::task::JoinHandle<Vec<i64>>,
    progress: Arc<AtomicUsize>,
}

fn read_messages(mut c: Client, n: usize) -> Reader {
    let progress = Arc::new(AtomicUsize::new(0));
    let read = progress.clone();
    let task = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < n {
            let f = c.recv().await;
            if f["type"] == "message" {
                seqs.push(f["seq"].as_i64().unwrap());
                read.store(seqs.len(), Ordering::Relaxed);
            }
        }
        seqs
    });
    Reader { task, progress }
}

/// Posts `n` copies of `text` to `room`, ten in flight at a time; every one
/// must be acked. A window goes out only once `reader` has read the ones
/// before it, so that the reading member is never a slow consumer itself,
/// however slow the machine.
async fn post_in_windows(poster: &mut Client, room: &str, n: usize, text: &str, reader: &Reader) {
    for window in 0..n / 10 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while reader.progress.load(Ordering::Relaxed) < window * 10 {
            assert!(Instant::now() < deadline, "the reading member fell behind");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for k in 0..10 {
            poster
                .send(json!({"type":"message","room":room,"message":text,"ref":window * 10 + k}))
                .await;
        }
        let mut acks = 0;
        while acks < 10 {
            let f = poster.recv().await;
            assert_ne!(f["type"], "error", "{f}");
            if f["type"] == "ack" {
                acks += 1;
            }
        }
    }
}

/// The node's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// What one connection may cost the node at most (docs/protocol.md, "Slow
/// consumers"): twice the outbound bound plus the write buffer.
const WORST_PER_CONNECTION: u64 = 2 * 1_048_576 + 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_that_stop_reading_cost_a_bounded_number_of_bytes() {
    const SLOW: usize = 200;
    const N: usize = 3000;
    let node = TestNode::start(Backend::Sqlite).await;
    let mut poster = node.client().await;
    poster
        .ok(json!({"user_id":"p","type":"create","room":"r"}))
        .await;
    let mut healthy = node.client().await;
    healthy
        .ok(json!({"user_id":"h","type":"join","room":"r"}))
        .await;
    let mut slow = Vec::new();
    for i in 0..SLOW {
        // A small receive buffer, so the kernel stops taking data soon; not
        // the smallest, so that reading what is buffered up to the close
        // at the end takes seconds, not minutes.
        let mut c = Client::connect_small_buffer(&node.addr, 64 * 1024).await;
        c.ok(json!({"user_id":format!("s{i}"),"type":"join","room":"r"}))
            .await;
        slow.push(c);
    }
    // The joins' events reach the poster and the healthy reader first.
    let start = rss_bytes(node.pid());
    let pid = node.pid();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(start));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let reader = read_messages(healthy, N);
    // 12 MB in all: 3,000 messages of 4,000 characters, ten in flight at a time.
    post_in_windows(&mut poster, "r", N, &"x".repeat(4000), &reader).await;
    let seqs = tokio::time::timeout(Duration::from_secs(120), reader.task)
        .await
        .expect("the reading member gets every message in time")
        .unwrap();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + N as i64).collect::<Vec<_>>(),
        "every message once and in order"
    );
    sampler.abort();
    let growth = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(start);
    eprintln!(
        "RSS {} MiB at the start, peak growth {:.1} MiB for {SLOW} stopped readers \
         (bound {:.0} MiB)",
        start >> 20,
        growth as f64 / 1048576.0,
        (SLOW as u64 * WORST_PER_CONNECTION) as f64 / 1048576.0
    );
    assert!(
        growth < SLOW as u64 * WORST_PER_CONNECTION,
        "RSS grew by {growth} bytes"
    );
    let (_, metrics) = node.http("GET", "/metrics", None).await;
    let evicted = metrics
        .lines()
        .find(|l| l.starts_with("confab_evictions_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(evicted, Some(SLOW), "every stopped reader was evicted");
    // Each stopped reader finds, after what its buffers held, a 4000 close.
    let closes = futures_util::future::join_all(slow.iter_mut().map(|c| c.closed())).await;
    assert!(closes.iter().all(|c| *c == Some(4000)), "{closes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_replays_never_get_their_reader_evicted() {
    // The smallest bound the default limits allow: history pages stop at
    // 64 KiB, replays at 128 KiB.
    let node = TestNode::start_with(Backend::Sqlite, &[("OUTBOUND_MAX_BYTES", "262144")]).await;
    let mut c = node.client().await;
    c.ok(json!({"user_id":"u","type":"create","room":"big"}))
        .await;
    let text = "y".repeat(4000);
    for i in 0..60 {
        c.ok(json!({"type":"message","room":"big","message":text,"client_msg_id":format!("m{i}")}))
            .await;
    }
    // 61 events, about 250 KB: a page of 100 stops early and says more.
    let page = c
        .reply(json!({"type":"history","room":"big","limit":100}))
        .await;
    let events = page["events"].as_array().unwrap();
    assert!(
        page["more"] == true && events.len() < 61,
        "{}",
        events.len()
    );
    assert_eq!(events.last().unwrap()["seq"], 61, "the newest first");
    // Paging back reaches the start, every event once.
    let mut seen: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    while seen[0] > 1 {
        let page = c
            .reply(json!({"type":"history","room":"big","before":seen[0],"limit":100}))
            .await;
        let older: Vec<i64> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert!(!older.is_empty());
        seen.splice(0..0, older);
    }
    assert_eq!(seen, (1..=61).collect::<Vec<_>>());

    // A resume that would not fit 128 KiB is refused whole, as past REPLAY_LIMIT.
    let mut late = node.client().await;
    let frames = late
        .cmd(json!({"user_id":"u","type":"join","room":"big","since":1}))
        .await;
    let ack = frames.last().unwrap();
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_eq!(ack["seq"], 61);
    assert_eq!(frames.len(), 1, "nothing partial before the ack");
    // One that fits is replayed.
    let mut fits = node.client().await;
    let frames = fits
        .cmd(json!({"user_id":"u","type":"join","room":"big","since":55}))
        .await;
    assert_eq!(frames.last().unwrap()["recovered"], true);
    assert_eq!(frames.len(), 7);
    // And both connections are still served.
    c.ok(json!({"type":"message","room":"big","message":"after"}))
        .await;
    for r in [&mut late, &mut fits] {
        let f = r.recv().await;
        assert_eq!(
            (f["seq"].as_i64(), f["message"].as_str()),
            (Some(62), Some("after"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_too_many_rooms_is_refused_the_next() {
    let node = TestNode::start_with(Backend::Sqlite, &[("MAX_ROOMS_PER_CONNECTION", "2")]).await;
    let mut c = node.client().await;
    c.ok(json!({"user_id":"u","type":"create","room":"a"}))
        .await;
    c.ok(json!({"type":"create","room":"b"})).await;
    let e = c
        .err(json!({"type":"create","room":"c"}), "too_many_rooms")
        .await;
    assert_eq!(e["room"], "c");
    // Nothing was stored for the refused room.
    let rooms = c.reply(json!({"type":"rooms"})).await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 2);
    // A join of a room it is in is no new room; after a leave there is space.
    c.ok(json!({"type":"join","room":"a"})).await;
    c.ok(json!({"type":"leave","room":"b"})).await;
    c.ok(json!({"type":"create","room":"c"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_handshake_gets_503_before_any_upgrade() {
    let node = TestNode::start_with(Backend::Sqlite, &[("MAX_CONNECTIONS", "2")]).await;
    let a = node.client().await;
    let _b = node.client().await;
    let (status, _, body) = common::http_with(
        &node.addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "unavailable");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("MAX_CONNECTIONS"));
    // A closed connection gives its place back.
    a.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(node.ws_url()).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the place was not given back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_routes_are_rate_limited_per_client_address() {
    let limited = [("REST_RATE_PER_SEC", "1"), ("REST_RATE_BURST", "3")];
    let get = |node: &TestNode, xff: &'static str| {
        let addr = node.addr.clone();
        async move {
            let (status, _, body) =
                common::http_with(&addr, "GET", "/rooms", &[("X-Forwarded-For", xff)], None).await;
            (status, body)
        }
    };
    // Without a trusted proxy, X-Forwarded-For is not believed: one bucket.
    let node = TestNode::start_with(Backend::Sqlite, &limited).await;
    for xff in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        assert_eq!(get(&node, xff).await.0, 200);
    }
    let (status, body) = get(&node, "203.0.113.4").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "rate_limited"
    );
    let (status, _) = node.http("GET", "/health", None).await;
    assert_eq!(status, 200, "/health is not limited");
    // Behind a trusted proxy, each forwarded client has its own bucket.
    let mut env = limited.to_vec();
    env.push(("TRUSTED_PROXIES", "127.0.0.1"));
    let node = TestNode::start_with(Backend::Sqlite, &env).await;
    for _ in 0..3 {
        assert_eq!(get(&node, "203.0.113.1").await.0, 200);
    }
    assert_eq!(get(&node, "203.0.113.1").await.0, 429);
    assert_eq!(get(&node, "203.0.113.2").await.0, 200, "another client");
}
