//! The ChatServer actor, one per node: the in-memory view of rooms, members
//! and which local sessions are subscribed where, and the one place that puts
//! committed events in order and fans them out.
//!
//! It never awaits I/O inside a handler: appends go to the event writer's
//! queue, reads (history, replays, gap repairs) run as spawned futures whose
//! results come back to the actor. It sends to sessions only with `try_send`
//! into their bounded mailboxes; a session whose mailbox is full is evicted
//! from its rooms and closes with 4000 (DESIGN.md invariant 7).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::oneshot;

use crate::bus::{BusHandle, PeerEvents, RemotePresence, Resync};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{
    error_frame, Ack, Command, Event, EventKind, HistoryRange, MemberInfo, ProtoError, Ref, Reply,
    RoomInfo, RoomName, Seq, UserId,
};
use crate::store::{AppendOp, AppendOutcome, AppendRequest, EventStore, Snapshot};
use crate::writer::{AppendJob, Committed, WriterHandle};

/// How long a node waits for a missing seq to arrive on the bus before it
/// reads it from the store (peers' publishes may arrive out of commit order).
const GAP_REPAIR_DELAY: Duration = Duration::from_millis(50);
/// Most events one gap-repair read fetches.
const GAP_REPAIR_PAGE: i64 = 1000;
/// Most frames in one [`Deliver::Frames`] (and at most a quarter of
/// `SESSION_MAILBOX`, so that a healthy session always has room for a few).
const FRAMES_PER_DELIVERY: usize = 64;

/// A local connection's id, unique for the life of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the ChatServer sends a session.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum Deliver {
    /// One text frame.
    Frame(ByteString),
    /// Consecutive events of one room, shared by every subscriber.
    Frames(Arc<[ByteString]>),
    /// The node is shutting down: close with 1001.
    Shutdown,
}

/// The state of one session's outbound path, shared by the ChatServer (which
/// queues frames) and the session (which writes them).
#[derive(Default)]
pub struct Outbound {
    /// Set by the server when the session is evicted; the session closes with 4000.
    pub evicted: AtomicBool,
    /// Frames queued in the session's mailbox and not yet taken by it.
    pub queued: AtomicUsize,
}

impl Deliver {
    /// How many frames this message puts on the socket.
    pub fn frames(&self) -> usize {
        match self {
            Deliver::Frame(_) => 1,
            Deliver::Frames(f) => f.len(),
            Deliver::Shutdown => 0,
        }
    }
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
}

/// `GET /rooms`.
#[derive(Message)]
#[rtype(result = "Vec<RoomInfo>")]
pub struct ListRooms;

/// `POST /rooms/{room}/messages`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Post {
    pub room: RoomName,
    pub user: UserId,
    pub text: String,
    pub client_msg_id: Option<String>,
    pub reply: oneshot::Sender<Result<(Event, bool), ProtoError>>,
}

/// The users connected to this node, for the presence task.
#[derive(Message)]
#[rtype(result = "Vec<UserId>")]
pub struct LocalPresence;

/// Stop: close every socket with 1001 and stop taking commands.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Who waits for an append.
pub enum Origin {
    Conn {
        conn: ConnId,
        reference: Option<Ref>,
        since: Option<Seq>,
    },
    Http(oneshot::Sender<Result<(Event, bool), ProtoError>>),
}

struct Room {
    /// The seq of the last event delivered to local subscribers.
    last_seq: Seq,
    members: HashSet<UserId>,
    subscribers: HashSet<ConnId>,
    /// Events that arrived ahead of `last_seq + 1`, waiting for the gap to fill.
    pending: BTreeMap<Seq, (Event, Option<Origin>)>,
    /// The highest seq known to be committed (from the bus or the store).
    known: Seq,
    repairing: bool,
    /// Events delivered in the current batch, not yet handed to sessions.
    outbox: Vec<(Seq, ByteString)>,
}

impl Room {
    fn new(last_seq: Seq) -> Room {
        Room {
            last_seq,
            members: HashSet::new(),
            subscribers: HashSet::new(),
            pending: BTreeMap::new(),
            known: last_seq,
            repairing: false,
            outbox: Vec::new(),
        }
    }
}

/// A join with `since` whose replay is being read: live events past `upto`
/// wait in `buffer` until the replay has been sent.
struct Replay {
    upto: Seq,
    buffer: Vec<(Seq, ByteString)>,
    /// The client resumes from a seq this node has not delivered yet (it
    /// lags the store): nothing to read, but events up to `upto` are skipped
    /// and the ack waits until the room gets there.
    waiting: bool,
}

struct Conn {
    addr: Recipient<Deliver>,
    user: Option<UserId>,
    rooms: HashSet<RoomName>,
    replays: HashMap<RoomName, Replay>,
    outbound: Arc<Outbound>,
}

/// Queues a message for a session unless that would put more than `limit`
/// frames in its mailbox (the bound of DESIGN.md invariant 7).
fn offer(c: &Conn, msg: Deliver, limit: usize) -> Result<(), SendError<Deliver>> {
    let frames = msg.frames();
    if c.outbound.queued.load(Ordering::Relaxed) + frames > limit {
        return Err(SendError::Full(msg));
    }
    // Counted before it is sent, so that the session's decrement never comes first.
    c.outbound.queued.fetch_add(frames, Ordering::Relaxed);
    c.addr.try_send(msg).inspect_err(|_| {
        c.outbound.queued.fetch_sub(frames, Ordering::Relaxed);
    })
}

/// The per-node actor. See the module header.
pub struct ChatServer {
    config: Arc<Config>,
    store: Arc<dyn EventStore>,
    metrics: Arc<Metrics>,
    writer: Option<WriterHandle>,
    bus: Option<BusHandle>,
    rooms: BTreeMap<RoomName, Room>,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    /// Local connections per identified user.
    online: HashMap<UserId, usize>,
    /// Users connected to other nodes (from the bus's presence).
    remote_online: HashSet<UserId>,
    /// Inside a batch (a commit, peer events, a repair), events collect in
    /// their rooms' outboxes and replies in `replies`, and go out together at
    /// its end: one mailbox message per subscriber and room, not per event.
    batching: bool,
    /// Rooms whose outbox is not empty.
    dirty: Vec<RoomName>,
    /// Frames per [`Deliver::Frames`].
    chunk: usize,
    /// Acks and errors of the current batch, in command order, sent after the events.
    replies: Vec<(ConnId, ByteString)>,
    /// Resumes waiting for this node to catch up, per room.
    waiting_replays: HashMap<RoomName, Vec<(ConnId, Option<Ref>, bool)>>,
    shutting_down: bool,
}

impl ChatServer {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn EventStore>,
        metrics: Arc<Metrics>,
        snapshot: Snapshot,
    ) -> ChatServer {
        let mut rooms: BTreeMap<RoomName, Room> = snapshot
            .rooms
            .into_iter()
            .map(|(name, last)| (name, Room::new(last)))
            .collect();
        for (room, user) in snapshot.members {
            if let Some(r) = rooms.get_mut(&room) {
                r.members.insert(user);
            }
        }
        metrics.rooms.set(rooms.len() as i64);
        let session_mailbox = config.session_mailbox;
        ChatServer {
            config,
            store,
            metrics,
            writer: None,
            bus: None,
            rooms,
            conns: HashMap::new(),
            next_conn: 1,
            online: HashMap::new(),
            remote_online: HashSet::new(),
            waiting_replays: HashMap::new(),
            batching: false,
            dirty: Vec::new(),
            chunk: (session_mailbox / 4).clamp(1, FRAMES_PER_DELIVERY),
            replies: Vec::new(),
            shutting_down: false,
        }
    }

    /// Gives the server the writer's queue (the writer needs the server's address first).
    pub fn set_writer(&mut self, writer: WriterHandle) {
        self.writer = Some(writer);
    }

    pub fn set_bus(&mut self, bus: BusHandle) {
        self.bus = Some(bus);
    }

    /// Sends one frame to a connection now (after what the batch holds).
    fn send(&mut self, conn: ConnId, frame: ByteString) {
        if self.batching {
            self.flush();
        }
        self.push(conn, Deliver::Frame(frame));
    }

    /// Sends an ack or error: inside a batch, after the batch's events.
    fn reply(&mut self, conn: ConnId, frame: ByteString) {
        if self.batching {
            self.replies.push((conn, frame));
        } else {
            self.push(conn, Deliver::Frame(frame));
        }
    }

    /// Queues a message for a connection; evicts it when its mailbox is full.
    fn push(&mut self, conn: ConnId, msg: Deliver) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.outbound.evicted.load(Ordering::Relaxed) {
            return;
        }
        match offer(c, msg, self.config.session_mailbox) {
            Ok(()) => {}
            Err(SendError::Full(_)) => self.evict(conn),
            Err(SendError::Closed(_)) => self.unsubscribe_all(conn),
        }
    }

    fn send_error(
        &mut self,
        conn: ConnId,
        reference: Option<&Ref>,
        err: &ProtoError,
        room: Option<&RoomName>,
    ) {
        self.metrics.command_errors.inc();
        let frame = error_frame(reference, err, room);
        self.reply(conn, frame);
    }

    /// An ack that must not be overtaken by later events (join, create, replay).
    fn send_ack(&mut self, conn: ConnId, ack: Ack<'_>) {
        let frame = Reply::Ack(ack).to_frame();
        self.send(conn, frame);
    }

    /// Runs `f` as one batch: its events and replies go out together at the end.
    fn batch(&mut self, f: impl FnOnce(&mut Self)) {
        self.batching = true;
        f(self);
        self.flush();
        self.batching = false;
    }

    /// Hands every room's outbox to its subscribers, then the replies.
    fn flush(&mut self) {
        for room in std::mem::take(&mut self.dirty) {
            self.flush_room(&room);
        }
        let replies = std::mem::take(&mut self.replies);
        if replies.is_empty() {
            return;
        }
        // One message per connection, its replies in command order.
        let mut by_conn: HashMap<ConnId, Vec<ByteString>> = HashMap::new();
        let mut order = Vec::new();
        for (conn, frame) in replies {
            let frames = by_conn.entry(conn).or_insert_with(|| {
                order.push(conn);
                Vec::new()
            });
            frames.push(frame);
        }
        for conn in order {
            let Some(frames) = by_conn.remove(&conn) else {
                continue;
            };
            for chunk in frames.chunks(self.chunk) {
                self.push(conn, Deliver::Frames(chunk.into()));
            }
        }
    }

    /// Hands one room's outbox to its subscribers, shared: one allocation per
    /// room and batch, one mailbox message per subscriber.
    fn flush_room(&mut self, name: &RoomName) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if room.outbox.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut room.outbox);
        let chunks: Vec<Arc<[ByteString]>> = outbox
            .chunks(self.chunk)
            .map(|c| c.iter().map(|(_, f)| f.clone()).collect())
            .collect();
        let mut full = Vec::new();
        let mut delivered = 0u64;
        for id in &room.subscribers {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if let Some(replay) = c.replays.get_mut(name) {
                // A resume in progress takes what comes after its replay.
                let upto = replay.upto;
                replay
                    .buffer
                    .extend(outbox.iter().filter(|(seq, _)| *seq > upto).cloned());
                if replay.buffer.len() as i64 > self.config.replay_limit {
                    full.push(*id);
                }
                continue;
            }
            if c.outbound.evicted.load(Ordering::Relaxed) {
                continue;
            }
            for chunk in &chunks {
                match offer(
                    c,
                    Deliver::Frames(chunk.clone()),
                    self.config.session_mailbox,
                ) {
                    Ok(()) => delivered += chunk.len() as u64,
                    Err(SendError::Full(_)) => {
                        full.push(*id);
                        break;
                    }
                    Err(SendError::Closed(_)) => break,
                }
            }
        }
        self.metrics.deliveries.add(delivered);
        for id in full {
            self.evict(id);
        }
    }

    /// A slow consumer: out of every room, and its session closes with 4000.
    fn evict(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get(&conn) {
            c.outbound.evicted.store(true, Ordering::Relaxed);
            self.metrics.evictions.inc();
            log::info!("evicting slow consumer {conn:?}");
            // Wake the session so that it closes with 4000 even when nothing
            // else is queued for it (a replay buffer that overflowed). When
            // its mailbox is full this fails, and what is queued wakes it.
            let _ = c.addr.try_send(Deliver::Frames(Arc::from([])));
        }
        self.unsubscribe_all(conn);
    }

    fn unsubscribe_all(&mut self, conn: ConnId) {
        let rooms: Vec<RoomName> = self
            .conns
            .get(&conn)
            .map(|c| c.rooms.iter().cloned().collect())
            .unwrap_or_default();
        for room in &rooms {
            self.flush_room(room);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.replays.clear();
            for room in c.rooms.drain() {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.subscribers.remove(&conn);
                }
            }
        }
    }

    fn subscribe(&mut self, conn: ConnId, room: &RoomName) -> bool {
        // Events already in the batch came before this subscription.
        self.flush_room(room);
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.outbound.evicted.load(Ordering::Relaxed) {
            return false;
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        r.subscribers.insert(conn);
        c.rooms.insert(room.clone());
        true
    }

    fn unsubscribe(&mut self, conn: ConnId, room: &RoomName) {
        self.flush_room(room);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.rooms.remove(room);
            c.replays.remove(room);
        }
        if let Some(r) = self.rooms.get_mut(room) {
            r.subscribers.remove(&conn);
        }
    }

    fn handle_request(&mut self, req: Request, ctx: &mut Context<Self>) {
        let Request {
            conn,
            reference,
            user,
            command,
        } = req;
        if self.shutting_down {
            self.send_error(conn, reference.as_ref(), &ProtoError::unavailable(), None);
            return;
        }
        let user_required = || ProtoError::invalid_field("user_id is required");
        match command {
            Command::Create { room } => {
                self.append(conn, reference, user, room, AppendOp::Create, None)
            }
            Command::Join { room, since } => {
                self.append(conn, reference, user, room, AppendOp::Join, since)
            }
            Command::Leave { room } => {
                self.append(conn, reference, user, room, AppendOp::Leave, None)
            }
            Command::Message {
                room,
                text,
                client_msg_id,
            } => {
                let op = AppendOp::Message {
                    text,
                    client_msg_id,
                };
                self.append(conn, reference, user, room, op, None)
            }
            Command::History { room, range } => match user {
                Some(user) => self.history(conn, reference, room, user, range, ctx),
                None => self.send_error(conn, reference.as_ref(), &user_required(), Some(&room)),
            },
            Command::Rooms => {
                let rooms = self.room_infos();
                let frame = Reply::Rooms {
                    reference: reference.as_ref(),
                    rooms: &rooms,
                }
                .to_frame();
                self.send(conn, frame);
            }
            Command::Members { room } => {
                let Some(r) = self.rooms.get(&room) else {
                    let err = ProtoError::no_such_room(&room);
                    return self.send_error(conn, reference.as_ref(), &err, Some(&room));
                };
                let members: Vec<MemberInfo> = r
                    .members
                    .iter()
                    .map(|u| MemberInfo {
                        user_id: u.clone(),
                        online: self.online.contains_key(u) || self.remote_online.contains(u),
                    })
                    .collect();
                let frame = Reply::Members {
                    reference: reference.as_ref(),
                    room: &room,
                    members: &members,
                }
                .to_frame();
                self.send(conn, frame);
            }
            Command::Ping => {
                let frame = Reply::Pong {
                    reference: reference.as_ref(),
                }
                .to_frame();
                self.send(conn, frame);
            }
        }
    }

    fn append(
        &mut self,
        conn: ConnId,
        reference: Option<Ref>,
        user: Option<UserId>,
        room: RoomName,
        op: AppendOp,
        since: Option<Seq>,
    ) {
        // The session checks identity before it forwards a command.
        let Some(user) = user else {
            let err = ProtoError::invalid_field("user_id is required");
            return self.send_error(conn, reference.as_ref(), &err, Some(&room));
        };
        self.queue_append(
            AppendRequest { room, user, op },
            Origin::Conn {
                conn,
                reference,
                since,
            },
        );
    }

    /// Hands an append to the writer; `unavailable` when its queue is full.
    fn queue_append(&mut self, request: AppendRequest, origin: Origin) {
        let Some(writer) = &self.writer else {
            return self.reply_error(origin, &request.room, ProtoError::unavailable());
        };
        if let Err(job) = writer.try_append(AppendJob { request, origin }) {
            log::warn!("the writer's queue is full: refusing an append");
            self.reply_error(job.origin, &job.request.room, ProtoError::unavailable());
        }
    }

    fn reply_error(&mut self, origin: Origin, room: &RoomName, err: ProtoError) {
        match origin {
            Origin::Conn {
                conn, reference, ..
            } => self.send_error(conn, reference.as_ref(), &err, Some(room)),
            Origin::Http(tx) => {
                let _ = tx.send(Err(err));
            }
        }
    }

    fn history(
        &mut self,
        conn: ConnId,
        reference: Option<Ref>,
        room: RoomName,
        user: UserId,
        range: HistoryRange,
        ctx: &mut Context<Self>,
    ) {
        let store = self.store.clone();
        let fut = async move {
            match store.check_reader(&room, Some(&user)).await? {
                Some(refusal) => Ok(Err(refusal.to_error(&room))),
                None => Ok(Ok(store.events(&room, range).await?)),
            }
            .map(|r| (room, r))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| match res {
            Ok((room, Ok(page))) => {
                let frame = Reply::History {
                    reference: reference.as_ref(),
                    room: &room,
                    events: &page.events,
                    more: page.more,
                }
                .to_frame();
                act.send(conn, frame);
            }
            Ok((room, Err(err))) => act.send_error(conn, reference.as_ref(), &err, Some(&room)),
            Err(e) => {
                let e: crate::store::StoreError = e;
                log::error!("history read failed: {e}");
                act.metrics.store_errors.inc();
                act.send_error(conn, reference.as_ref(), &ProtoError::unavailable(), None);
            }
        }));
    }

    fn room_infos(&self) -> Vec<RoomInfo> {
        self.rooms
            .iter()
            .map(|(name, r)| RoomInfo {
                name: name.clone(),
                members: r.members.len(),
                last_seq: r.last_seq,
            })
            .collect()
    }

    /// Takes one batch's outcomes, in commit order.
    fn committed(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let mut appended = Vec::new();
        for (origin, request, outcome) in msg.jobs {
            match outcome {
                Err(err) => self.reply_error(origin, &request.room, err),
                Ok(AppendOutcome::Refused(refusal)) => {
                    let err = refusal.to_error(&request.room);
                    self.reply_error(origin, &request.room, err)
                }
                Ok(AppendOutcome::Duplicate(event)) => self.finish(origin, &event, true, ctx),
                Ok(AppendOutcome::AlreadyMember { last_seq }) => {
                    if !self.rooms.contains_key(&request.room) {
                        // A room this node has not heard of yet: catch up from the store.
                        self.rooms.insert(request.room.clone(), Room::new(0));
                        ctx.notify(Resync);
                    }
                    self.join_member(origin, &request.room, last_seq, ctx)
                }
                Ok(AppendOutcome::Appended(event)) => {
                    self.metrics.events_committed.inc();
                    appended.push(event.clone());
                    self.receive(event, Some(origin), ctx);
                }
            }
        }
        if let Some(bus) = &self.bus {
            bus.publish(appended);
        }
    }

    /// A join that added no event (the user was a member): subscribe, replay, ack.
    /// `stored_last` is the room's last seq in the store, which this node may lag.
    fn join_member(
        &mut self,
        origin: Origin,
        room: &RoomName,
        stored_last: Seq,
        ctx: &mut Context<Self>,
    ) {
        let Origin::Conn {
            conn,
            reference,
            since,
        } = origin
        else {
            return;
        };
        let local = self.rooms.get(room).map_or(0, |r| r.last_seq);
        if !self.subscribe(conn, room) {
            return;
        }
        // A join without `since` on a node that lags the store starts where
        // the store was, like a resume from there.
        let resumed = since.is_some();
        let resume = since.or((local < stored_last).then_some(stored_last));
        match resume {
            Some(since) if since > local && since <= stored_last => {
                // This node has not delivered `since` yet: skip up to it, then ack.
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.replays.insert(
                        room.clone(),
                        Replay {
                            upto: since,
                            buffer: Vec::new(),
                            waiting: true,
                        },
                    );
                }
                self.waiting_replays
                    .entry(room.clone())
                    .or_default()
                    .push((conn, reference, resumed));
            }
            Some(since) if resumed => self.start_replay(conn, reference, room, since, local, ctx),
            _ => self.send_ack(
                conn,
                Ack {
                    reference: reference.as_ref(),
                    command: "join",
                    room: Some(room),
                    seq: Some(local),
                    ..Ack::default()
                },
            ),
        }
    }

    /// Acks the waiting resumes of a room that has caught up with them.
    fn end_waiting_replays(&mut self, room: &RoomName) {
        let Some(last) = self.rooms.get(room).map(|r| r.last_seq) else {
            return;
        };
        let Some(waiting) = self.waiting_replays.get_mut(room) else {
            return;
        };
        let mut ready = Vec::new();
        waiting.retain(|(conn, reference, resumed)| {
            let upto = self
                .conns
                .get(conn)
                .and_then(|c| c.replays.get(room))
                .filter(|r| r.waiting)
                .map(|r| r.upto);
            match upto {
                Some(upto) if upto <= last => {
                    ready.push((*conn, reference.clone(), *resumed));
                    false
                }
                Some(_) => true,
                None => false, // left, evicted or gone
            }
        });
        if waiting.is_empty() {
            self.waiting_replays.remove(room);
        }
        for (conn, reference, resumed) in ready {
            self.end_replay(conn, reference, room, Vec::new(), resumed.then_some(true));
        }
    }

    /// Puts a committed event (ours or a peer's) in its room's order.
    fn receive(&mut self, event: Event, origin: Option<Origin>, ctx: &mut Context<Self>) {
        let created = event.kind == EventKind::Create;
        self.rooms
            .entry(event.room.clone())
            .or_insert_with(|| Room::new(0));
        if created {
            self.metrics.rooms.set(self.rooms.len() as i64);
        }
        let Some(room) = self.rooms.get_mut(&event.room) else {
            return;
        };
        let next = room.last_seq + 1;
        if event.seq < next {
            // Delivered already (by a gap repair): only the origin still waits.
            if let Some(origin) = origin {
                self.finish_late(origin, &event, ctx);
            }
            return;
        }
        if event.seq > next {
            room.known = room.known.max(event.seq);
            room.pending
                .entry(event.seq)
                .or_insert((event.clone(), None))
                .1 = origin;
            self.schedule_repair(event.room.clone(), ctx);
            return;
        }
        let name = event.room.clone();
        self.deliver(event, origin, ctx);
        // Drain what waited for this one.
        while let Some(room) = self.rooms.get_mut(&name) {
            let next = room.last_seq + 1;
            match room.pending.first_key_value() {
                Some((&seq, _)) if seq < next => {
                    room.pending.pop_first();
                }
                Some((&seq, _)) if seq == next => {
                    if let Some((_, (ev, origin))) = room.pending.pop_first() {
                        self.deliver(ev, origin, ctx);
                    }
                }
                _ => break,
            }
        }
    }

    /// Delivers the next event of a room: apply it, fan it out, answer its origin.
    fn deliver(&mut self, event: Event, origin: Option<Origin>, ctx: &mut Context<Self>) {
        let Some(room) = self.rooms.get_mut(&event.room) else {
            return;
        };
        room.last_seq = event.seq;
        room.known = room.known.max(event.seq);
        match event.kind {
            EventKind::Create | EventKind::Join => {
                room.members.insert(event.user_id.clone());
            }
            EventKind::Leave => {
                room.members.remove(&event.user_id);
            }
            EventKind::Message => {}
        }
        // The creator's or joiner's connection is subscribed before the fan-out,
        // so that it gets its own event before its ack.
        let mut replay_from = None;
        if let Some(Origin::Conn { conn, since, .. }) = &origin {
            if matches!(event.kind, EventKind::Create | EventKind::Join)
                && self.subscribe(*conn, &event.room)
            {
                if let (EventKind::Join, Some(since)) = (event.kind, since) {
                    if let Some(c) = self.conns.get_mut(conn) {
                        c.replays.insert(
                            event.room.clone(),
                            Replay {
                                upto: event.seq,
                                buffer: Vec::new(),
                                waiting: false,
                            },
                        );
                    }
                    replay_from = Some(*since);
                }
            }
        }
        self.fan_out(&event);
        if self.waiting_replays.contains_key(&event.room) {
            self.flush_room(&event.room);
            self.end_waiting_replays(&event.room);
        }
        if event.kind == EventKind::Leave {
            self.unsubscribe_user(&event.room, &event.user_id);
        }
        match (origin, replay_from) {
            (
                Some(Origin::Conn {
                    conn, reference, ..
                }),
                Some(since),
            ) => {
                let upto = event.seq;
                self.run_replay(conn, reference, event.room.clone(), since, upto, ctx);
            }
            (Some(origin), _) => self.finish(origin, &event, false, ctx),
            (None, _) => {}
        }
    }

    /// Puts one event in its room's outbox, serialised once for every subscriber.
    fn fan_out(&mut self, event: &Event) {
        let Some(room) = self.rooms.get_mut(&event.room) else {
            return;
        };
        if room.subscribers.is_empty() {
            return;
        }
        if room.outbox.is_empty() {
            self.dirty.push(event.room.clone());
        }
        room.outbox.push((event.seq, event.to_frame()));
        if !self.batching {
            self.flush();
        }
    }

    /// After a leave, none of that user's local connections hears the room.
    fn unsubscribe_user(&mut self, room: &RoomName, user: &UserId) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let conns: Vec<ConnId> = r
            .subscribers
            .iter()
            .filter(|id| self.conns.get(id).and_then(|c| c.user.as_ref()) == Some(user))
            .copied()
            .collect();
        for conn in conns {
            self.unsubscribe(conn, room);
        }
    }

    /// Answers an append's origin once its event has been delivered.
    fn finish(&mut self, origin: Origin, event: &Event, duplicate: bool, _ctx: &mut Context<Self>) {
        match origin {
            Origin::Conn {
                conn, reference, ..
            } => {
                let frame = Reply::Ack(Ack {
                    reference: reference.as_ref(),
                    command: event.kind.as_str(),
                    room: Some(&event.room),
                    seq: Some(event.seq),
                    id: Some(event.id),
                    duplicate: duplicate.then_some(true),
                    recovered: None,
                })
                .to_frame();
                // After a join or create, later events must not overtake the
                // ack (its seq is where the connection's stream starts).
                match event.kind {
                    EventKind::Create | EventKind::Join => self.send(conn, frame),
                    EventKind::Leave | EventKind::Message => self.reply(conn, frame),
                }
            }
            Origin::Http(tx) => {
                let _ = tx.send(Ok((event.clone(), duplicate)));
            }
        }
    }

    /// Our own event was delivered by a gap repair before its commit reached
    /// us: the origin's connection still gets it (if it subscribes now), then its ack.
    fn finish_late(&mut self, origin: Origin, event: &Event, ctx: &mut Context<Self>) {
        if let Origin::Conn {
            conn,
            since,
            reference,
        } = &origin
        {
            if matches!(event.kind, EventKind::Create | EventKind::Join)
                && self.subscribe(*conn, &event.room)
            {
                if let Some(since) = since {
                    let upto = self
                        .rooms
                        .get(&event.room)
                        .map_or(event.seq, |r| r.last_seq);
                    return self.start_replay(
                        *conn,
                        reference.clone(),
                        &event.room,
                        *since,
                        upto,
                        ctx,
                    );
                }
                self.send(*conn, event.to_frame());
            }
        }
        self.finish(origin, event, false, ctx);
    }

    /// Starts a replay for a subscribed connection: events `since < seq <= upto`
    /// from the store, then whatever arrived meanwhile, then the ack.
    fn start_replay(
        &mut self,
        conn: ConnId,
        reference: Option<Ref>,
        room: &RoomName,
        since: Seq,
        upto: Seq,
        ctx: &mut Context<Self>,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.replays.insert(
                room.clone(),
                Replay {
                    upto,
                    buffer: Vec::new(),
                    waiting: false,
                },
            );
        }
        self.run_replay(conn, reference, room.clone(), since, upto, ctx);
    }

    fn run_replay(
        &mut self,
        conn: ConnId,
        reference: Option<Ref>,
        room: RoomName,
        since: Seq,
        upto: Seq,
        ctx: &mut Context<Self>,
    ) {
        let missed = upto - since;
        if missed <= 0 || missed > self.config.replay_limit {
            // Nothing to send, too much to send, or a `since` from another
            // epoch: live events start after the ack's seq.
            let recovered = missed == 0;
            return self.end_replay(conn, reference, &room, Vec::new(), Some(recovered));
        }
        self.metrics.replays.inc();
        let store = self.store.clone();
        let range = HistoryRange {
            since: Some(since),
            before: Some(upto + 1),
            limit: missed,
        };
        let replayed = room.clone();
        let fut = async move { store.events(&room, range).await.map(|p| (room, p)) };
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| match res {
            Ok((room, page)) => {
                if page.events.len() as i64 != missed {
                    log::error!(
                        "replay of {room} ({since}, {upto}] read {} events, expected {missed}",
                        page.events.len()
                    );
                }
                act.end_replay(conn, reference, &room, page.events, Some(true));
            }
            Err(e) => {
                log::error!("replay read failed: {e}");
                act.metrics.store_errors.inc();
                // The join is stored, but this connection cannot be given
                // what it missed: it is not subscribed, and may join again.
                act.unsubscribe(conn, &replayed);
                act.send_error(
                    conn,
                    reference.as_ref(),
                    &ProtoError::unavailable(),
                    Some(&replayed),
                );
            }
        }));
    }

    /// Sends the replayed events, then what was buffered, then the join's ack,
    /// and turns the connection's subscription live.
    fn end_replay(
        &mut self,
        conn: ConnId,
        reference: Option<Ref>,
        room: &RoomName,
        events: Vec<Event>,
        recovered: Option<bool>,
    ) {
        let Some(replay) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.replays.remove(room))
        else {
            // Left, evicted or gone meanwhile.
            return;
        };
        let mut last = replay.upto;
        self.metrics.replayed_events.add(events.len() as u64);
        for ev in &events {
            self.send(conn, ev.to_frame());
        }
        for (seq, frame) in replay.buffer {
            last = seq;
            self.send(conn, frame);
        }
        self.send_ack(
            conn,
            Ack {
                reference: reference.as_ref(),
                command: "join",
                room: Some(room),
                seq: Some(last),
                recovered,
                ..Ack::default()
            },
        );
    }

    /// A room's seq jumped: wait briefly for the missing events, then read them.
    fn schedule_repair(&mut self, room: RoomName, ctx: &mut Context<Self>) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        if r.repairing {
            return;
        }
        r.repairing = true;
        ctx.run_later(GAP_REPAIR_DELAY, move |act, ctx| act.repair(room, ctx));
    }

    fn repair(&mut self, room: RoomName, ctx: &mut Context<Self>) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let since = r.last_seq;
        // Read up to the first event waiting, or past the last one known.
        let before = r.pending.keys().next().copied().unwrap_or(r.known + 1);
        if before <= since + 1 {
            r.repairing = false;
            return;
        }
        self.metrics.gap_repairs.inc();
        let store = self.store.clone();
        let range = HistoryRange {
            since: Some(since),
            before: Some(before),
            limit: (before - since - 1).min(GAP_REPAIR_PAGE),
        };
        log::debug!("repairing {room}: reading seqs {since} < seq < {before}");
        let fut = async move { store.events(&room, range).await.map(|p| (room, p)) };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((room, page)) => {
                if let Some(r) = act.rooms.get_mut(&room) {
                    r.repairing = false;
                }
                act.batch(|act| {
                    for ev in page.events {
                        act.receive(ev, None, ctx);
                    }
                });
                let behind = act.rooms.get(&room).is_some_and(|r| r.known > r.last_seq);
                if behind {
                    act.schedule_repair(room, ctx);
                }
            }
            Err(e) => {
                log::error!("gap repair read failed: {e}; retrying in 1 s");
                act.metrics.store_errors.inc();
                ctx.run_later(Duration::from_secs(1), |act, ctx| {
                    let rooms: Vec<RoomName> = act
                        .rooms
                        .iter()
                        .filter(|(_, r)| r.repairing)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for room in rooms {
                        act.repair(room, ctx);
                    }
                });
            }
        }));
    }

    /// Reads every room this node serves from its last delivered seq (after
    /// the bus reconnects, since pub/sub drops what was published meanwhile).
    fn resync(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let fut = async move { store.snapshot().await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(snapshot) => act.apply_snapshot(snapshot, ctx),
            Err(e) => {
                log::error!("resync read failed: {e}; retrying in 1 s");
                act.metrics.store_errors.inc();
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.resync(ctx));
            }
        }));
    }

    /// Rooms whose stored last seq is ahead of ours are repaired from the store.
    fn apply_snapshot(&mut self, snapshot: Snapshot, ctx: &mut Context<Self>) {
        let mut members: HashMap<RoomName, HashSet<UserId>> = HashMap::new();
        for (room, user) in snapshot.members {
            members.entry(room).or_default().insert(user);
        }
        for (name, last) in snapshot.rooms {
            let room = self
                .rooms
                .entry(name.clone())
                .or_insert_with(|| Room::new(0));
            if last > room.last_seq {
                room.known = room.known.max(last);
                self.schedule_repair(name, ctx);
            } else if last == room.last_seq {
                // In step with the store: its members are this seq's members.
                room.members = members.remove(&name).unwrap_or_default();
            }
        }
        self.metrics.rooms.set(self.rooms.len() as i64);
    }
}

impl Actor for ChatServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Every session holds one sender; this bounds what queues beyond them.
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<Connect> for ChatServer {
    type Result = MessageResult<Connect>;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> Self::Result {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        if let Some(user) = &msg.user {
            *self.online.entry(user.clone()).or_default() += 1;
        }
        self.conns.insert(
            id,
            Conn {
                addr: msg.addr,
                user: msg.user,
                rooms: HashSet::new(),
                replays: HashMap::new(),
                outbound: msg.outbound,
            },
        );
        MessageResult(id)
    }
}

impl Handler<Identify> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Identify, _: &mut Context<Self>) {
        let Some(c) = self.conns.get_mut(&msg.conn) else {
            return;
        };
        if c.user.is_none() {
            c.user = Some(msg.user.clone());
            *self.online.entry(msg.user.clone()).or_default() += 1;
        }
    }
}

impl Handler<Disconnect> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.unsubscribe_all(msg.conn);
        let Some(c) = self.conns.remove(&msg.conn) else {
            return;
        };
        if let Some(user) = c.user {
            if let Some(n) = self.online.get_mut(&user) {
                *n -= 1;
                if *n == 0 {
                    self.online.remove(&user);
                }
            }
        }
    }
}

impl Handler<Request> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Request, ctx: &mut Context<Self>) {
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
                act.receive(event, None, ctx);
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
        self.remote_online = msg.users;
    }
}

impl Handler<LocalPresence> for ChatServer {
    type Result = MessageResult<LocalPresence>;

    fn handle(&mut self, _: LocalPresence, _: &mut Context<Self>) -> Self::Result {
        let mut users: Vec<UserId> = self.online.keys().cloned().collect();
        users.sort();
        MessageResult(users)
    }
}

impl Handler<ListRooms> for ChatServer {
    type Result = MessageResult<ListRooms>;

    fn handle(&mut self, _: ListRooms, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.room_infos())
    }
}

impl Handler<Post> for ChatServer {
    type Result = ();

    fn handle(&mut self, msg: Post, _: &mut Context<Self>) {
        if self.shutting_down {
            let _ = msg.reply.send(Err(ProtoError::unavailable()));
            return;
        }
        self.queue_append(
            AppendRequest {
                room: msg.room,
                user: msg.user,
                op: AppendOp::Message {
                    text: msg.text,
                    client_msg_id: msg.client_msg_id,
                },
            },
            Origin::Http(msg.reply),
        );
    }
}

impl Handler<Shutdown> for ChatServer {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        self.shutting_down = true;
        // Dropping the writer's queue lets it finish what is queued and stop.
        self.writer = None;
        for c in self.conns.values() {
            c.addr.do_send(Deliver::Shutdown);
        }
    }
}
