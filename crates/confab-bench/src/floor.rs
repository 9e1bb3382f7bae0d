//! `confab-bench floor --port P`: the floor server, the simplest broadcast server that speaks
//! the protocol subset the bench uses (hello, create/join, message, ping): one reader and one
//! writer task per connection, each event serialised once and pushed to every member's
//! bounded queue. It is the machine's practical floor, against which Confab's figures can
//! be compared.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{SecondsFormat, Utc};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::sleep;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::util::lock;

const FLOOR_OUTBOX: usize = 4096;

#[derive(Args, Debug)]
pub(crate) struct FloorArgs {
    /// TCP port to listen on.
    #[arg(long)]
    port: u16,
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
}

/// Runs the floor server until Ctrl-C; the exit code.
pub(crate) async fn main(args: FloorArgs) -> i32 {
    match run_floor(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("confab-bench floor: {e:#}");
            2
        }
    }
}

/// A connection as the rooms see it: its bounded outgoing queue.
struct FloorPeer {
    id: u64,
    outbox: mpsc::Sender<Message>,
    /// Set when its queue overflowed; the writer then closes with 4000.
    slow: Arc<AtomicBool>,
}

impl FloorPeer {
    /// Queues a frame; false (and marked slow) if the queue is full or the writer is gone.
    fn push(&self, frame: Message) -> bool {
        match self.outbox.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.slow.store(true, Relaxed);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
struct FloorRoom {
    seq: u64,
    members: Vec<Arc<FloorPeer>>,
}

impl FloorRoom {
    /// Takes the next seq, serialises the event once and queues it to every member.
    fn append(
        &mut self,
        kind: &str,
        room: &str,
        user_id: &str,
        message: Option<&str>,
        id: u64,
    ) -> u64 {
        self.seq += 1;
        let event = FloorEvent {
            kind,
            room,
            seq: self.seq,
            id,
            user_id,
            message,
            node: "floor",
            at: rfc3339_now(),
        };
        let text = Utf8Bytes::from(serde_json::to_string(&event).unwrap_or_default());
        self.members
            .retain(|member| member.push(Message::Text(text.clone())));
        self.seq
    }
}

#[derive(Default)]
struct FloorHub {
    rooms: Mutex<HashMap<String, Arc<Mutex<FloorRoom>>>>,
    next_event_id: AtomicU64,
    next_peer_id: AtomicU64,
}

#[derive(Serialize)]
struct FloorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    room: &'a str,
    seq: u64,
    id: u64,
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    node: &'static str,
    at: String,
}

#[derive(Serialize, Default)]
struct FloorReply<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Deserialize)]
struct FloorCommand {
    #[serde(rename = "type")]
    kind: Option<String>,
    room: Option<String>,
    user_id: Option<Value>,
    message: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

/// One connection's reader side: its identity and the rooms it is subscribed to.
struct FloorSession {
    hub: Arc<FloorHub>,
    peer: Arc<FloorPeer>,
    user: Option<String>,
    rooms: HashMap<String, Arc<Mutex<FloorRoom>>>,
}

impl FloorSession {
    fn reply(&self, reply: FloorReply) {
        let text = serde_json::to_string(&reply).unwrap_or_default();
        self.peer.push(Message::text(text));
    }

    fn error(&self, reference: Option<&Value>, code: &str, message: &str) {
        let (code, message) = (Some(code), Some(message));
        self.reply(FloorReply {
            kind: "error",
            reference,
            code,
            message,
            ..Default::default()
        });
    }

    fn ack(&self, reference: Option<&Value>, command: &str, room: &str, seq: u64, id: Option<u64>) {
        let (command, room, seq) = (Some(command), Some(room), Some(seq));
        self.reply(FloorReply {
            kind: "ack",
            reference,
            command,
            room,
            seq,
            id,
            ..Default::default()
        });
    }

    fn next_event_id(&self) -> u64 {
        self.hub.next_event_id.fetch_add(1, Relaxed) + 1
    }

    fn handle(&mut self, text: &str) {
        let Ok(command) = serde_json::from_str::<FloorCommand>(text) else {
            return self.error(None, "invalid_json", "the frame is not a command object");
        };
        let reference = command.reference.as_ref();
        let user_id = command.user_id.as_ref();
        if let Some(user) = user_id.and_then(|u| {
            u.as_str()
                .map(str::to_owned)
                .or(u.as_u64().map(|n| n.to_string()))
        }) {
            self.user.get_or_insert(user);
        }
        let kind = command.kind.as_deref().unwrap_or_default();
        if kind == "ping" {
            return self.reply(FloorReply {
                kind: "pong",
                reference,
                ..Default::default()
            });
        }
        if !matches!(kind, "create" | "join" | "message") {
            return self.error(
                reference,
                "unknown_type",
                "type must be create, join, message or ping",
            );
        }
        let valid_room = |r: &&str| {
            (1..=64).contains(&r.len())
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        };
        let Some(room) = command.room.as_deref().filter(valid_room) else {
            return self.error(
                reference,
                "invalid_room",
                "room must be 1-64 of A-Z a-z 0-9 - _ . :",
            );
        };
        match command.message.as_deref() {
            _ if kind != "message" => self.join(reference, kind, room),
            Some(text) if !text.is_empty() => self.post(reference, room, text),
            _ => self.error(
                reference,
                "invalid_field",
                "message must be a non-empty string",
            ),
        }
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }

    /// `message`: one seq, one serialisation, one queue push per member, then the ack.
    fn post(&self, reference: Option<&Value>, room_name: &str, text: &str) {
        let Some(room) = self.rooms.get(room_name) else {
            return self.error(reference, "not_a_member", "join the room first");
        };
        let id = self.next_event_id();
        let mut room = lock(room);
        let seq = room.append("message", room_name, self.user(), Some(text), id);
        // Queued under the room lock: after the event, before any later one.
        self.ack(reference, "message", room_name, seq, Some(id));
    }

    /// `create` (makes the room if needed) or `join`: subscribe, emit the event, ack its seq.
    fn join(&mut self, reference: Option<&Value>, kind: &str, room_name: &str) {
        let (room, created) = {
            let mut rooms = lock(&self.hub.rooms);
            match rooms.get(room_name) {
                Some(room) => (room.clone(), false),
                None if kind == "join" => {
                    return self.error(reference, "no_such_room", "no such room")
                }
                None => {
                    let room = Arc::new(Mutex::new(FloorRoom::default()));
                    rooms.insert(room_name.to_owned(), room.clone());
                    (room, true)
                }
            }
        };
        let mut guard = lock(&room);
        let mut id = None;
        if !self.rooms.contains_key(room_name) {
            guard.members.push(self.peer.clone());
            let event_id = self.next_event_id();
            let event_kind = if created { "create" } else { "join" };
            guard.append(event_kind, room_name, self.user(), None, event_id);
            id = Some(event_id);
        }
        self.ack(reference, kind, room_name, guard.seq, id);
        drop(guard);
        self.rooms.insert(room_name.to_owned(), room);
    }
}

impl Drop for FloorSession {
    fn drop(&mut self) {
        for room in self.rooms.values() {
            lock(room)
                .members
                .retain(|member| member.id != self.peer.id);
        }
    }
}

async fn run_floor(args: FloorArgs) -> Result<()> {
    if !args.host.is_loopback() {
        bail!("the floor server only listens on loopback addresses");
    }
    let listener = TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    info!(
        "floor server listening on ws://{}:{}/ws (Ctrl-C to stop)",
        args.host, args.port
    );
    let hub = Arc::new(FloorHub::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_floor_connection(hub, stream).await {
                            debug!("floor connection: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                info!("floor server stopping");
                return Ok(());
            }
        }
    }
}

async fn serve_floor_connection(hub: Arc<FloorHub>, stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let (mut sink, mut source) = ws.split();
    let (outbox, mut queue) = mpsc::channel::<Message>(FLOOR_OUTBOX);
    let slow = Arc::new(AtomicBool::new(false));
    let writer_slow = slow.clone();
    tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if writer_slow.load(Relaxed) {
                let close = CloseFrame {
                    code: CloseCode::from(4000),
                    reason: "slow consumer".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
            sink.feed(frame).await?;
            while let Ok(frame) = queue.try_recv() {
                sink.feed(frame).await?;
            }
            sink.flush().await?;
        }
        Ok::<(), WsError>(())
    });
    let peer = Arc::new(FloorPeer {
        id: hub.next_peer_id.fetch_add(1, Relaxed),
        outbox,
        slow,
    });
    peer.push(Message::text(r#"{"type":"hello","node":"floor","protocol":1,"epoch":"floor","user_id":null,"limits":{}}"#));
    let mut session = FloorSession {
        hub,
        peer,
        user: None,
        rooms: HashMap::new(),
    };
    while let Some(frame) = source.next().await {
        match frame? {
            Message::Text(text) => session.handle(&text),
            Message::Binary(_) => {
                session.error(None, "unsupported_frame", "binary frames are not supported")
            }
            Message::Close(_) => break,
            _ => {}
        }
        if session.peer.slow.load(Relaxed) {
            break;
        }
    }
    Ok(())
}

/// The current UTC time as RFC 3339 with microseconds and a `Z` offset,
/// e.g. `2026-12-03T05:31:13.123456Z`.
fn rfc3339_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_now_is_utc_with_microseconds() {
        let at = super::rfc3339_now();
        let shape: String = at
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99T99:99:99.999999Z", "{at}");
    }
}
