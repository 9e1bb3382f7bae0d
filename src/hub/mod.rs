//! The hub: the ChatServer actor, one per node, the one place that orders a
//! node's events and fans them out (single-threaded ordering, no locks).
//!
//! This file holds the actor and its handlers, and little else. Its state
//! and logic live in plain structs, each in a file of its own with unit
//! tests: the connection [`registry`], the [`outbox`], the per-room
//! [`sequencer`], [`replay`]s and [`presence`]. The actor's own steps are
//! spread by job: [`commands`] (what a session or REST asks), [`delivery`]
//! (from a commit to the sockets) and [`repair`] (gaps and resyncs).
//!
//! It never awaits I/O inside a handler: appends go to the event writer's
//! queue, reads run as spawned futures whose results come back to the actor.
//! It sends to sessions only with `try_send` into their bounded mailboxes.

mod acks;
mod commands;
mod delivery;
mod ephemeral;
mod notices;
pub mod outbox;
pub mod presence;
mod recent;
pub mod registry;
mod repair;
pub mod replay;
pub mod rooms;
pub mod sequencer;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use crate::bus::BusHandle;
use crate::config::Config;
use crate::messages::{
    Committed, ConnId, Connect, Deliver, Disconnect, Identify, LiveEvent, LocalPresence, Online,
    Origin, PeerEvents, Post, RemotePresence, Request, Resync, Shutdown,
};
use crate::metrics::Metrics;
use crate::protocol::{ProtoError, RoomName, UserId};
use crate::store::{EventStore, Snapshot};
use crate::writer::WriterHandle;

use delivery::Appended;
use outbox::Outbox;
use presence::Presence;
use recent::Recent;
use registry::Registry;
use replay::Replays;
use rooms::Rooms;
use sequencer::Sequencer;

/// Most messages waiting in the ChatServer's mailbox beyond one per sender.
const MAILBOX: usize = 4096;

/// What a ChatServer is built from.
pub struct Parts {
    pub config: Arc<Config>,
    pub store: Arc<dyn EventStore>,
    pub metrics: Arc<Metrics>,
    pub bus: BusHandle,
    /// Rooms and members as stored when the node started.
    pub snapshot: Snapshot,
}

/// The per-node actor. See the module header.
pub struct ChatServer {
    config: Arc<Config>,
    store: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
    /// The writer's queue; dropped at shutdown so that the writer drains and stops.
    writer: Option<WriterHandle>,
    writer_task: Option<tokio::task::JoinHandle<()>>,
    bus: BusHandle,
    sequencer: Sequencer<LiveEvent, Appended>,
    /// Each room's privacy, members, roles and invitations, as of its last
    /// delivered event.
    rooms: Rooms,
    registry: Registry,
    outbox: Outbox,
    replays: Replays,
    /// The last events of each room, for resumes served from memory.
    recent: Recent,
    presence: Presence,
    /// When each (room, user) last had a `typing: true` forwarded.
    typing: HashMap<(RoomName, UserId), Instant>,
    shutting_down: bool,
}

impl ChatServer {
    /// Starts the actor and its event writer, which reports back to it.
    pub fn start(parts: Parts) -> Addr<ChatServer> {
        ChatServer::create(move |ctx| {
            let (writer, writer_task) = crate::writer::spawn(
                parts.store.clone(),
                parts.config.node_id.clone(),
                crate::writer::QueueBounds {
                    jobs: parts.config.writer_queue,
                    bytes: parts.config.writer_queue_bytes,
                    lanes: parts.config.writer_lanes,
                },
                parts.config.writer_batch_max,
                ctx.address().recipient(),
                parts.metrics.clone(),
            );
            ChatServer::new(parts, writer, writer_task)
        })
    }

    fn new(
        parts: Parts,
        writer: WriterHandle,
        writer_task: tokio::task::JoinHandle<()>,
    ) -> ChatServer {
        let Parts {
            config,
            store,
            metrics,
            bus,
            snapshot,
        } = parts;
        let mut sequencer = Sequencer::default();
        for (name, row) in &snapshot.rooms {
            sequencer.add_room(name, row.last_seq);
        }
        let rooms = Rooms::from_snapshot(&snapshot);
        let recent_bytes = config.recent_events_bytes;
        metrics.rooms.set(sequencer.len() as i64);
        ChatServer {
            outbox: Outbox::new(config.session_mailbox),
            config,
            store,
            metrics,
            writer: Some(writer),
            writer_task: Some(writer_task),
            bus,
            sequencer,
            rooms,
            registry: Registry::default(),
            replays: Replays::default(),
            recent: Recent::new(recent_bytes),
            presence: Presence::default(),
            typing: HashMap::new(),
            shutting_down: false,
        }
    }

    fn identify(&mut self, conn: ConnId, user: &UserId) {
        if self.registry.identify(conn, user) {
            self.presence.connected(user);
        }
    }
}

impl Actor for ChatServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every session holds one sender; this bounds what queues beyond them.
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

impl Handler<Connect> for ChatServer {
    type Result = MessageResult<Connect>;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        if let Some(user) = &msg.user {
            self.presence.connected(user);
        }
        MessageResult(self.registry.connect(msg.addr, msg.user, msg.outbound))
    }
}

impl Handler<Identify> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Identify, _: &mut Context<Self>) {
        self.identify(msg.conn, &msg.user);
    }
}

impl Handler<Disconnect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.unsubscribe_all(msg.conn);
        if let Some(user) = self.registry.disconnect(msg.conn).and_then(|c| c.user) {
            self.presence.disconnected(&user);
        }
    }
}

impl Handler<Request> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Request, ctx: &mut Context<Self>) {
        // The session's Identify may still be on its way: the command carries
        // the identity too.
        if let Some(user) = &msg.user {
            self.identify(msg.conn, user);
        }
        self.handle_request(msg, ctx);
    }
}

impl Handler<Committed> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        self.batch(|act| act.committed(msg, ctx));
    }
}

impl Handler<PeerEvents> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: PeerEvents, ctx: &mut Context<Self>) {
        self.batch(|act| {
            for event in msg.events {
                if event.kind.ephemeral() {
                    act.ephemeral(event);
                } else {
                    act.receive(event, None, ctx);
                }
            }
        });
    }
}

impl Handler<Resync> for ChatServer {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.resync(ctx);
    }
}

impl Handler<RemotePresence> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: RemotePresence, _: &mut Context<Self>) {
        self.presence.set_remote(msg.users);
    }
}

impl Handler<LocalPresence> for ChatServer {
    type Result = MessageResult<LocalPresence>;

    fn handle(&mut self, _: LocalPresence, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.presence.local_users())
    }
}

impl Handler<Online> for ChatServer {
    type Result = MessageResult<Online>;

    fn handle(&mut self, msg: Online, _: &mut Context<Self>) -> Self::Result {
        MessageResult(
            msg.users
                .iter()
                .map(|u| self.presence.is_online(u))
                .collect(),
        )
    }
}

impl Handler<Post> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Post, ctx: &mut Context<Self>) {
        if self.shutting_down {
            let _ = msg.reply.send(Err(ProtoError::unavailable()));
            return;
        }
        self.command(msg.command, msg.user, Origin::Http(msg.reply), ctx);
    }
}

impl Handler<Shutdown> for ChatServer {
    type Result = MessageResult<Shutdown>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shutting_down = true;
        // Dropping the writer's queue lets it finish what is queued and stop.
        self.writer = None;
        for (_, c) in self.registry.conns() {
            if c.addr.try_send(Deliver::Shutdown).is_err() {
                // A full mailbox: what is queued wakes the session, which
                // then closes with 1001.
                c.outbound.shutdown.store(true, Ordering::Relaxed);
            }
        }
        MessageResult(self.writer_task.take())
    }
}
