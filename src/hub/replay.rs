//! Replays: a `join` with `since` gets what it missed from the store, then
//! the live events that came meanwhile, then its ack, with no gap and no
//! duplicate (invariant 4 in docs/architecture.md). [`Replays`] holds the state (plain
//! data, unit-tested); the `impl ChatServer` below runs the reads.

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use bytestring::ByteString;

use crate::hub::ChatServer;
use crate::messages::ConnId;
use crate::messages::FRAME_OVERHEAD;
use crate::protocol::{Ack, HistoryRange, ProtoError, Ref, RoomName, Seq, UserId};

/// The least JSON an event takes (an empty-ish `join`): with it, a replay
/// too long for the byte cap is refused before anything is read.
const MIN_EVENT_BYTES: usize = 120;

/// One connection's replay of one room: live events past `upto` wait in
/// `buffer` until the replay has been sent.
#[derive(Debug)]
pub struct Replay {
    pub upto: Seq,
    pub buffer: Vec<(Seq, ByteString)>,
    /// What `buffer` holds, counted as against the outbound bound.
    pub buffer_bytes: usize,
    /// The client resumes from a seq this node has not delivered yet (it lags
    /// the store): nothing to read, but events up to `upto` are skipped and
    /// the ack waits until the room gets there.
    pub waiting: bool,
}

/// A resume waiting for this node to catch up with the store.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub conn: ConnId,
    pub reference: Option<Ref>,
    /// Whether the client asked with `since` (its ack says `recovered`).
    pub resumed: bool,
    pub received: Instant,
    /// A `dm`'s other user (the ack is then a `dm`'s, not a `join`'s).
    pub with: Option<UserId>,
}

#[derive(Default)]
pub struct Replays {
    by_conn: HashMap<ConnId, HashMap<RoomName, Replay>>,
    waiting: HashMap<RoomName, Vec<Waiting>>,
}

impl Replays {
    pub fn start(&mut self, conn: ConnId, room: &RoomName, upto: Seq, waiting: bool) {
        self.by_conn.entry(conn).or_default().insert(
            room.clone(),
            Replay {
                upto,
                buffer: Vec::new(),
                buffer_bytes: 0,
                waiting,
            },
        );
    }

    /// Holds a room's live events for a connection whose replay of it is
    /// running: true when it does, whether or not they were kept. The events
    /// up to the replay's end are the replay's; past `max_bytes` held, the
    /// connection is evicted (`over` is set), as it would be had the events
    /// gone to its mailbox.
    pub fn hold(
        &mut self,
        conn: ConnId,
        room: &RoomName,
        events: &[(Seq, ByteString)],
        max_bytes: usize,
        over: &mut bool,
    ) -> bool {
        let Some(replay) = self.by_conn.get_mut(&conn).and_then(|r| r.get_mut(room)) else {
            return false;
        };
        let upto = replay.upto;
        for (seq, frame) in events.iter().filter(|(seq, _)| *seq > upto) {
            replay.buffer_bytes += frame.len() + FRAME_OVERHEAD;
            replay.buffer.push((*seq, frame.clone()));
        }
        *over = replay.buffer_bytes > max_bytes;
        true
    }

    /// Ends a replay, giving back what it holds (`None` when the connection
    /// left the room, was evicted or closed meanwhile).
    pub fn finish(&mut self, conn: ConnId, room: &RoomName) -> Option<Replay> {
        let rooms = self.by_conn.get_mut(&conn)?;
        let replay = rooms.remove(room);
        if rooms.is_empty() {
            self.by_conn.remove(&conn);
        }
        replay
    }

    pub fn remove_conn(&mut self, conn: ConnId) {
        self.by_conn.remove(&conn);
    }

    pub fn add_waiting(&mut self, room: &RoomName, w: Waiting) {
        self.waiting.entry(room.clone()).or_default().push(w);
    }

    pub fn has_waiting(&self, room: &RoomName) -> bool {
        self.waiting.contains_key(room)
    }

    /// The waiting resumes of `room` that `last` has caught up with; those
    /// whose replay is gone are forgotten.
    pub fn ready(&mut self, room: &RoomName, last: Seq) -> Vec<Waiting> {
        let Some(waiting) = self.waiting.get_mut(room) else {
            return Vec::new();
        };
        let by_conn = &self.by_conn;
        let mut ready = Vec::new();
        waiting.retain(|w| {
            let upto = by_conn
                .get(&w.conn)
                .and_then(|r| r.get(room))
                .filter(|r| r.waiting)
                .map(|r| r.upto);
            match upto {
                Some(upto) if upto <= last => {
                    ready.push(w.clone());
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
        if waiting.is_empty() {
            self.waiting.remove(room);
        }
        ready
    }
}

impl ChatServer {
    /// Starts a replay for a subscribed connection: events `since < seq <= upto`
    /// from the store, then whatever arrived meanwhile, then the ack.
    pub(super) fn start_replay(
        &mut self,
        who: Resumer,
        room: &RoomName,
        since: Seq,
        upto: Seq,
        ctx: &mut Context<Self>,
    ) {
        self.replays.start(who.conn, room, upto, false);
        self.run_replay(who, room.clone(), since, upto, ctx);
    }

    /// Reads the events of a replay started with [`Replays::start`].
    pub(super) fn run_replay(
        &mut self,
        who: Resumer,
        room: RoomName,
        since: Seq,
        upto: Seq,
        ctx: &mut Context<Self>,
    ) {
        let missed = upto - since;
        // Events fewer than this many bytes each cannot fit the byte cap.
        let fits = missed <= (self.config.replay_max_bytes() / MIN_EVENT_BYTES) as i64;
        if missed <= 0 || missed > self.config.replay_limit || !fits {
            // Nothing to send, too much to send, or a `since` from another
            // epoch: live events start after the ack's seq.
            return self.end_replay(who, Some(missed == 0), &room, Vec::new());
        }
        self.metrics.replays.inc();
        if let Some(frames) = self.recent.range(&room, since, upto) {
            self.metrics.replays_from_memory.inc();
            return self.send_replay(who, &room, frames);
        }
        let store = self.store.clone();
        let range = HistoryRange {
            since: Some(since),
            before: Some(upto + 1),
            limit: missed,
        };
        let read = room.clone();
        let fut = async move { store.events(&read, range).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, _| match res {
            Ok(page) => {
                if page.events.len() as i64 != missed {
                    log::error!(
                        "replay of {room} ({since}, {upto}] read {} events, expected {missed}",
                        page.events.len()
                    );
                }
                let frames = page.events.iter().map(|e| e.to_json().into()).collect();
                act.send_replay(who, &room, frames);
            }
            Err(e) => {
                log::error!("replay read failed: {e}");
                act.metrics.store_errors.inc();
                // The join is stored, but this connection cannot be given
                // what it missed: it is not subscribed, and may join again.
                act.unsubscribe(who.conn, &room);
                act.send_error(
                    who.conn,
                    who.reference.as_ref(),
                    &ProtoError::unavailable(),
                    Some(&room),
                );
            }
        }));
    }

    /// Ends a replay with the events read (from memory or the store), or
    /// with none and `recovered: false` when they pass the byte cap: never
    /// partial, like a resume past REPLAY_LIMIT.
    fn send_replay(&mut self, who: Resumer, room: &RoomName, frames: Vec<ByteString>) {
        let bytes: usize = frames.iter().map(|f| f.len() + FRAME_OVERHEAD).sum();
        if bytes > self.config.replay_max_bytes() {
            return self.end_replay(who, Some(false), room, Vec::new());
        }
        self.end_replay(who, Some(true), room, frames);
    }

    /// Sends the replayed events, then what was held, then the join's ack,
    /// and turns the connection's subscription live.
    pub(super) fn end_replay(
        &mut self,
        end: Resumer,
        recovered: Option<bool>,
        room: &RoomName,
        events: Vec<ByteString>,
    ) {
        // Inside a batch (a replay from memory ends in the commit that
        // subscribed the joiner), the batch's events go out first, while the
        // replay still holds them: those it sends are not sent twice, the
        // later ones follow it.
        if self.outbox.batching() {
            self.flush();
        }
        let Some(replay) = self.replays.finish(end.conn, room) else {
            return;
        };
        let last = replay.buffer.last().map_or(replay.upto, |(seq, _)| *seq);
        self.metrics.replayed_events.add(events.len() as u64);
        self.metrics.replay_size.observe(events.len() as f64);
        // In pieces the bound can hold, then what arrived meanwhile.
        let held = replay.buffer.iter().map(|(_, f)| f);
        self.send_all(end.conn, events.iter().chain(held));
        self.metrics
            .ack_latency
            .observe(end.received.elapsed().as_secs_f64());
        self.send_ack(
            end.conn,
            Ack {
                reference: end.reference.as_ref(),
                command: if end.with.is_some() { "dm" } else { "join" },
                room: Some(room),
                seq: Some(last),
                recovered,
                with: end.with.as_ref(),
                ..Ack::default()
            },
        );
    }

    /// Acks the waiting resumes of a room that has caught up with them.
    pub(super) fn end_waiting_replays(&mut self, room: &RoomName) {
        let Some(last) = self.sequencer.last(room) else {
            return;
        };
        for w in self.replays.ready(room, last) {
            let recovered = w.resumed.then_some(true);
            let who = Resumer {
                conn: w.conn,
                reference: w.reference,
                received: w.received,
                with: w.with,
            };
            self.end_replay(who, recovered, room, Vec::new());
        }
    }
}

/// Who a replay's events and ack go to.
pub(super) struct Resumer {
    pub conn: ConnId,
    pub reference: Option<Ref>,
    /// When the session read the join (for the ack latency).
    pub received: Instant,
    /// A `dm`'s other user (the ack is then a `dm`'s).
    pub with: Option<UserId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomName {
        RoomName::parse("g").unwrap()
    }

    fn frames(seqs: &[Seq]) -> Vec<(Seq, ByteString)> {
        seqs.iter()
            .map(|s| (*s, ByteString::from(s.to_string())))
            .collect()
    }

    #[test]
    fn live_events_past_the_replay_are_held_in_order() {
        let mut r = Replays::default();
        let c = ConnId(1);
        let mut over = false;
        assert!(
            !r.hold(c, &room(), &frames(&[5]), 10_000, &mut over),
            "no replay yet"
        );
        r.start(c, &room(), 5, false);
        assert!(r.hold(c, &room(), &frames(&[4, 5, 6]), 10_000, &mut over));
        assert!(r.hold(c, &room(), &frames(&[7]), 10_000, &mut over));
        assert!(!over);
        let replay = r.finish(c, &room()).unwrap();
        assert_eq!(
            replay.buffer.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![6, 7]
        );
        assert!(r.finish(c, &room()).is_none());
    }

    #[test]
    fn holding_more_bytes_than_the_bound_says_so() {
        let mut r = Replays::default();
        let mut over = false;
        r.start(ConnId(1), &room(), 0, false);
        let bound = 3 * (1 + FRAME_OVERHEAD);
        r.hold(ConnId(1), &room(), &frames(&[1, 2, 3]), bound, &mut over);
        assert!(!over, "exactly at the bound");
        r.hold(ConnId(1), &room(), &frames(&[4]), bound, &mut over);
        assert!(over);
    }

    #[test]
    fn a_waiting_resume_is_ready_once_the_room_catches_up() {
        let mut r = Replays::default();
        let w = |c| Waiting {
            conn: ConnId(c),
            reference: None,
            resumed: true,
            received: Instant::now(),
            with: None,
        };
        r.start(ConnId(1), &room(), 8, true);
        r.add_waiting(&room(), w(1));
        r.start(ConnId(2), &room(), 10, true);
        r.add_waiting(&room(), w(2));
        r.add_waiting(&room(), w(3)); // its replay is gone: forgotten
        assert!(r.ready(&room(), 7).is_empty());
        let ready: Vec<ConnId> = r.ready(&room(), 9).iter().map(|w| w.conn).collect();
        assert_eq!(ready, vec![ConnId(1)]);
        assert!(r.has_waiting(&room()));
        let ready: Vec<ConnId> = r.ready(&room(), 10).iter().map(|w| w.conn).collect();
        assert_eq!(ready, vec![ConnId(2)]);
        assert!(!r.has_waiting(&room()));
    }
}
