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

/// A running `confab` process.
pub struct TestNode {
    pub addr: String,
    pub store: StoreEnv,
    pub env: Vec<(String, String)>,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestNode {
    /// A node on a new, empty store.
    pub async fn start(backend: Backend) -> TestNode {
        TestNode::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> TestNode {
        let store = StoreEnv::new(backend).await;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TestNode::spawn(store, env).await
    }

    /// A node on an existing store, with extra environment.
    pub async fn spawn(store: StoreEnv, env: Vec<(String, String)>) -> TestNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .env("WORKERS", "2")
            .env("RATE_LIMIT_PER_SEC", "100000")
            .env("RATE_LIMIT_BURST", "100000")
            .env("REST_RATE_PER_SEC", "100000")
            .env("REST_RATE_BURST", "100000")
            .envs(store.vars.iter().cloned())
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn confab");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(addr) = line.split("confab listening on http://").nth(1) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr.trim().to_string());
                        }
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join");
        match addr {
            Ok(addr) => TestNode {
                addr,
                store,
                env,
                child,
                log,
            },
            Err(_) => {
                let _ = child.kill();
                let lines = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("confab did not start within 30 s; its log:\n{lines}");
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    pub async fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        http(&self.addr, method, path, body).await
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("confab did not exit within 15 s of SIGTERM");
    }

    /// Starts a new process on the same store and environment.
    pub async fn restart(&self) -> TestNode {
        TestNode::spawn(self.store.clone(), self.env.clone()).await
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let lines = self.log_lines();
            let start = lines.len().saturating_sub(40);
            eprintln!("--- last log lines of node {} ---", self.addr);
            for l in &lines[start..] {
                eprintln!("{l}");
            }
        }
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
pub async fn http(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, &[], body).await;
    (status, body)
}

/// One HTTP/1.1 request with extra headers (one connection, closed after
/// it); returns the status, the response head (lowercase) and the body.
pub async fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect http");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write http");
    let mut raw = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("http response in time")
        .expect("read http");
    split_response(&String::from_utf8_lossy(&raw))
}

fn split_response(text: &str) -> (u16, String, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad http response: {text}"));
    (status, head.to_lowercase(), body.to_string())
}

/// A WebSocket handshake (`GET path` with the upgrade headers and `headers`)
/// over a raw socket: the status, the response head (lowercase) and, when
/// the server refused, the body (read by its Content-Length).
pub async fn ws_handshake(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write handshake");
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read handshake");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        if k.eq_ignore_ascii_case("content-length") {
                            v.trim().parse::<usize>().ok()
                        } else {
                            None
                        }
                    })
                    .unwrap_or(0);
                if head.starts_with("HTTP/1.1 101") || body.len() >= len || n == 0 {
                    return;
                }
            } else if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(FRAME_TIMEOUT, read)
        .await
        .expect("handshake answer in time");
    split_response(&String::from_utf8_lossy(&raw))
}

/// A WebSocket client speaking the protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
    next_ref: u64,
}

impl Client {
    /// A client on an open WebSocket, once it has read the server's `hello`.
    async fn greeted(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        let mut c = Client {
            ws,
            hello: Value::Null,
            next_ref: 0,
        };
        c.hello = c.recv().await;
        assert_eq!(c.hello["type"], "hello", "first frame: {}", c.hello);
        c
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client::greeted(ws).await
    }

    /// Connects over a socket whose kernel receive buffer is `rcvbuf` bytes,
    /// so that a client that stops reading stops taking data soon.
    pub async fn connect_small_buffer(addr: &str, rcvbuf: usize) -> Client {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let target: std::net::SocketAddr = addr.parse().expect("an ip:port");
        sock.connect(&target.into()).expect("connect");
        sock.set_nonblocking(true).expect("nonblocking");
        let stream = TcpStream::from_std(sock.into()).expect("tokio stream");
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio::time::timeout(
            FRAME_TIMEOUT,
            tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("handshake in time")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client::greeted(ws).await
    }

    /// Connects with extra handshake headers (`Authorization`, `Origin`, ...).
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::HeaderName;
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes()).expect("header name");
            req.headers_mut()
                .insert(name, v.parse().expect("header value"));
        }
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client::greeted(ws).await
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends `n` messages `m0`, `m1`, … into `room`, with refs 0, 1, …,
    /// without waiting for their replies.
    pub async fn send_numbered(&mut self, room: &str, n: usize) {
        for k in 0..n {
            self.send(json!({"type":"message","room":room,"message":format!("m{k}"),"ref":k}))
                .await;
        }
    }

    pub async fn send_text(&mut self, s: String) {
        self.ws.send(Message::text(s)).await.expect("send");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).await.expect("send");
    }

    /// The next text frame, or panics after [`FRAME_TIMEOUT`].
    pub async fn recv(&mut self) -> Value {
        match self.try_recv(FRAME_TIMEOUT).await {
            Some(v) => v,
            None => panic!("no frame within {FRAME_TIMEOUT:?}"),
        }
    }

    /// The next text frame, or None if none comes within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("frame is JSON"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(e)) => panic!("websocket error: {e}"),
                None => panic!("connection closed"),
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT * 3, self.ws.next())
                .await
                .expect("close in time");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason
    /// (None for a drop without a close frame).
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT * 3, self.ws.next())
                .await
                .expect("close in time");
            match msg {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends a command with a fresh ref and returns every frame up to and
    /// including its reply (the ack, error or typed reply with that ref).
    pub async fn cmd(&mut self, mut v: Value) -> Vec<Value> {
        self.next_ref += 1;
        let r = format!("r{}", self.next_ref);
        v["ref"] = json!(r);
        self.send(v).await;
        let mut frames = Vec::new();
        loop {
            let f = self.recv().await;
            let done = f["ref"] == json!(r);
            frames.push(f);
            if done {
                return frames;
            }
        }
    }

    /// The reply to a command (the last frame of [`Client::cmd`]).
    pub async fn reply(&mut self, v: Value) -> Value {
        self.cmd(v).await.pop().expect("a reply")
    }

    /// The reply, which must be an ack.
    pub async fn ok(&mut self, v: Value) -> Value {
        let r = self.reply(v.clone()).await;
        assert_eq!(r["type"], "ack", "{v} should be acked, got {r}");
        r
    }

    /// The reply, which must be an error with `code`.
    pub async fn err(&mut self, v: Value, code: &str) -> Value {
        let r = self.reply(v.clone()).await;
        assert_eq!(r["type"], "error", "{v} should fail with {code}, got {r}");
        assert_eq!(r["code"], code, "{v}: {r}");
        r
    }

    /// The next text frame, or the close code (None for a drop without one).
    pub async fn try_recv_or_close(&mut self) -> Result<Value, Option<u16>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("JSON")),
                Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Splits into a sender and a receiver that can run in separate tasks.
    pub fn split(self) -> (ClientTx, ClientRx) {
        let (tx, rx) = self.ws.split();
        (ClientTx(tx), ClientRx(rx))
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.ws
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sending half of a split [`Client`].
pub struct ClientTx(futures_util::stream::SplitSink<Ws, Message>);

impl ClientTx {
    pub async fn send(&mut self, v: Value) {
        self.0
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }
}

/// The receiving half of a split [`Client`].
pub struct ClientRx(futures_util::stream::SplitStream<Ws>);

impl ClientRx {
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.0.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// Checks that `events` of one room are exactly seqs `from..=to` in order.
pub fn assert_contiguous(events: &[Value], from: i64, to: i64) {
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    let want: Vec<i64> = (from..=to).collect();
    assert_eq!(
        seqs, want,
        "seqs should run {from}..={to} with no gap or duplicate"
    );
}

/// A TCP proxy a test can cut and restore, to take a service away from a
/// node without stopping the shared service.
pub struct CutProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: String) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (up, conns) = (up.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    if let Ok(mut c) = conns.lock() {
                        c.push(task);
                    }
                }
            })
        };
        CutProxy {
            port,
            up,
            conns,
            accept,
        }
    }

    /// Breaks every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for task in c.drain(..) {
                task.abort();
            }
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `postgres://user@host:port/db` → (`host:port`, a URL with `host_port` instead).
pub fn reroute_url(url: &str, host_port: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("url scheme");
    let (auth, after) = rest.rsplit_once('@').map_or(("", rest), |(a, b)| (a, b));
    let (target, path) = after.split_once('/').map_or((after, ""), |(t, p)| (t, p));
    let at = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    (
        target.to_string(),
        format!("{scheme}://{at}{host_port}/{path}"),
    )
}

/// Several nodes on one PostgreSQL database and one Redis channel (each
/// cluster its own), optionally behind the project's nginx configuration.
pub struct Cluster {
    pub nodes: Vec<Option<TestNode>>,
    pub store: StoreEnv,
    pub redis_url: String,
    pub channel: String,
    pub nginx: Option<Nginx>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_on(n, redis_url()).await
    }

    pub async fn start_on(n: usize, redis_url: String) -> Cluster {
        let mut c = Cluster {
            nodes: Vec::new(),
            store: StoreEnv::new(Backend::Postgres).await,
            redis_url,
            channel: unique("chat:events:test"),
            nginx: None,
        };
        for _ in 0..n {
            c.add_node().await;
        }
        c
    }

    /// Starts one more node; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let env = vec![
            ("NODE_ID".to_string(), format!("node-{i}")),
            ("REDIS_URL".to_string(), self.redis_url.clone()),
            ("REDIS_CHANNEL".to_string(), self.channel.clone()),
        ];
        let node = TestNode::spawn(self.store.clone(), env).await;
        self.nodes.push(Some(node));
        i
    }

    pub fn node(&self, i: usize) -> &TestNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub async fn client(&self, i: usize) -> Client {
        self.node(i).client().await
    }

    /// Puts nginx, with nginx/confab.conf.template, in front of every node.
    pub fn start_nginx(&mut self) -> String {
        let upstreams: Vec<String> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.addr.clone())
            .collect();
        let nginx = Nginx::start(&upstreams);
        let url = format!("ws://{}/ws", nginx.addr);
        self.nginx = Some(nginx);
        url
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            n.kill9();
        }
    }
}

/// A private nginx running the project's configuration.
pub struct Nginx {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(upstreams: &[String]) -> Nginx {
        let nginx = std::env::var("CONFAB_TEST_NGINX").unwrap_or_else(|_| {
            panic!(
                "CONFAB_TEST_NGINX is not set: these tests need nginx. Run them with \
                 scripts/test, which installs nginx and sets it"
            )
        });
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/nginx/confab.conf.template"
        ))
        .expect("nginx/confab.conf.template");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let servers: String = upstreams
            .iter()
            .map(|u| format!("        server {u} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let conf = template
            .replace("{{PREFIX}}", &dir.path().display().to_string())
            .replace("{{LISTEN}}", &addr)
            .replace("{{UPSTREAMS}}", &servers)
            .replace("worker_rlimit_nofile 65536;", "worker_rlimit_nofile 8192;")
            .replace("worker_connections 20000;", "worker_connections 4096;");
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let errlog = dir.path().join("nginx-error.log");
        let mut child = Command::new(nginx)
            .arg("-e")
            .arg(&errlog)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Nginx {
                    addr,
                    child,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&errlog).unwrap_or_default();
        panic!("nginx did not listen on {addr}: {log}");
    }
}

impl Drop for Nginx {
    /// SIGTERM, so that the master stops its workers (a SIGKILLed master
    /// leaves them running, holding the port); SIGKILL if it lingers.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private redis-server on a fixed port, which a test may stop and restart.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = OwnRedis { port, child: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let server = std::env::var("CONFAB_TEST_REDIS_SERVER").unwrap_or_else(|_| {
            panic!(
                "CONFAB_TEST_REDIS_SERVER is not set: this test starts its own Redis. \
                 Run it with scripts/test, which installs redis-server and sets it"
            )
        });
        let child = Command::new(server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Clusters whose nodes share extra settings (`BUS_SECRET`, …), and what a
/// test publishes on a cluster's channel itself.
impl Cluster {
    /// `n` nodes that all get `env` besides the usual settings.
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::start_on(0, redis_url()).await;
        for _ in 0..n {
            c.add_node_with(env).await;
        }
        c
    }

    /// Starts one more node with `env` besides the usual settings; returns its index.
    pub async fn add_node_with(&mut self, env: &[(&str, &str)]) -> usize {
        let i = self.nodes.len();
        let mut vars = vec![
            ("NODE_ID".to_string(), format!("node-{i}")),
            ("REDIS_URL".to_string(), self.redis_url.clone()),
            ("REDIS_CHANNEL".to_string(), self.channel.clone()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let node = TestNode::spawn(self.store.clone(), vars).await;
        self.nodes.push(Some(node));
        i
    }

    /// Publishes `payload` on the cluster's channel as anyone who can reach
    /// Redis could; returns how many subscribers got it.
    pub async fn publish_raw(&self, payload: impl Into<Vec<u8>>) -> i64 {
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload.into())
            .query_async(&mut conn)
            .await
            .expect("PUBLISH")
    }
}

impl TestNode {
    /// Waits up to 5 s for a log line that contains every one of `parts`.
    pub async fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?}:\n{}",
                self.log_lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a counter in `/metrics` (its first series).
    pub async fn counter(&self, name: &str) -> u64 {
        let (status, body) = self.http("GET", "/metrics", None).await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    }
}
