//! From a commit to the sockets: takes the writer's outcomes and peers'
//! events, puts them in each room's order (through the [`Sequencer`]),
//! applies them to the room's members, fans them out through the outbox and
//! answers whoever waits. Also the subscription changes a delivery causes.
//!
//! [`Sequencer`]: crate::hub::sequencer::Sequencer

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::hub::outbox::offer;
use crate::hub::replay::{Resumer, Waiting};
use crate::hub::sequencer::Offer;
use crate::hub::ChatServer;
use crate::messages::{Committed, ConnId, Deliver, LiveEvent, Origin, Resync};
use crate::protocol::error_frame;
use crate::protocol::{
    reply_frame, Ack, Event, EventKind, ProtoError, Ref, Reply, RoomName, Seq, UserId,
};
use crate::store::AppendOutcome;

/// One of our appends, committed, and who waits for it.
pub struct Appended {
    pub origin: Origin,
    pub event: Event,
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
        self.metrics.command_errors.inc();
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
    fn flush(&mut self) {
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
            match outcome {
                Err(err) => self.reply_error(origin, &request.room, err),
                Ok(AppendOutcome::Refused(refusal)) => {
                    let err = refusal.to_error(&request.room);
                    self.reply_error(origin, &request.room, err)
                }
                Ok(AppendOutcome::Duplicate(event)) => self.finish(origin, &event, true),
                Ok(AppendOutcome::AlreadyMember { last_seq }) => {
                    if self.sequencer.add_room(&request.room, 0) {
                        // A room this node has not heard of yet: catch up from the store.
                        ctx.notify(Resync);
                    }
                    self.join_member(origin, &request.room, last_seq, ctx)
                }
                Ok(AppendOutcome::Appended(event)) => {
                    self.metrics.events_committed.inc();
                    let live = LiveEvent::of(&event);
                    appended.push(live.clone());
                    self.receive(live, Some(Appended { origin, event }), ctx);
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
        let members = self.members.entry(event.room.clone()).or_default();
        match event.kind {
            EventKind::Create | EventKind::Join => {
                members.insert(event.user.clone());
            }
            EventKind::Leave => {
                members.remove(&event.user);
            }
            EventKind::Message => {}
        }
        // The creator's or joiner's connection is subscribed before the fan-out,
        // so that it gets its own event before its ack.
        let mut replay_from = None;
        if let Some(Appended {
            origin: Origin::Conn { conn, since, .. },
            ..
        }) = &waiter
        {
            if event.kind.joins() && self.subscribe(*conn, &event.room) {
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
        if event.kind == EventKind::Leave {
            self.unsubscribe_user(&event.room, &event.user);
        }
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
                };
                self.run_replay(who, event.room, since, event.seq, ctx);
            }
            (Some(w), _) => self.finish(w.origin, &w.event, false),
            (None, _) => {}
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

    /// Answers an append's origin once its event has been delivered.
    pub(super) fn finish(&mut self, origin: Origin, event: &Event, duplicate: bool) {
        match origin {
            Origin::Conn {
                conn,
                reference,
                received,
                ..
            } => {
                let frame = reply_frame(&Reply::Ack(Ack {
                    reference: reference.as_ref(),
                    command: event.kind.as_str(),
                    room: Some(&event.room),
                    seq: Some(event.seq),
                    id: Some(event.id),
                    duplicate: duplicate.then_some(true),
                    recovered: None,
                }));
                self.metrics
                    .ack_latency
                    .observe(received.elapsed().as_secs_f64());
                // After a join or create, later events must not overtake the
                // ack (its seq is where the connection's stream starts).
                if event.kind.joins() {
                    self.send(conn, frame)
                } else {
                    self.reply(conn, frame)
                }
            }
            Origin::Http(tx) => {
                let _ = tx.send(Ok((event.clone(), duplicate)));
            }
        }
    }

    /// Our own event was delivered by a gap repair before its commit reached
    /// us: the origin's connection still gets it (if it subscribes now), then its ack.
    fn finish_late(&mut self, waiter: Appended, ctx: &mut Context<Self>) {
        let Appended { origin, event } = waiter;
        if let Origin::Conn {
            conn,
            since,
            reference,
            received,
        } = &origin
        {
            if event.kind.joins() && self.subscribe(*conn, &event.room) {
                if let Some(since) = since {
                    let upto = self.sequencer.last(&event.room).unwrap_or(event.seq);
                    let who = Resumer {
                        conn: *conn,
                        reference: reference.clone(),
                        received: *received,
                    };
                    return self.start_replay(who, &event.room, *since, upto, ctx);
                }
                self.send(*conn, event.to_json().into());
            }
        }
        self.finish(origin, &event, false);
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
            received,
        } = origin
        else {
            return;
        };
        let local = self.sequencer.last(room).unwrap_or(0);
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
                self.replays.start(conn, room, since, true);
                self.replays.add_waiting(
                    room,
                    Waiting {
                        conn,
                        reference,
                        resumed,
                        received,
                    },
                );
            }
            Some(since) if resumed => {
                let who = Resumer {
                    conn,
                    reference,
                    received,
                };
                self.start_replay(who, room, since, local, ctx)
            }
            _ => {
                self.metrics
                    .ack_latency
                    .observe(received.elapsed().as_secs_f64());
                self.send_ack(
                    conn,
                    Ack {
                        reference: reference.as_ref(),
                        command: "join",
                        room: Some(room),
                        seq: Some(local),
                        ..Ack::default()
                    },
                )
            }
        }
    }
}
