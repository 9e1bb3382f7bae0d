//! The test harness: real `confab` processes on free ports, each with its own
//! SQLite file or its own PostgreSQL database, and WebSocket and HTTP clients
//! that wait for frames with a timeout.
//!
//! PostgreSQL and Redis are the ones `scripts/test` starts; a test that needs
//! one and cannot find it fails and says how to start it.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one frame before it fails.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs the listed async test functions (each `async fn(Backend)`) once on
/// SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Backend::Postgres).await
                }
            )*
        }
    };
}

fn unique(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{}_{:x}", std::process::id(), n & 0xffff_ffff)
}

fn pg_admin_url() -> String {
    std::env::var("CONFAB_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "CONFAB_TEST_PG_URL is not set: these tests need PostgreSQL. Run them with \
             scripts/test, which starts a private PostgreSQL and sets it"
        )
    })
}

pub fn redis_url() -> String {
    std::env::var("CONFAB_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "CONFAB_TEST_REDIS_URL is not set: these tests need Redis. Run them with \
             scripts/test, which starts a private Redis and sets it"
        )
    })
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn create_database() -> String {
    let admin = pg_admin_url();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at CONFAB_TEST_PG_URL={admin}: {e}. \
                 Start it with scripts/test"
            )
        });
    tokio::spawn(conn);
    let name = unique("confab_test");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("CREATE DATABASE");
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("CONFAB_TEST_PG_URL has no database part: {admin}"),
    }
}

/// Where a node keeps its events.
#[derive(Clone)]
pub struct StoreEnv {
    pub vars: Vec<(String, String)>,
    _dir: Arc<tempfile::TempDir>,
}

impl StoreEnv {
    pub async fn new(backend: Backend) -> StoreEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars = match backend {
            Backend::Sqlite => vec![(
                "SQLITE_PATH".to_string(),
                dir.path().join("confab.db").display().to_string(),
            )],
            Backend::Postgres => vec![("DATABASE_URL".to_string(), create_database().await)],
        };
        StoreEnv {
            vars,
            _dir: Arc::new(dir),
        }
    }

    /// Opens the same store from the test, to look at what is stored.
    pub async fn open(&self) -> Arc<dyn confab::store::EventStore> {
        let vars: HashMap<String, String> = self.vars.iter().cloned().collect();
        let config = confab::config::Config::from_vars(vars).expect("config");
        confab::store::open(&config.store)
            .await
            .expect("open store")
    }
}

/// An HS256 JWT of `claims`, signed with `secret` (token mode's tests).
#[allow(dead_code)]
pub fn hs256(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key"),
    )
    .expect("sign")
}

/// A token for `sub` signed with `secret`, expiring `ttl_secs` from now
/// (negative: already expired).
#[allow(dead_code)]
pub fn token_for(secret: &str, sub: &str, ttl_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    hs256(
        secret,
        serde_json::json!({"sub": sub, "exp": now + ttl_secs}),
    )
}

mod client;
mod cluster;
mod node;

// Each test binary uses a different part of the harness.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use node::*;
