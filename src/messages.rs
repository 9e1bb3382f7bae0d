//! Every actor message of a node, in one place: what sessions, HTTP handlers,
//! the event writer and the bus send the [`ChatServer`](crate::hub::ChatServer),
//! and what it sends sessions. The writer and the bus hold `Recipient`s of
//! these messages, never the ChatServer's address, so no module imports the
//! actor it talks to.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::oneshot;

use crate::protocol::ProtoError;
use crate::protocol::{Command, Event, EventKind, Facts, Ref, RoomName, Seq, UserId};
use crate::store::{AppendOutcome, AppendRequest};

/// A local connection's id, unique for the life of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What a frame costs the node beyond its text while it waits for a socket
/// (the `ByteString`'s header and its share of a mailbox message), counted
/// so that many tiny frames are bounded too.
pub const FRAME_OVERHEAD: usize = 64;

/// Consecutive frames (a room's events, or a connection's replies), shared
/// by every recipient, with what they count against a connection's bound.
#[derive(Debug, Default)]
pub struct Frames {
    pub frames: Vec<ByteString>,
    pub bytes: usize,
}

impl Frames {
    pub fn new(frames: Vec<ByteString>) -> Frames {
        let bytes = frames.iter().map(|f| f.len() + FRAME_OVERHEAD).sum();
        Frames { frames, bytes }
    }
}

/// What the ChatServer sends a session.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum Deliver {
    /// One text frame.
    Frame(ByteString),
    /// Consecutive frames, shared.
    Frames(Arc<Frames>),
    /// The node is shutting down: close with 1001.
    Shutdown,
}

impl Deliver {
    /// What this message counts against the connection's `OUTBOUND_MAX_BYTES`.
    pub fn bytes(&self) -> usize {
        match self {
            Deliver::Frame(f) => f.len() + FRAME_OVERHEAD,
            Deliver::Frames(f) => f.bytes,
            Deliver::Shutdown => 0,
        }
    }
}

/// The state of one session's outbound path, shared by the ChatServer (which
/// queues frames) and the session (which writes them).
#[derive(Default)]
pub struct Outbound {
    /// Set by the server when the session is evicted; the session closes with 4000.
    pub evicted: AtomicBool,
    /// Set when the node shuts down and the `Shutdown` message found the
    /// mailbox full; the session closes with 1001 when it next runs.
    pub shutdown: AtomicBool,
    /// Bytes queued for the session and not yet taken by it (frames' text
    /// plus [`FRAME_OVERHEAD`] each).
    pub queued: AtomicUsize,
}

/// A session opened: it gets a [`ConnId`].
#[derive(Message)]
#[rtype(result = "ConnId")]
pub struct Connect {
    pub addr: Recipient<Deliver>,
    pub user: Option<UserId>,
    pub outbound: Arc<Outbound>,
}

/// A session closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub conn: ConnId,
}

/// A session took its identity (for presence).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Identify {
    pub conn: ConnId,
    pub user: UserId,
}

/// A command from a session, already parsed and checked against its identity.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Request {
    pub conn: ConnId,
    pub reference: Option<Ref>,
    /// The connection's identity, present for every command that needs one.
    pub user: Option<UserId>,
    pub command: Command,
    /// When the session read the command (for the ack latency histogram).
    pub received: Instant,
}

/// Whether each user is online (for `GET /rooms/{room}/members`).
#[derive(Message)]
#[rtype(result = "Vec<bool>")]
pub struct Online {
    pub users: Vec<UserId>,
}

/// A REST command, done.
#[derive(Debug)]
pub struct HttpDone {
    /// The event a `message` appended (or, for a duplicate, the original).
    pub event: Option<Event>,
    /// Whether the command repeated an earlier one (`client_msg_id`).
    pub duplicate: bool,
    /// The reply (an `ack`, `members`, …) as a socket would get it.
    pub body: String,
}

/// What a REST command is answered with.
pub type PostResult = Result<HttpDone, ProtoError>;

/// A command from the REST API (`POST /rooms/{room}/messages`, `/invite`,
/// `POST /dm/{user}`, …), for `user`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Post {
    /// `None`: the REST API in open mode without a `user_id` (reads only).
    pub user: Option<UserId>,
    pub command: Command,
    pub reply: oneshot::Sender<PostResult>,
}

/// The users connected to this node, for the presence task.
#[derive(Message)]
#[rtype(result = "Vec<UserId>")]
pub struct LocalPresence;

/// Stop: close every socket with 1001, stop taking commands, and let the
/// writer drain. Answers with the writer's task, which ends once what was
/// queued is committed.
#[derive(Message)]
#[rtype(result = "Option<tokio::task::JoinHandle<()>>")]
pub struct Shutdown;

/// Who waits for an append.
pub enum Origin {
    Conn {
        conn: ConnId,
        reference: Option<Ref>,
        since: Option<Seq>,
        received: Instant,
    },
    Http(oneshot::Sender<PostResult>),
}

/// The outcomes of one committed (or failed) batch, in append order, from
/// the writer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub jobs: Vec<(Origin, AppendRequest, Result<AppendOutcome, ProtoError>)>,
}

/// A committed event as the ChatServer orders and fans it out: what it needs
/// to know of it, and the frame every subscriber gets (serialised once, here
/// or by the peer that committed it).
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub room: RoomName,
    pub seq: Seq,
    pub kind: EventKind,
    pub user: UserId,
    /// What the event changes beyond its kind and user (a target, a role…).
    pub facts: Facts,
    pub frame: ByteString,
}

impl LiveEvent {
    pub fn of(event: &Event) -> LiveEvent {
        LiveEvent {
            room: event.room.clone(),
            seq: event.seq,
            kind: event.kind,
            user: event.user_id.clone(),
            facts: event.facts(),
            frame: event.to_json().into(),
        }
    }
}

/// Events from peers, in the order the bus gave them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerEvents {
    pub events: Vec<LiveEvent>,
}

/// The bus may have lost messages: re-read every room from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

/// Users connected to other nodes (replaces the previous set).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemotePresence {
    pub users: HashSet<UserId>,
}
