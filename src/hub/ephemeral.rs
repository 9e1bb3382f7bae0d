//! Frames that are never stored: `typing`, and the `read` frame that tells
//! a user's other connections that its read marker moved. They have no seq
//! and skip the sequencer; a node sends them to its own connections and
//! publishes them once on the bus, and every peer sends them to its own.

use std::time::{Duration, Instant};

use crate::hub::ChatServer;
use crate::messages::{ConnId, LiveEvent, Origin};
use crate::protocol::{
    reply_frame, Ack, EventKind, Facts, ProtoError, Reply, RoomName, Seq, Typing, UserId,
};

/// At most one `typing: true` per user and room is forwarded in this time.
const TYPING_EVERY: Duration = Duration::from_secs(2);
/// How long a receiver shows a `typing: true` that is not refreshed.
pub const TYPING_TTL_MS: u64 = 6_000;
/// Throttle entries kept before the old ones are swept.
const TYPING_ENTRIES: usize = 4096;

impl ChatServer {
    /// `typing`: forwards the frame to the room's other users (throttled),
    /// here and through the bus, and acks.
    pub(super) fn typing(&mut self, t: Typing, user: Option<UserId>, origin: Origin) {
        let room = t.room;
        let Some(user) = user else {
            let err = ProtoError::invalid_field("user_id is required");
            return self.reply_error(origin, Some(&room), err);
        };
        // Ephemeral, so checked in this node's memory (a member who was
        // kicked a moment ago on another node may still be shown typing).
        let refusal = match self.rooms.get(&room) {
            Some(state) if state.members.contains_key(&user) => None,
            Some(state) if state.visible_to(Some(&user)) => Some(ProtoError::not_a_member(&room)),
            _ => Some(ProtoError::no_such_room(&room)),
        };
        if let Some(err) = refusal {
            return self.reply_error(origin, Some(&room), err);
        }
        if self.throttle_typing(&room, &user, t.typing) {
            let frame = reply_frame(&Reply::Typing {
                room: &room,
                user_id: &user,
                typing: t.typing,
                ttl_ms: TYPING_TTL_MS,
            });
            self.deliver_typing(&room, &user, &frame);
            self.bus.publish(vec![LiveEvent {
                room: room.clone(),
                seq: 0,
                kind: EventKind::Typing,
                user,
                facts: Facts::default(),
                frame,
            }]);
        }
        let ack = reply_frame(&Reply::Ack(Ack {
            reference: origin.reference(),
            command: "typing",
            room: Some(&room),
            ..Ack::default()
        }));
        self.answer(origin, ack);
    }

    /// Whether a `typing` frame goes out: a `false` always, a `true` once
    /// per [`TYPING_EVERY`] per user and room.
    fn throttle_typing(&mut self, room: &RoomName, user: &UserId, typing: bool) -> bool {
        let key = (room.clone(), user.clone());
        if !typing {
            self.typing.remove(&key);
            return true;
        }
        let now = Instant::now();
        if self
            .typing
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < TYPING_EVERY)
        {
            return false;
        }
        if self.typing.len() >= TYPING_ENTRIES {
            self.typing
                .retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
        }
        self.typing.insert(key, now);
        true
    }

    /// A typing frame to the connections subscribed to `room` that are not
    /// `user`'s. The first thing dropped under backpressure: a connection
    /// whose queue holds more than half its bound does not get it.
    fn deliver_typing(&mut self, room: &RoomName, user: &UserId, frame: &bytestring::ByteString) {
        let half = self.config.outbound_max_bytes / 2;
        let to: Vec<ConnId> = self
            .registry
            .subscribers(room)
            .filter(|id| {
                self.registry.get(*id).is_some_and(|c| {
                    c.user.as_ref() != Some(user)
                        && c.outbound.queued.load(std::sync::atomic::Ordering::Relaxed) <= half
                })
            })
            .collect();
        for conn in to {
            self.send(conn, frame.clone());
        }
    }

    /// `user`'s read marker in `room` moved to `seq`: its other connections,
    /// here (all but `except`) and on every node, get a `read` frame.
    pub(super) fn read_moved(
        &mut self,
        user: &UserId,
        room: &RoomName,
        seq: Seq,
        except: Option<ConnId>,
    ) {
        let frame = reply_frame(&Reply::Read {
            room,
            seq,
            user_id: user,
        });
        for conn in self.registry.conns_of_user(user) {
            if Some(conn) != except {
                self.send(conn, frame.clone());
            }
        }
        self.bus.publish(vec![LiveEvent {
            room: room.clone(),
            seq: 0,
            kind: EventKind::Read,
            user: user.clone(),
            facts: Facts::default(),
            frame,
        }]);
    }

    /// A peer's ephemeral frame: to this node's connections it concerns.
    pub(super) fn ephemeral(&mut self, ev: LiveEvent) {
        match ev.kind {
            EventKind::Typing => self.deliver_typing(&ev.room, &ev.user, &ev.frame),
            EventKind::Read => {
                for conn in self.registry.conns_of_user(&ev.user) {
                    self.send(conn, ev.frame.clone());
                }
            }
            _ => {}
        }
    }
}
