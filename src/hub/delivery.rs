//! From a commit to the sockets: takes the writer's outcomes and peers'
//! events, puts them in each room's order (through the [`Sequencer`]),
//! applies them to the room's members, fans them out through the outbox and
//! hands whoever waits to `acks.rs` (and the user-addressed frames an event
//! causes to `notices.rs`). Also the subscription changes a delivery causes.
//!
//! [`Sequencer`]: crate::hub::sequencer::Sequencer

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::hub::outbox::offer;
use crate::hub::replay::Resumer;
use crate::hub::sequencer::Offer;
use crate::hub::ChatServer;
use crate::messages::{Committed, ConnId, Deliver, LiveEvent, Origin, Resync};
use crate::protocol::error_frame;
use crate::protocol::{
    reply_frame, Ack, Event, EventKind, ProtoError, Ref, Reply, RoomName, UserId,
};
use crate::store::{AppendOp, AppendOutcome};

/// One of our appends, committed, and who waits for it: it rides the last
/// event the append made, so that the ack comes after all of them.
pub struct Appended {
    pub origin: Origin,
    /// The event the ack names (a `dm`'s last; every other command's first).
    pub event: Event,
    /// The command, as the ack names it.
    pub command: &'static str,
    /// A `dm`'s other user.
    pub with: Option<UserId>,
    /// Whether the origin's connection is subscribed to the room (`create`,
    /// `join`, `dm`).
    pub subscribes: bool,
    /// Whether this waiter acks; `false` for the one that rides the first of
    /// several events only to subscribe the connection before them (a new DM).
    pub ack: bool,
    /// A `message`'s mentions of users who are not members.
    pub dropped: Vec<UserId>,
}

impl ChatServer {
    /// Sends one frame to a connection now (after what the batch holds).
    pub(super) fn send(&mut self, conn: ConnId, frame: ByteString) {
        if self.outbox.batching() {
            self.flush();
        }
        self.push(conn, Deliver::Frame(frame));
    }

    /// Sends frames to a connection now, in shared deliveries of the outbox's size.
    pub(super) fn send_all<'a>(
        &mut self,
        conn: ConnId,
        frames: impl Iterator<Item = &'a ByteString>,
    ) {
        if self.outbox.batching() {
            self.flush();
        }
        for chunk in self.outbox.chunks(frames) {
            self.push(conn, Deliver::Frames(chunk));
        }
    }

    /// Sends an ack or error: inside a batch, after the batch's events.
    pub(super) fn reply(&mut self, conn: ConnId, frame: ByteString) {
        if self.outbox.batching() {
            self.outbox.push_reply(conn, frame);
        } else {
            self.push(conn, Deliver::Frame(frame));
        }
    }

    /// Queues a message for a connection; evicts it when its mailbox is full.
    fn push(&mut self, conn: ConnId, msg: Deliver) {
        let Some(c) = self.registry.get(conn) else {
            return;
        };
        if c.evicted() {
            return;
        }
        match offer(c, msg, self.config.outbound_max_bytes) {
            Ok(()) => {}
            Err(SendError::Full(_)) => self.evict(conn),
            Err(SendError::Closed(_)) => self.unsubscribe_all(conn),
        }
    }

    pub(super) fn send_error(
        &mut self,
        conn: ConnId,
        reference: Option<&Ref>,
        err: &ProtoError,
        room: Option<&RoomName>,
    ) {
        self.metrics.command_error(err.code);
        let frame = error_frame(reference, err, room);
        self.reply(conn, frame);
    }

    /// An ack that must not be overtaken by later events (join, create, replay).
    pub(super) fn send_ack(&mut self, conn: ConnId, ack: Ack<'_>) {
        let frame = reply_frame(&Reply::Ack(ack));
        self.send(conn, frame);
    }

    /// Runs `f` as one batch: its events and replies go out together at the end.
    pub(super) fn batch(&mut self, f: impl FnOnce(&mut Self)) {
        self.outbox.begin();
        f(self);
        self.flush();
        self.outbox.end();
    }

    /// Hands every room's waiting events to its subscribers, then the replies.
    pub(super) fn flush(&mut self) {
        for room in self.outbox.take_dirty() {
            self.flush_room(&room);
        }
        for (conn, deliveries) in self.outbox.take_replies() {
            for frames in deliveries {
                self.push(conn, Deliver::Frames(frames));
            }
        }
    }

    /// Hands one room's waiting events to its subscribers, shared: one
    /// allocation per room and batch, one mailbox message per subscriber.
    pub(super) fn flush_room(&mut self, room: &RoomName) {
        let events = self.outbox.take_room(room);
        if events.is_empty() {
            return;
        }
        let chunks = self.outbox.chunks(events.iter().map(|(_, f)| f));
        let mut full = Vec::new();
        let mut delivered = 0u64;
        for id in self.registry.subscribers(room) {
            let mut over = false;
            // A resume in progress takes what comes after its replay.
            if self
                .replays
                .hold(id, room, &events, self.config.outbound_max_bytes, &mut over)
            {
                if over {
                    full.push(id);
                }
                continue;
            }
            let Some(c) = self.registry.get(id) else {
                continue;
            };
            if c.evicted() {
                continue;
            }
            for chunk in &chunks {
                match offer(
                    c,
                    Deliver::Frames(chunk.clone()),
                    self.config.outbound_max_bytes,
                ) {
                    Ok(()) => delivered += chunk.frames.len() as u64,
                    Err(SendError::Full(_)) => {
                        full.push(id);
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
        if let Some(c) = self.registry.get(conn) {
            c.outbound.evicted.store(true, Ordering::Relaxed);
            self.metrics.evictions.inc();
            log::info!("evicting slow consumer {conn:?}");
            // Wake the session so that it closes with 4000 even when nothing
            // else is queued for it (a replay buffer that overflowed). When
            // its mailbox is full this fails, and what is queued wakes it.
            let _ = c.addr.try_send(Deliver::Frames(Arc::default()));
        }
        self.unsubscribe_all(conn);
    }

    pub(super) fn unsubscribe_all(&mut self, conn: ConnId) {
        let rooms: Vec<RoomName> = self
            .registry
            .get(conn)
            .map(|c| c.rooms.iter().cloned().collect())
            .unwrap_or_default();
        for room in &rooms {
            self.flush_room(room);
        }
        self.replays.remove_conn(conn);
        self.registry.unsubscribe_all(conn);
    }

    pub(super) fn subscribe(&mut self, conn: ConnId, room: &RoomName) -> bool {
        // Events already in the batch came before this subscription.
        self.flush_room(room);
        self.sequencer.last(room).is_some() && self.registry.subscribe(conn, room)
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, room: &RoomName) {
        self.flush_room(room);
        self.replays.finish(conn, room);
        self.registry.unsubscribe(conn, room);
    }

    /// After a leave, none of that user's local connections hears the room.
    fn unsubscribe_user(&mut self, room: &RoomName, user: &UserId) {
        for conn in self.registry.subscribers_of_user(room, user) {
            self.unsubscribe(conn, room);
        }
    }

    /// Takes one batch's outcomes, in commit order, and publishes what it appended.
    pub(super) fn committed(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let mut appended = Vec::new();
        for (origin, request, outcome) in msg.jobs {
            let room = &request.room;
            let command = request.op.command();
            let with = match &request.op {
                AppendOp::Dm { other } => Some(other.clone()),
                _ => None,
            };
            match outcome {
                Err(err) => self.reply_error(origin, Some(room), err),
                Ok(AppendOutcome::Refused(refusal)) => {
                    let err = refusal.to_error(room, request.op.target());
                    self.reply_error(origin, Some(room), err)
                }
                Ok(AppendOutcome::Duplicate(event)) => {
                    let waiter = Appended {
                        origin,
                        event: *event,
                        command,
                        with,
                        subscribes: false,
                        ack: true,
                        dropped: Vec::new(),
                    };
                    self.finish(waiter, true)
                }
                Ok(
                    outcome @ (AppendOutcome::Unchanged { last_seq }
                    | AppendOutcome::Repeated { last_seq }),
                ) => {
                    let repeated = matches!(outcome, AppendOutcome::Repeated { .. });
                    let ack = Ack {
                        reference: origin.reference(),
                        command,
                        room: Some(room),
                        seq: Some(last_seq),
                        unchanged: (!repeated).then_some(true),
                        duplicate: repeated.then_some(true),
                        ..Ack::default()
                    };
                    let frame = reply_frame(&Reply::Ack(ack));
                    self.answer(origin, frame);
                }
                Ok(AppendOutcome::AlreadyMember { last_seq }) => {
                    if self.sequencer.add_room(room, 0) {
                        // A room this node has not heard of yet: catch up from the store.
                        ctx.notify(Resync);
                    }
                    self.join_member(origin, room, last_seq, command, with.as_ref(), ctx)
                }
                Ok(AppendOutcome::Appended(events)) => {
                    self.metrics.events_committed.add(events.len() as u64);
                    let acked = if with.is_some() {
                        events.last()
                    } else {
                        events.first()
                    };
                    let Some(acked) = acked.cloned() else {
                        continue;
                    };
                    let last = events.len() - 1;
                    let subscribes = request.op.subscribes();
                    // The connection that caused several events is subscribed
                    // at the first, so that it gets all of them before its ack.
                    let mut first = match (&origin, subscribes && last > 0) {
                        (Origin::Conn { conn, received, .. }, true) => Some(Appended {
                            origin: Origin::Conn {
                                conn: *conn,
                                reference: None,
                                since: None,
                                received: *received,
                            },
                            event: acked.clone(),
                            command,
                            with: None,
                            subscribes: true,
                            ack: false,
                            dropped: Vec::new(),
                        }),
                        _ => None,
                    };
                    let dropped = match &request.op {
                        AppendOp::Message { mentions, .. } => mentions
                            .iter()
                            .filter(|m| !acked.mentions.contains(m))
                            .cloned()
                            .collect(),
                        _ => Vec::new(),
                    };
                    let mut waiter = Some(Appended {
                        origin,
                        event: acked,
                        command,
                        with,
                        subscribes,
                        ack: true,
                        dropped,
                    });
                    for (i, event) in events.iter().enumerate() {
                        let live = LiveEvent::of(event);
                        appended.push(live.clone());
                        let w = if i == last {
                            waiter.take()
                        } else if i == 0 {
                            first.take()
                        } else {
                            None
                        };
                        self.receive(live, w, ctx);
                    }
                }
            }
        }
        self.bus.publish(appended);
    }

    /// Puts a committed event (ours or a peer's) in its room's order.
    pub(super) fn receive(
        &mut self,
        event: LiveEvent,
        waiter: Option<Appended>,
        ctx: &mut Context<Self>,
    ) {
        let room = event.room.clone();
        if self.sequencer.add_room(&room, 0) || event.kind == EventKind::Create {
            self.metrics.rooms.set(self.sequencer.len() as i64);
        }
        match self.sequencer.offer(&room, event.seq, event, waiter) {
            Offer::Ready(event, waiter) => {
                self.deliver(event, waiter, ctx);
                // Deliver what waited for this one.
                while let Some(next) = self.sequencer.next_ready(&room) {
                    match next {
                        Offer::Ready(event, waiter) => self.deliver(event, waiter, ctx),
                        Offer::Stale(_, Some(waiter)) => self.finish_late(waiter, ctx),
                        _ => {}
                    }
                }
            }
            // Delivered already (by a gap repair): only our waiter still waits.
            Offer::Stale(_, Some(waiter)) => self.finish_late(waiter, ctx),
            Offer::Stale(_, None) => {}
            Offer::Held { repair } => {
                if repair {
                    self.schedule_repair(room, ctx);
                }
            }
        }
    }

    /// Delivers the next event of a room: apply it, fan it out, answer its origin.
    fn deliver(&mut self, event: LiveEvent, waiter: Option<Appended>, ctx: &mut Context<Self>) {
        self.rooms.apply(&event);
        self.recent
            .push(&event.room, event.seq, event.kind, &event.frame);
        // The creator's or joiner's connection is subscribed before the fan-out,
        // so that it gets its own event before its ack.
        let mut replay_from = None;
        if let Some(Appended {
            origin: Origin::Conn { conn, since, .. },
            subscribes: true,
            ..
        }) = &waiter
        {
            if self.subscribe(*conn, &event.room) {
                if let (EventKind::Join, Some(since)) = (event.kind, since) {
                    self.replays.start(*conn, &event.room, event.seq, false);
                    replay_from = Some(*since);
                }
            }
        }
        self.fan_out(&event);
        if self.replays.has_waiting(&event.room) {
            self.flush_room(&event.room);
            self.end_waiting_replays(&event.room);
        }
        match (event.kind, &event.facts.target) {
            (EventKind::Leave, _) => self.unsubscribe_user(&event.room, &event.user),
            (kind, Some(target)) if kind.removes_target() => {
                self.unsubscribe_user(&event.room, target)
            }
            _ => {}
        }
        self.notify_user(&event);
        match (waiter, replay_from) {
            (
                Some(Appended {
                    origin:
                        Origin::Conn {
                            conn,
                            reference,
                            received,
                            ..
                        },
                    ..
                }),
                Some(since),
            ) => {
                let who = Resumer {
                    conn,
                    reference,
                    received,
                    with: None,
                };
                self.run_replay(who, event.room, since, event.seq, ctx);
            }
            (Some(w), _) if w.ack => self.finish(w, false),
            (Some(_), _) | (None, _) => {}
        }
    }

    /// Puts one event in its room's outbox, for every subscriber.
    fn fan_out(&mut self, event: &LiveEvent) {
        if !self.registry.has_subscribers(&event.room) {
            return;
        }
        self.outbox
            .push_event(&event.room, event.seq, event.frame.clone());
        if !self.outbox.batching() {
            self.flush();
        }
    }
}
