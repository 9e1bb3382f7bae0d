//! A node run inside the test process (`Node::build`, then `Node::run` until
//! a shutdown future resolves): no child process, no signal. Tests that
//! kill or signal a node keep using the binary (tests/common).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Client;
use confab::config::Config;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_in_process_until_its_shutdown_future_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("in-process.db").display().to_string();
    let vars: HashMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("WORKERS", "1"),
        ("NODE_ID", "inproc"),
        ("SQLITE_PATH", db.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Config::from_vars(vars.clone()).expect("config");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // actix runs its own single-threaded system; the test talks to it over sockets.
    let node = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let node = confab::Node::build(config).await?;
            let _ = addr_tx.send(node.local_addr());
            node.run(async {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    let addr = tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the node is listening");

    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    assert_eq!(c.hello["node"], "inproc");
    c.ok(json!({"user_id":"a","type":"create","room":"here"}))
        .await;
    let ack = c
        .ok(json!({"type":"message","room":"here","message":"in process"}))
        .await;
    assert_eq!(ack["seq"], 2);

    let _ = stop_tx.send(());
    assert_eq!(
        c.closed().await,
        Some(1001),
        "shutdown closes sockets with 1001"
    );
    tokio::task::spawn_blocking(move || node.join())
        .await
        .unwrap()
        .expect("the node's thread")
        .expect("run returns Ok");

    // What was acked is stored, and the store opens again.
    let config = Config::from_vars(vars).unwrap();
    let store = confab::store::open(&config.store).await.unwrap();
    let events = store.all_events().await.unwrap();
    let texts: Vec<_> = events.iter().filter_map(|e| e.message.clone()).collect();
    assert_eq!(texts, ["in process"]);
}
