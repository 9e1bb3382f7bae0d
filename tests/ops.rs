//! What an operator and a browser ask of a node besides the protocol:
//! `GET /whoami`, a log line per connection (as text and as JSON), and
//! `confab healthcheck`.

mod common;

use common::{http_with, Backend, Client, TestNode};
use serde_json::{json, Value};

const SECRET: &str = "ops-secret-0123456789abcdef0123456789abcdef";

fn token(user: &str, exp_in: i64) -> String {
    common::token_for(SECRET, user, exp_in)
}

async fn whoami(node: &TestNode, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, _, body) = http_with(&node.addr, "GET", "/whoami", headers, None).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_tells_a_browser_why_it_cannot_connect() {
    let open = TestNode::start(Backend::Sqlite).await;
    assert_eq!(
        whoami(&open, &[]).await,
        (200, json!({"mode":"open","user_id":null}))
    );

    let node = TestNode::start_with(Backend::Sqlite, &[("AUTH_SECRET", SECRET)]).await;
    let good = format!("Bearer {}", token("alice", 600));
    assert_eq!(
        whoami(&node, &[("Authorization", &good)]).await,
        (200, json!({"mode":"token","user_id":"alice"}))
    );
    let expired = format!("Bearer {}", token("alice", -3600));
    let (status, v) = whoami(&node, &[("Authorization", &expired)]).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("token_expired")));
    let (status, v) = whoami(&node, &[]).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("token_missing")));
    let (status, v) = whoami(&node, &[("Authorization", "Bearer nonsense")]).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("token_invalid")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_logs_a_line_when_it_opens_and_when_it_closes() {
    let node = TestNode::start_with(Backend::Sqlite, &[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let url = format!("{}?user_id=alice", node.ws_url());
    let mut c = Client::connect_with(&url, &[("X-Forwarded-For", "203.0.113.9")]).await;
    c.ok(json!({"type":"create","room":"r"})).await;
    let opened = node
        .wait_for_log(&["connection", "opened", "user=alice", "client=203.0.113.9"])
        .await;
    assert!(opened.contains(" INFO "), "at the default level: {opened}");
    let id = opened
        .split("connection ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_owned();
    c.close().await;
    node.wait_for_log(&[
        &format!("connection {id} closed"),
        "user=alice",
        "client=203.0.113.9",
    ])
    .await;

    // An untrusted peer's X-Forwarded-For is ignored: the peer is the client.
    let plain = TestNode::start(Backend::Sqlite).await;
    let url = format!("{}?user_id=bob", plain.ws_url());
    let _c = Client::connect_with(&url, &[("X-Forwarded-For", "203.0.113.9")]).await;
    plain
        .wait_for_log(&["opened", "user=bob", "client=127.0.0.1"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line() {
    let node = TestNode::start_with(Backend::Sqlite, &[("LOG_FORMAT", "json")]).await;
    let url = format!("{}?user_id=carol", node.ws_url());
    let c = Client::connect(&url).await;
    node.wait_for_log(&["opened", "user=carol"]).await;
    c.close().await;
    node.wait_for_log(&["closed", "user=carol"]).await;
    let lines = node.log_lines();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confab_healthcheck_exits_0_for_a_healthy_node_and_1_for_none() {
    let node = TestNode::start(Backend::Sqlite).await;
    let port = node.addr.rsplit(':').next().unwrap().to_owned();
    let run = |port: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .arg("healthcheck")
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port)
            .output()
            .expect("run confab healthcheck")
    };
    let ok = run(&port);
    assert!(ok.status.success(), "{ok:?}");
    // A port nobody listens on: the node is not there.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = run(&free.to_string());
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("cannot reach"),
        "{down:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_rooms_events_and_connections() {
    let node = TestNode::start(Backend::Sqlite).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"a","type":"create","room":"one"}))
        .await;
    a.ok(json!({"type":"message","room":"one","message":"x"}))
        .await;
    a.ok(json!({"type":"create","room":"two"})).await;
    let (status, body) = node.http("GET", "/stats", None).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let name = a.hello["node"].clone();
    assert_eq!(
        v,
        json!({"rooms":2,"events":3,"connections":1,
               "nodes":[{"node":name,"connections":1}]})
    );
}

/// Every node answers `/stats` alike: the nodes alive with their counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_the_same_on_every_node_of_a_cluster() {
    let cluster = common::Cluster::start(2).await;
    let mut a = cluster.client(0).await;
    a.ok(json!({"user_id":"a","type":"create","room":"r"}))
        .await;
    let _b = cluster.client(1).await;
    let _c = cluster.client(1).await;
    let names: Vec<String> = {
        let mut n = vec![
            a.hello["node"].as_str().unwrap().to_owned(),
            _b.hello["node"].as_str().unwrap().to_owned(),
        ];
        n.sort();
        n
    };
    let expected = |counts: [u64; 2]| {
        // Connection counts by node name, in name order.
        let by_name: Vec<u64> = if names[0] == a.hello["node"] {
            counts.to_vec()
        } else {
            vec![counts[1], counts[0]]
        };
        json!({"rooms":1,"events":1,"connections":3,
               "nodes":[{"node":names[0],"connections":by_name[0]},
                        {"node":names[1],"connections":by_name[1]}]})
    };
    let want = expected([1, 2]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    for i in 0..2 {
        loop {
            let (status, body) = cluster.node(i).http("GET", "/stats", None).await;
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            if v == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {i}: {v} is not {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// `/openapi.json` describes every route, and every route it describes
/// exists: none answers with the router's bare 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_the_routes_that_exist() {
    let node = TestNode::start(Backend::Sqlite).await;
    let mut a = node.client().await;
    a.ok(json!({"user_id":"alice","type":"create","room":"r"}))
        .await;
    let (status, body) = node.http("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{:?}", paths.keys());
    for (path, item) in paths {
        let concrete = path.replace("{room}", "r").replace("{user}", "bob");
        for method in item.as_object().unwrap().keys() {
            let body = json!({"user_id":"alice"});
            let (status, _, text) = http_with(
                &node.addr,
                &method.to_uppercase(),
                &concrete,
                &[],
                Some(&body),
            )
            .await;
            let bare_404 = status == 404 && serde_json::from_str::<Value>(&text).is_err();
            assert!(
                !bare_404,
                "{method} {path}: no such route ({status} {text:?})"
            );
        }
    }
    // And the router's bare 404 is what a route that does not exist gets.
    let (status, _, text) = http_with(&node.addr, "GET", "/no/such/route", &[], None).await;
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&text).is_err());
    let (status, body) = node.http("GET", "/asyncapi.json", None).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_ok());
}
