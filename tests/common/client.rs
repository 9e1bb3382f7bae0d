//! Clients: a WebSocket client that speaks the protocol and waits for
//! frames with a timeout, and one-shot HTTP requests.

#[allow(unused_imports)]
use super::*;

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
/// A frame without what differs from run to run (`id`, `node`, `at`) and
/// without `ref`, so that it can be compared whole.
pub fn short(f: &Value) -> Value {
    let mut f = f.clone();
    if let Some(o) = f.as_object_mut() {
        for k in ["id", "node", "at", "ref"] {
            o.remove(k);
        }
    }
    f
}

/// Every frame that arrives until none has come for 300 ms.
pub async fn settle(c: &mut Client) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(f) = c.try_recv(Duration::from_millis(300)).await {
        out.push(f);
    }
    out
}

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
