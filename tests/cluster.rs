//! Several nodes on one PostgreSQL and one Redis, behind the project's nginx
//! configuration: one order everywhere, nothing lost across a node's crash or
//! a Redis restart, membership decided in the store, presence across nodes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Client, Cluster, OwnRedis};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

fn seq(f: &Value) -> i64 {
    f["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {f}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_600_messages_arrive_in_one_identical_order() {
    let cluster = Cluster::start(3).await;
    let mut owner = cluster.client(0).await;
    owner
        .ok(json!({"user_id":"owner","type":"create","room":"all"}))
        .await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        c.ok(json!({"user_id":format!("u{i}"),"type":"join","room":"all"}))
            .await;
        clients.push(c);
    }
    // seq 1 create, 2..=4 joins; each client joined after the previous ones.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                for k in 0..200 {
                    c.send(json!({"type":"message","room":"all","message":format!("{i}:{k}")}))
                        .await;
                }
                let mut seqs = Vec::new();
                let mut acks = 0;
                while acks < 200 || seqs.len() < 600 {
                    let f = c.recv().await;
                    match f["type"].as_str() {
                        Some("ack") => acks += 1,
                        Some("message") => seqs.push(seq(&f)),
                        Some("join") => {}
                        other => panic!("unexpected {other:?}: {f}"),
                    }
                }
                seqs
            })
        })
        .collect();
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.unwrap());
    }
    let want: Vec<i64> = (5..605).collect();
    for (i, v) in views.iter().enumerate() {
        assert_eq!(
            v, &want,
            "client on node {i}: every message once, in seq order"
        );
    }
    let stored = cluster.store.open().await.all_events().await.unwrap();
    let seqs: Vec<i64> = stored.iter().map(|e| e.seq).collect();
    let unique: BTreeSet<i64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 604);
    assert_eq!(
        unique.into_iter().collect::<Vec<_>>(),
        (1..=604).collect::<Vec<_>>()
    );
    let repairs = metric(&cluster, "confab_gap_repairs_total").await;
    eprintln!("gap repairs per node in the 3 x 200 test: {repairs:?}");
}

async fn metric(cluster: &Cluster, name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for n in cluster.nodes.iter().flatten() {
        let (_, body) = n.http("GET", "/metrics", None).await;
        let v = body
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push(v);
    }
    out
}

/// Reads a room's events; on a dropped connection reconnects to `url` and
/// resumes with `since`. Returns every seq received, until `target` is reached.
async fn resilient_reader(
    url: String,
    user: String,
    mut c: Client,
    mut last: i64,
    mut target: watch::Receiver<i64>,
) -> (Vec<i64>, usize) {
    let mut seqs = Vec::new();
    let mut reconnects = 0;
    loop {
        let goal = *target.borrow();
        if goal > 0 && last >= goal {
            return (seqs, reconnects);
        }
        tokio::select! {
            r = c.try_recv_or_close() => match r {
                Ok(f) if f["type"] == "message" => {
                    last = seq(&f);
                    seqs.push(last);
                }
                Ok(f) if f["type"] == "ack" => {}
                Ok(f) if f["type"] == "error" => panic!("{user}: {f}"),
                Ok(_) => {}
                Err(_) => {
                    reconnects += 1;
                    // nginx sends the reconnect to a live node.
                    let mut again = None;
                    for _ in 0..50 {
                        match tokio::time::timeout(
                            Duration::from_secs(2),
                            tokio_tungstenite::connect_async(url.as_str()),
                        )
                        .await
                        {
                            Ok(Ok(_)) => {
                                again = Some(Client::connect(&url).await);
                                break;
                            }
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    c = again.expect("reconnect through nginx");
                    c.send(json!({"user_id":user,"type":"join","room":"flow","since":last,"ref":"resume"})).await;
                }
            },
            _ = target.changed() => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_loses_nothing_for_clients_that_resume_through_nginx() {
    let mut cluster = Cluster::start(3).await;
    let url = cluster.start_nginx();
    let mut poster = cluster.client(0).await;
    poster
        .ok(json!({"user_id":"poster","type":"create","room":"flow"}))
        .await;
    // Six readers through nginx (least_conn spreads them over the nodes).
    let (target_tx, target_rx) = watch::channel(0i64);
    let mut readers = Vec::new();
    for i in 0..6 {
        let user = format!("r{i}");
        let mut c = Client::connect(&url).await;
        let ack = c
            .ok(json!({"user_id":user,"type":"join","room":"flow"}))
            .await;
        readers.push(tokio::spawn(resilient_reader(
            url.clone(),
            user,
            c,
            seq(&ack),
            target_rx.clone(),
        )));
    }
    let first_message = 8; // 1 create + 6 joins
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut acked = Vec::new();
    let (mut ptx, mut prx) = poster.split();
    let sender = tokio::spawn(async move {
        for k in 0..300 {
            ptx.send(json!({"type":"message","room":"flow","message":format!("m{k}")}))
                .await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    while acked.len() < 300 {
        let f = prx.recv().await;
        if f["type"] == "ack" {
            acked.push(seq(&f));
            if acked.len() == 100 {
                cluster.kill9(2);
            }
        }
    }
    sender.await.unwrap();
    let last = *acked.last().unwrap();
    target_tx.send(last).unwrap();
    let mut total_reconnects = 0;
    for r in readers {
        let (seqs, reconnects) = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("every reader catches up")
            .unwrap();
        total_reconnects += reconnects;
        assert_eq!(
            seqs,
            (first_message..=last).collect::<Vec<_>>(),
            "every acked event once, in order"
        );
    }
    assert!(
        total_reconnects >= 1,
        "some readers were on the killed node"
    );
    let stored: BTreeSet<i64> = cluster
        .store
        .open()
        .await
        .all_events()
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    for s in &acked {
        assert!(stored.contains(s), "acked seq {s} is in PostgreSQL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_while_messages_flow_loses_and_doubles_nothing() {
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start_on(2, redis.url()).await;
    let mut poster = cluster.client(0).await;
    poster
        .ok(json!({"user_id":"p","type":"create","room":"flow"}))
        .await;
    let mut reader = cluster.client(1).await;
    let ack = reader
        .ok(json!({"user_id":"q","type":"join","room":"flow"}))
        .await;
    assert_eq!(seq(&ack), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut ptx, mut prx) = poster.split();
    let sender = tokio::spawn(async move {
        for k in 0..200 {
            ptx.send(json!({"type":"message","room":"flow","message":format!("m{k}")}))
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut acked = Vec::new();
    let mut health_during = None;
    while acked.len() < 200 {
        let f = prx.recv().await;
        if f["type"] == "ack" {
            acked.push(seq(&f));
            if acked.len() == 50 {
                redis.kill();
            }
            if acked.len() == 100 {
                health_during = Some(cluster.node(1).http("GET", "/health", None).await.0);
                redis.restart();
            }
        } else if f["type"] == "error" {
            panic!("a node without Redis still commits and acks: {f}");
        }
    }
    sender.await.unwrap();
    assert_eq!(health_during, Some(503), "/health reports Redis down");
    let last = *acked.last().unwrap();
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seqs.last().copied().unwrap_or(0) < last {
        assert!(
            Instant::now() < deadline,
            "reader stuck at {:?}",
            seqs.last()
        );
        let f = reader.recv().await;
        if f["type"] == "message" {
            seqs.push(seq(&f));
        }
    }
    assert_eq!(seqs, (3..=last).collect::<Vec<_>>(), "once each, in order");
    let repairs = metric(&cluster, "confab_gap_repairs_total").await;
    eprintln!("gap repairs per node across the Redis restart: {repairs:?}");
    let (status, _) = cluster.node(1).http("GET", "/health", None).await;
    assert_eq!(status, 200, "healthy again");
    // The restarted Redis lost every presence key: node 0 writes its users
    // again, and node 1 sees p online within PRESENCE_TTL / 2 and a tick.
    wait_for(&mut reader, "flow", "p", true, Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_node_stops_showing_other_nodes_users_online() {
    let mut redis = OwnRedis::start();
    let cluster = Cluster::start_on(2, redis.url()).await;
    let mut p = cluster.client(0).await;
    p.ok(json!({"user_id":"p","type":"create","room":"away"}))
        .await;
    let mut q = cluster.client(1).await;
    q.ok(json!({"user_id":"q","type":"join","room":"away"}))
        .await;
    wait_for(&mut q, "away", "p", true, Duration::from_secs(2)).await;
    redis.kill();
    // Node 1 cannot tell a live node 0 from a dead one: after PRESENCE_TTL
    // without Redis it stops vouching for node 0's users, as it would for a
    // node that died. Its own users stay online.
    let forgotten = wait_for(&mut q, "away", "p", false, Duration::from_secs(20)).await;
    assert!(online(&mut q, "away", "q").await, "q is on this node");
    eprintln!("remote user offline {forgotten:?} after Redis went away");
}

/// Whether `members` of `room`, asked through `c`, says `who` is online.
async fn online(c: &mut Client, room: &str, who: &str) -> bool {
    let m = c.reply(json!({"type":"members","room":room})).await;
    m["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members reply: {m}"))
        .iter()
        .any(|x| x["user_id"] == who && x["online"] == true)
}

/// Asks `members` until `who`'s `online` is `want`; how long that took.
async fn wait_for(c: &mut Client, room: &str, who: &str, want: bool, within: Duration) -> Duration {
    let started = Instant::now();
    while online(c, room, who).await != want {
        assert!(
            started.elapsed() < within,
            "{who} online={want} in {room} not seen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_on_one_node_refuses_the_next_message_on_another() {
    let cluster = Cluster::start(2).await;
    let mut owner = cluster.client(0).await;
    owner
        .ok(json!({"user_id":"o","type":"create","room":"r"}))
        .await;
    let mut on_a = cluster.client(0).await;
    let mut on_b = cluster.client(1).await;
    on_a.ok(json!({"user_id":"w","type":"join","room":"r"}))
        .await;
    on_b.ok(json!({"user_id":"w","type":"join","room":"r"}))
        .await;
    on_a.ok(json!({"type":"leave","room":"r"})).await;
    // At once, before node B may have heard of it: the store decides.
    let frames = on_b
        .cmd(json!({"type":"message","room":"r","message":"too late"}))
        .await;
    assert_eq!(frames.last().unwrap()["code"], "not_a_member", "{frames:?}");
    // B's connection of that user got the leave and nothing after it.
    let mut got_leave = frames.iter().any(|f| f["type"] == "leave");
    while let Some(f) = on_b.try_recv(Duration::from_millis(500)).await {
        if f["type"] == "leave" {
            got_leave = true;
        }
    }
    assert!(got_leave);
    owner
        .ok(json!({"type":"message","room":"r","message":"after"}))
        .await;
    assert!(on_b.try_recv(Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_seen_on_every_node_and_ends_with_the_connection_or_the_node() {
    let mut cluster = Cluster::start(3).await;
    let mut owner = cluster.client(0).await;
    owner
        .ok(json!({"user_id":"o","type":"create","room":"r"}))
        .await;
    let mut u = cluster.client(1).await;
    u.ok(json!({"user_id":"u","type":"join","room":"r"})).await;
    let mut v = cluster.client(2).await;
    v.ok(json!({"user_id":"v","type":"join","room":"r"})).await;

    wait_for(&mut owner, "r", "u", true, Duration::from_secs(2)).await;
    wait_for(&mut owner, "r", "v", true, Duration::from_secs(2)).await;
    u.close().await;
    let closed = wait_for(&mut owner, "r", "u", false, Duration::from_secs(3)).await;
    cluster.kill9(2);
    let died = wait_for(&mut owner, "r", "v", false, Duration::from_secs(20)).await;
    eprintln!("offline after close: {closed:?}; after the node died: {died:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_serves_the_same_rooms_and_history() {
    let mut cluster = Cluster::start(2).await;
    let mut a = cluster.client(0).await;
    a.ok(json!({"user_id":"a","type":"create","room":"one"}))
        .await;
    a.ok(json!({"type":"create","room":"two"})).await;
    for k in 0..20 {
        a.ok(json!({"type":"message","room":"one","message":format!("m{k}")}))
            .await;
    }
    let late = cluster.add_node().await;
    let mut l = cluster.client(late).await;
    let mut b = cluster.client(1).await;
    let rooms_a = a.reply(json!({"type":"rooms"})).await["rooms"].clone();
    // The late node loaded its state from the store: equal at once.
    // The same user's view (`rooms` gives an identified user its `role`).
    assert_eq!(
        l.reply(json!({"user_id":"a","type":"rooms"})).await["rooms"],
        rooms_a
    );
    // A running peer follows the bus: equal within moments.
    let started = Instant::now();
    while b.reply(json!({"user_id":"a","type":"rooms"})).await["rooms"] != rooms_a {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "node 1 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = |c: &'static str| json!({"user_id":"a","type":"history","room":c,"limit":100});
    let ha = a.reply(h("one")).await["events"].clone();
    assert_eq!(l.reply(h("one")).await["events"], ha);
    // And it takes part in the live order at once.
    l.ok(json!({"type":"message","room":"one","message":"from the late node"}))
        .await;
    let f = a.recv().await;
    assert_eq!(f["message"], "from the late node");
    assert_eq!(seq(&f), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_the_channel_sees_every_event_as_json() {
    let cluster = Cluster::start(1).await;
    let client = redis::Client::open(cluster.redis_url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&cluster.channel).await.unwrap();
    let mut a = cluster.client(0).await;
    a.ok(json!({"user_id":"a","type":"create","room":"watched"}))
        .await;
    a.ok(json!({"type":"message","room":"watched","message":"hello redis"}))
        .await;
    a.ok(json!({"type":"leave","room":"watched"})).await;
    let mut stream = pubsub.on_message();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("published in time")
            .expect("message");
        let v: Value = serde_json::from_slice(msg.get_payload_bytes()).expect("JSON");
        seen.push(v);
    }
    // Each message is one envelope: a header a watcher can read, and the
    // event exactly as clients receive it.
    let events: Vec<&Value> = seen.iter().map(|v| &v["event"]).collect();
    let kinds: Vec<&str> = events.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["create", "message", "leave"]);
    assert_eq!(events[1]["message"], "hello redis");
    assert_eq!(events[1]["node"], "node-0");
    assert_eq!(events.iter().map(|v| seq(v)).collect::<Vec<_>>(), [1, 2, 3]);
    for (v, kind) in seen.iter().zip(kinds) {
        assert_eq!(v["kind"], kind);
        assert_eq!(v["room"], "watched");
        assert_eq!(v["seq"], v["event"]["seq"]);
        assert_eq!(v["node"], "node-0");
        assert_eq!(v["user"], "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_envelope_with_an_invalid_room_is_dropped_and_logged() {
    let cluster = Cluster::start(1).await;
    let mut a = cluster.client(0).await;
    a.ok(json!({"user_id":"a","type":"create","room":"real"}))
        .await;
    let client = redis::Client::open(cluster.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let forged = json!({
        "v": 1, "node": "forger", "room": "bad room", "seq": 2, "kind": "message", "user": "x",
        "event": {"type":"message","room":"real","seq":2,"id":1,"user_id":"x",
                  "message":"forged","node":"forger","at":"2026-01-01T00:00:00.000000Z"}
    });
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&cluster.channel)
        .arg(forged.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let node = cluster.node(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logged = node
            .log_lines()
            .iter()
            .any(|l| l.contains("not a valid envelope") && l.contains("invalid room"));
        if logged {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the forged envelope was not logged:\n{}",
            node.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        a.try_recv(Duration::from_millis(300)).await.is_none(),
        "a dropped envelope delivers nothing"
    );
    // The node goes on as before: the next message is seq 2.
    let ack = a
        .ok(json!({"type":"message","room":"real","message":"real one"}))
        .await;
    assert_eq!(ack["seq"], 2);
}

const BUS_SECRET: &str = "cluster-test-bus-secret-0123456789abcdef";

/// Waits up to 5 s for a node's counter to reach `at_least`.
async fn wait_for_counter(node: &common::TestNode, name: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = node.counter(name).await;
        if v >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {v}, not {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A well-formed envelope for `room` with `seq`, as a forger would write it.
fn forged(room: &str, seq: i64, user: &str, text: &str) -> (confab::protocol::Header, String) {
    use confab::protocol::{EventKind, Header, RoomName, UserId};
    let header = Header {
        node: "forger".into(),
        room: RoomName::parse(room).unwrap(),
        seq,
        kind: EventKind::Message,
        user: UserId::parse(user).unwrap(),
        to: None,
    };
    let event = json!({"type":"message","room":room,"seq":seq,"id":999,"user_id":user,
                       "message":text,"node":"forger","at":"2026-01-01T00:00:00.000000Z"});
    (header, event.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_bus_secret_take_each_others_events_and_drop_forged_ones() {
    use confab::protocol::BusKey;
    let cluster = Cluster::start_with(2, &[("BUS_SECRET", BUS_SECRET)]).await;
    let watcher = redis::Client::open(cluster.redis_url.as_str()).unwrap();
    let mut pubsub = watcher.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&cluster.channel).await.unwrap();

    let mut a = cluster.client(0).await;
    a.ok(json!({"user_id":"a","type":"create","room":"sealed"}))
        .await;
    let mut b = cluster.client(1).await;
    b.ok(json!({"user_id":"b","type":"join","room":"sealed"}))
        .await;
    a.ok(json!({"type":"message","room":"sealed","message":"signed hello"}))
        .await;
    // Node 1 took node 0's signed envelope.
    let f = b.recv().await;
    assert_eq!((f["message"].as_str(), seq(&f)), (Some("signed hello"), 3));

    // Every envelope on the channel ends with its signature.
    let mut stream = pubsub.on_message();
    let mut captured = Vec::new();
    while captured.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("published in time")
            .expect("message");
        let text = String::from_utf8(msg.get_payload_bytes().to_vec()).unwrap();
        let v: Value = serde_json::from_str(&text).expect("JSON");
        let sig = v["sig"]
            .as_str()
            .unwrap_or_else(|| panic!("no sig: {text}"));
        assert!(
            sig.len() == 64 && sig.bytes().all(|c| c.is_ascii_hexdigit()),
            "{sig}"
        );
        captured.push(text);
    }

    // A well-formed envelope for the next seq: unsigned, signed with another
    // secret, and a captured signed one with its text changed.
    let (header, event) = forged("sealed", 4, "a", "forged");
    cluster.publish_raw(header.encode(&event)).await;
    let wrong = BusKey::new(b"not-the-cluster-secret-0123456789abcdef");
    cluster
        .publish_raw(header.encode_signed(&event, Some(&wrong)))
        .await;
    let altered = captured[2].replace("signed hello", "signed hellp");
    assert_ne!(altered, captured[2]);
    cluster.publish_raw(altered).await;
    for i in 0..2 {
        let node = cluster.node(i);
        node.wait_for_log(&["not a valid envelope", "unsigned"])
            .await;
        let bad = node
            .wait_for_log(&["not a valid envelope", "bad signature"])
            .await;
        assert!(
            !bad.contains(BUS_SECRET),
            "the secret is never logged: {bad}"
        );
        wait_for_counter(node, "confab_bus_errors_total", 3).await;
    }
    // A captured signed envelope published again: its seq was delivered, so
    // the sequencer drops it as stale.
    cluster.publish_raw(captured[2].clone()).await;
    assert!(
        a.try_recv(Duration::from_millis(500)).await.is_none(),
        "nothing forged or replayed reaches node 0's client"
    );
    assert!(
        b.try_recv(Duration::from_millis(100)).await.is_none(),
        "nothing forged or replayed reaches node 1's client"
    );
    // The room goes on at the seq the forgery claimed, on both nodes.
    let ack = b
        .ok(json!({"type":"message","room":"sealed","message":"real"}))
        .await;
    assert_eq!(ack["seq"], 4);
    let f = a.recv().await;
    assert_eq!((f["message"].as_str(), seq(&f)), (Some("real"), 4));
    for node in cluster.nodes.iter().flatten() {
        assert!(
            !node.log_lines().iter().any(|l| l.contains(BUS_SECRET)),
            "BUS_SECRET appears in a log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_whose_event_is_not_an_object_or_disagrees_with_the_header_are_dropped() {
    let cluster = Cluster::start(1).await;
    let mut a = cluster.client(0).await;
    a.ok(json!({"user_id":"a","type":"create","room":"real"}))
        .await;
    let (header, event) = forged("real", 2, "a", "forged");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (header.encode("[1,2,3]").into(), "not a JSON object"),
        (header.encode("\"text\"").into(), "not a JSON object"),
        (
            header
                .encode(&event.replace("\"room\":\"real\"", "\"room\":\"other\""))
                .into(),
            "room disagrees",
        ),
        (
            header
                .encode(&event.replace("\"seq\":2", "\"seq\":7"))
                .into(),
            "seq disagrees",
        ),
        (
            header
                .encode(&event.replace("\"user_id\":\"a\"", "\"user_id\":\"mallory\""))
                .into(),
            "user_id disagrees",
        ),
        (header.encode("{}").into(), "not an event"),
        (b"not json at all".to_vec(), "not an envelope"),
        (
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into(),
            "invalid type: sequence",
        ),
        (b"\xff\xfe{\"v\":1}".to_vec(), "not an envelope"),
    ];
    for (payload, _) in &cases {
        cluster.publish_raw(payload.clone()).await;
    }
    let node = cluster.node(0);
    for (_, why) in &cases {
        node.wait_for_log(&["not a valid envelope", why]).await;
    }
    wait_for_counter(node, "confab_bus_errors_total", cases.len() as u64).await;
    assert!(
        a.try_recv(Duration::from_millis(300)).await.is_none(),
        "a dropped envelope delivers nothing"
    );
    // The subscriber is alive: a peer's well-formed event still arrives.
    cluster.publish_raw(header.encode(&event)).await;
    let f = a.recv().await;
    assert_eq!((f["message"].as_str(), seq(&f)), (Some("forged"), 2));
}

/// Turning BUS_SECRET on node by node: a node without it takes signed
/// envelopes; a node with it drops the other's unsigned ones and catches up
/// from the store, so nothing is lost, only later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_node_drops_unsigned_envelopes_and_catches_up_from_the_store() {
    let mut cluster = Cluster::start_with(1, &[("BUS_SECRET", BUS_SECRET)]).await;
    let plain = cluster.add_node_with(&[]).await;
    let mut a = cluster.client(0).await;
    a.ok(json!({"user_id":"a","type":"create","room":"mixed"}))
        .await;
    let mut b = cluster.client(plain).await;
    b.ok(json!({"user_id":"b","type":"join","room":"mixed"}))
        .await;
    // Node 0's signed envelope is taken by the node without a secret.
    a.ok(json!({"type":"message","room":"mixed","message":"from the signing node"}))
        .await;
    let f = b.recv().await;
    assert_eq!(f["message"], "from the signing node");
    // Node 1's unsigned envelope is dropped by node 0 ...
    b.ok(json!({"type":"message","room":"mixed","message":"unsigned"}))
        .await;
    cluster
        .node(0)
        .wait_for_log(&["not a valid envelope", "unsigned"])
        .await;
    // ... which repairs the gap from the store with its next event.
    a.send(json!({"type":"message","room":"mixed","message":"next","ref":"n"}))
        .await;
    let mut seen = Vec::new();
    loop {
        let f = a.recv().await;
        if f["type"] == "ack" {
            break;
        }
        seen.push((seq(&f), f["message"].as_str().unwrap_or("").to_string()));
    }
    assert_eq!(
        seen,
        [(4, "unsigned".to_string()), (5, "next".to_string())],
        "the dropped event arrives from the store, in order, before the next"
    );
}
