//! The outbox: what leaves the ChatServer for sessions, and the bound on it.
//!
//! Inside a batch (a commit, peer events, a repair) events collect per room
//! and replies per connection, and go out together at its end: one mailbox
//! message per subscriber and room, holding frames shared by every recipient
//! (serialised once). [`offer`] is the only way a frame enters a session's
//! mailbox: it counts the bytes queued and refuses past the connection's
//! bound (`OUTBOUND_MAX_BYTES`), and the ChatServer evicts the connection
//! then (invariant 7 in docs/architecture.md).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::SendError;
use bytestring::ByteString;

use crate::hub::registry::Conn;
use crate::messages::{ConnId, Deliver, Frames};
use crate::protocol::{RoomName, Seq};

/// Most frames in one [`Deliver::Frames`].
pub const FRAMES_PER_DELIVERY: usize = 64;

/// Queues a message for a session unless that would put more than
/// `max_bytes` in its outbound path.
pub fn offer(c: &Conn, msg: Deliver, max_bytes: usize) -> Result<(), SendError<Deliver>> {
    let bytes = msg.bytes();
    if c.outbound.queued.load(Ordering::Relaxed) + bytes > max_bytes {
        return Err(SendError::Full(msg));
    }
    // Counted before it is sent, so that the session's decrement never comes first.
    c.outbound.queued.fetch_add(bytes, Ordering::Relaxed);
    c.addr.try_send(msg).inspect_err(|_| {
        c.outbound.queued.fetch_sub(bytes, Ordering::Relaxed);
    })
}

/// Frames waiting for the end of the current batch.
pub struct Outbox {
    batching: bool,
    /// Each room's events of this batch, in seq order.
    rooms: HashMap<RoomName, Vec<(Seq, ByteString)>>,
    /// Rooms with events, in the order they got their first.
    dirty: Vec<RoomName>,
    /// Acks and errors, in command order; they go after the batch's events.
    replies: Vec<(ConnId, ByteString)>,
    /// Frames per [`Deliver::Frames`].
    chunk: usize,
}

impl Outbox {
    /// An outbox for sessions whose mailboxes hold `session_mailbox` frames:
    /// a delivery is at most a quarter of that, so that a healthy session
    /// always has room for a few.
    pub fn new(session_mailbox: usize) -> Outbox {
        Outbox {
            batching: false,
            rooms: HashMap::new(),
            dirty: Vec::new(),
            replies: Vec::new(),
            chunk: (session_mailbox / 4).clamp(1, FRAMES_PER_DELIVERY),
        }
    }

    pub fn batching(&self) -> bool {
        self.batching
    }

    pub fn begin(&mut self) {
        self.batching = true;
    }

    pub fn end(&mut self) {
        self.batching = false;
    }

    /// Adds a room's next event.
    pub fn push_event(&mut self, room: &RoomName, seq: Seq, frame: ByteString) {
        let events = self.rooms.entry(room.clone()).or_default();
        if events.is_empty() {
            self.dirty.push(room.clone());
        }
        events.push((seq, frame));
    }

    /// Adds a reply, to go after the batch's events.
    pub fn push_reply(&mut self, conn: ConnId, frame: ByteString) {
        self.replies.push((conn, frame));
    }

    /// Rooms with events waiting, in order.
    pub fn take_dirty(&mut self) -> Vec<RoomName> {
        std::mem::take(&mut self.dirty)
    }

    /// A room's waiting events.
    pub fn take_room(&mut self, room: &RoomName) -> Vec<(Seq, ByteString)> {
        self.dirty.retain(|r| r != room);
        self.rooms.remove(room).unwrap_or_default()
    }

    /// The replies, grouped per connection (in the order of each one's first
    /// reply), each connection's in command order and cut into deliveries.
    pub fn take_replies(&mut self) -> Vec<(ConnId, Vec<Arc<Frames>>)> {
        let mut by_conn: HashMap<ConnId, Vec<ByteString>> = HashMap::new();
        let mut order = Vec::new();
        for (conn, frame) in self.replies.drain(..) {
            by_conn
                .entry(conn)
                .or_insert_with(|| {
                    order.push(conn);
                    Vec::new()
                })
                .push(frame);
        }
        order
            .into_iter()
            .filter_map(|conn| {
                let frames = by_conn.remove(&conn)?;
                Some((conn, self.chunks(frames.iter())))
            })
            .collect()
    }

    /// Cuts frames into shared deliveries of at most the chunk size.
    pub fn chunks<'a>(&self, frames: impl Iterator<Item = &'a ByteString>) -> Vec<Arc<Frames>> {
        let frames: Vec<ByteString> = frames.cloned().collect();
        frames
            .chunks(self.chunk)
            .map(|c| Arc::new(Frames::new(c.to_vec())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::registry::tests::mailbox;
    use crate::messages::{Outbound, FRAME_OVERHEAD};
    use std::collections::HashSet;

    fn f(s: &str) -> ByteString {
        ByteString::from(s.to_owned())
    }

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    #[test]
    fn replies_are_grouped_per_connection_in_order_and_chunked() {
        let mut o = Outbox::new(8); // chunks of 2
        for (c, s) in [(1, "a1"), (2, "b1"), (1, "a2"), (1, "a3")] {
            o.push_reply(ConnId(c), f(s));
        }
        let out = o.take_replies();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, ConnId(1));
        let a: Vec<Vec<&str>> = out[0]
            .1
            .iter()
            .map(|d| d.frames.iter().map(|s| &**s).collect())
            .collect();
        assert_eq!(a, vec![vec!["a1", "a2"], vec!["a3"]]);
        assert_eq!(out[1].0, ConnId(2));
        assert!(o.take_replies().is_empty());
    }

    #[test]
    fn events_wait_per_room_until_taken() {
        let mut o = Outbox::new(4096);
        o.push_event(&room("g"), 1, f("g1"));
        o.push_event(&room("h"), 7, f("h7"));
        o.push_event(&room("g"), 2, f("g2"));
        let g = o.take_room(&room("g"));
        assert_eq!(g.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(o.take_dirty(), vec![room("h")]);
        assert_eq!(o.take_room(&room("h")).len(), 1);
        assert!(o.take_room(&room("h")).is_empty());
    }

    #[actix::test]
    async fn offer_refuses_past_the_bound_and_counts_the_bytes_it_queues() {
        let c = Conn {
            addr: mailbox(),
            user: None,
            rooms: HashSet::new(),
            outbound: Arc::new(Outbound::default()),
        };
        let three = Arc::new(Frames::new(vec![f("1"), f("22"), f("333")]));
        let each = FRAME_OVERHEAD;
        assert_eq!(three.bytes, 6 + 3 * each);
        let bound = 6 + 4 * each + 4;
        assert!(offer(&c, Deliver::Frames(three.clone()), bound).is_ok());
        assert_eq!(c.outbound.queued.load(Ordering::Relaxed), three.bytes);
        assert!(matches!(
            offer(&c, Deliver::Frames(three.clone()), bound),
            Err(SendError::Full(_))
        ));
        assert_eq!(
            c.outbound.queued.load(Ordering::Relaxed),
            three.bytes,
            "a refusal counts nothing"
        );
        assert!(
            offer(&c, Deliver::Frame(f("4444")), bound).is_ok(),
            "exactly at the bound"
        );
        assert!(
            offer(&c, Deliver::Frame(f("")), bound).is_err(),
            "past it, even empty"
        );
    }
}
