//! The last events of each room, as this node delivered them, so that a
//! resume of a busy room is served from memory instead of a store read per
//! client (a node killed under load sends thousands of resumes at once).
//!
//! Only what the store would give is served: the frames are the delivered
//! events' own bytes, kept while they are contiguous (`seq` by `seq`), and an
//! event that changes an earlier message (`edit`, `delete`, `react`,
//! `unreact`: the store serves a message with its current state, and a
//! delete erases texts) forgets the room's events before it. A range the
//! memory does not hold whole is read from the store, as before. Membership
//! is not decided here: a resume's `join` is checked by the store first.
//!
//! Bounded: at most [`PER_ROOM`] events per room and `max_bytes` over every
//! room (`RECENT_EVENTS_BYTES`, 0 turns it off); past the bytes, the room's
//! oldest events go first, and a room that cannot keep one event keeps none.

use std::collections::{HashMap, VecDeque};

use bytestring::ByteString;

use crate::messages::FRAME_OVERHEAD;
use crate::protocol::{EventKind, RoomName, Seq};

/// Most events kept per room.
pub const PER_ROOM: usize = 256;

#[derive(Default)]
pub struct Recent {
    rooms: HashMap<RoomName, VecDeque<(Seq, ByteString)>>,
    bytes: usize,
    max_bytes: usize,
}

fn weight(frame: &ByteString) -> usize {
    frame.len() + FRAME_OVERHEAD
}

impl Recent {
    pub fn new(max_bytes: usize) -> Recent {
        Recent {
            max_bytes,
            ..Recent::default()
        }
    }

    /// Keeps a delivered event (called in each room's `seq` order).
    pub fn push(&mut self, room: &RoomName, seq: Seq, kind: EventKind, frame: &ByteString) {
        if self.max_bytes == 0 {
            return;
        }
        if matches!(
            kind,
            EventKind::Edit | EventKind::Delete | EventKind::React | EventKind::Unreact
        ) {
            self.forget(room);
        }
        let w = weight(frame);
        let events = self.rooms.entry(room.clone()).or_default();
        if events.back().is_some_and(|(last, _)| *last + 1 != seq) {
            self.bytes -= events.drain(..).map(|(_, f)| weight(&f)).sum::<usize>();
        }
        while !events.is_empty() && (events.len() >= PER_ROOM || self.bytes + w > self.max_bytes) {
            if let Some((_, f)) = events.pop_front() {
                self.bytes -= weight(&f);
            }
        }
        if self.bytes + w > self.max_bytes {
            self.rooms.remove(room);
            return;
        }
        self.bytes += w;
        events.push_back((seq, frame.clone()));
    }

    /// Forgets a room's events.
    pub fn forget(&mut self, room: &RoomName) {
        if let Some(events) = self.rooms.remove(room) {
            self.bytes -= events.iter().map(|(_, f)| weight(f)).sum::<usize>();
        }
    }

    /// The frames of `since < seq <= upto`, when every one of them is held.
    pub fn range(&self, room: &RoomName, since: Seq, upto: Seq) -> Option<Vec<ByteString>> {
        let events = self.rooms.get(room)?;
        let first = events.front()?.0;
        let last = events.back()?.0;
        if since + 1 < first || upto > last || since >= upto {
            return None;
        }
        let skip = usize::try_from(since + 1 - first).ok()?;
        let take = usize::try_from(upto - since).ok()?;
        Some(
            events
                .iter()
                .skip(skip)
                .take(take)
                .map(|(_, f)| f.clone())
                .collect(),
        )
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomName {
        RoomName::parse("g").unwrap()
    }

    fn frame(seq: Seq) -> ByteString {
        ByteString::from(format!("event {seq}"))
    }

    fn filled(max_bytes: usize, seqs: std::ops::RangeInclusive<Seq>) -> Recent {
        let mut r = Recent::new(max_bytes);
        for s in seqs {
            r.push(&room(), s, EventKind::Message, &frame(s));
        }
        r
    }

    #[test]
    fn a_range_held_whole_is_served_in_order() {
        let r = filled(1 << 20, 1..=10);
        assert_eq!(
            r.range(&room(), 7, 10).unwrap(),
            vec![frame(8), frame(9), frame(10)]
        );
        assert_eq!(r.range(&room(), 0, 2).unwrap(), vec![frame(1), frame(2)]);
        assert!(r.range(&room(), 7, 11).is_none(), "11 is not delivered yet");
        assert!(r.range(&room(), 10, 10).is_none(), "nothing to serve");
    }

    #[test]
    fn a_range_older_than_what_is_held_goes_to_the_store() {
        let r = filled(1 << 20, 1..=(PER_ROOM as Seq + 10));
        assert!(r.range(&room(), 5, 20).is_none(), "1..=10 were dropped");
        assert!(r.range(&room(), 10, 20).is_some());
    }

    #[test]
    fn a_gap_forgets_what_came_before_it() {
        let mut r = filled(1 << 20, 1..=5);
        r.push(&room(), 7, EventKind::Message, &frame(7));
        assert!(r.range(&room(), 4, 5).is_none());
        assert_eq!(r.range(&room(), 6, 7).unwrap(), vec![frame(7)]);
    }

    #[test]
    fn an_edit_delete_or_reaction_forgets_the_frames_it_changes() {
        for kind in [
            EventKind::Edit,
            EventKind::Delete,
            EventKind::React,
            EventKind::Unreact,
        ] {
            let mut r = filled(1 << 20, 1..=5);
            r.push(&room(), 6, kind, &frame(6));
            assert!(
                r.range(&room(), 2, 6).is_none(),
                "{kind:?}: 3..=5 may have changed"
            );
            assert_eq!(r.range(&room(), 5, 6).unwrap(), vec![frame(6)]);
        }
    }

    #[test]
    fn the_bytes_stay_under_the_bound() {
        let one = weight(&frame(1));
        let r = filled(one * 3, 1..=9);
        assert!(r.bytes() <= one * 3);
        assert!(r.range(&room(), 6, 9).is_some());
        assert!(r.range(&room(), 5, 9).is_none());
        let mut off = Recent::new(0);
        off.push(&room(), 1, EventKind::Message, &frame(1));
        assert!(off.range(&room(), 0, 1).is_none(), "0 turns it off");
        assert_eq!(off.bytes(), 0);
    }
}
