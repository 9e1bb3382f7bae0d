//! The per-room sequencer: puts each room's committed events in `seq` order
//! before anything is delivered (invariant 3 in docs/architecture.md).
//!
//! An event comes in (ours from the writer, a peer's from the bus, or one read
//! back by a gap repair); out comes whether to deliver it now, whether it was
//! delivered already, or that it must wait for a gap to be repaired and which
//! range of seqs to read. Plain data: no actor, no store.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::{RoomName, Seq};

/// Most events held per room while a gap is repaired, counting only events
/// nobody on this node waits for (a peer's). Past it, such events are not
/// held: the repair reads them from the store, where they are anyway.
pub const PENDING_MAX: usize = 10_000;
/// Most bytes held, over every room, for nobody (see [`PENDING_MAX`]).
pub const PENDING_MAX_BYTES: usize = 64 << 20;

/// What a held event costs in memory.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for crate::messages::LiveEvent {
    fn weight(&self) -> usize {
        self.frame.len() + crate::messages::FRAME_OVERHEAD
    }
}

/// What became of an offered event.
#[derive(Debug, PartialEq)]
pub enum Offer<E, W> {
    /// The room's next event: deliver it, then call [`Sequencer::next_ready`].
    Ready(E, Option<W>),
    /// Delivered already (by a repair); only its waiter, if any, still needs an answer.
    Stale(E, Option<W>),
    /// Ahead of a gap: held (or dropped past [`PENDING_MAX`]); when `repair`
    /// the caller schedules a repair (none is running yet).
    Held { repair: bool },
}

struct RoomSeq<E, W> {
    /// The seq of the last event delivered.
    last: Seq,
    /// The highest seq known to be committed (from the bus or the store).
    known: Seq,
    /// Events that arrived ahead of `last + 1`, with who waits for them.
    pending: BTreeMap<Seq, (E, Option<W>)>,
    /// Pending entries nobody waits for (bounded by PENDING_MAX).
    unclaimed: usize,
    repairing: bool,
}

impl<E, W> RoomSeq<E, W> {
    fn new(last: Seq) -> RoomSeq<E, W> {
        RoomSeq {
            last,
            known: last,
            pending: BTreeMap::new(),
            unclaimed: 0,
            repairing: false,
        }
    }
}

/// Every room's order. `E` is the event, `W` who waits for it.
pub struct Sequencer<E, W> {
    rooms: HashMap<RoomName, RoomSeq<E, W>>,
    /// The weight of every room's unclaimed pending events.
    unclaimed_bytes: usize,
}

impl<E, W> Default for Sequencer<E, W> {
    fn default() -> Self {
        Sequencer {
            rooms: HashMap::new(),
            unclaimed_bytes: 0,
        }
    }
}

impl<E: Weight, W> Sequencer<E, W> {
    /// Adds a room delivered up to `last` (from the store at start-up), or
    /// leaves a known room as it is. True when it was new.
    pub fn add_room(&mut self, room: &RoomName, last: Seq) -> bool {
        if self.rooms.contains_key(room) {
            return false;
        }
        self.rooms.insert(room.clone(), RoomSeq::new(last));
        true
    }

    /// The seq of the last event delivered in `room`.
    pub fn last(&self, room: &RoomName) -> Option<Seq> {
        self.rooms.get(room).map(|r| r.last)
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Offers the committed event `seq` of `room` (added if unknown, at 0).
    pub fn offer(&mut self, room: &RoomName, seq: Seq, event: E, waiter: Option<W>) -> Offer<E, W> {
        self.add_room(room, 0);
        let Sequencer {
            rooms,
            unclaimed_bytes,
        } = self;
        let Some(r) = rooms.get_mut(room) else {
            return Offer::Held { repair: false };
        };
        let next = r.last + 1;
        if seq < next {
            return Offer::Stale(event, waiter);
        }
        if seq == next {
            r.last = seq;
            r.known = r.known.max(seq);
            return Offer::Ready(event, waiter);
        }
        r.known = r.known.max(seq);
        match r.pending.get_mut(&seq) {
            // The same event twice (the bus and a repair): keep the first, and
            // whoever waits for it.
            Some(held) => {
                if held.1.is_none() && waiter.is_some() {
                    held.1 = waiter;
                    r.unclaimed -= 1;
                    *unclaimed_bytes -= held.0.weight();
                }
            }
            None if waiter.is_none()
                && (r.unclaimed >= PENDING_MAX
                    || *unclaimed_bytes + event.weight() > PENDING_MAX_BYTES) => {}
            None => {
                if waiter.is_none() {
                    r.unclaimed += 1;
                    *unclaimed_bytes += event.weight();
                }
                r.pending.insert(seq, (event, waiter));
            }
        }
        let repair = !r.repairing;
        r.repairing = true;
        Offer::Held { repair }
    }

    /// The held event that comes next in `room`, if it is here; its seq
    /// becomes the room's last. Entries a repair overtook are answered as stale.
    pub fn next_ready(&mut self, room: &RoomName) -> Option<Offer<E, W>> {
        let r = self.rooms.get_mut(room)?;
        let (&seq, _) = r.pending.first_key_value()?;
        if seq > r.last + 1 {
            return None;
        }
        let (_, (event, waiter)) = r.pending.pop_first()?;
        if waiter.is_none() {
            r.unclaimed -= 1;
            self.unclaimed_bytes -= event.weight();
        }
        if seq <= r.last {
            return Some(Offer::Stale(event, waiter));
        }
        r.last = seq;
        Some(Offer::Ready(event, waiter))
    }

    /// The seqs a repair of `room` reads, `since < seq < before`: up to the
    /// first held event, or past the highest known. `None` (and the room is
    /// no longer repairing) when there is no gap.
    pub fn repair_range(&mut self, room: &RoomName) -> Option<(Seq, Seq)> {
        let r = self.rooms.get_mut(room)?;
        let since = r.last;
        let before = r.pending.keys().next().copied().unwrap_or(r.known + 1);
        if before <= since + 1 {
            r.repairing = false;
            return None;
        }
        Some((since, before))
    }

    /// A repair read finished (or failed): true when the room is still behind
    /// and a new repair should be scheduled.
    pub fn end_repair(&mut self, room: &RoomName) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        r.repairing = false;
        if r.known > r.last {
            r.repairing = true;
            return true;
        }
        false
    }

    /// The store says `room` is committed up to `last`: true when that is
    /// ahead of what was delivered and no repair runs yet (schedule one).
    pub fn note_stored(&mut self, room: &RoomName, last: Seq) -> bool {
        self.add_room(room, 0);
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        r.known = r.known.max(last);
        if r.known > r.last && !r.repairing {
            r.repairing = true;
            return true;
        }
        false
    }

    /// Rooms with a repair scheduled or running.
    pub fn repairing(&self) -> Vec<RoomName> {
        let mut rooms: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.repairing)
            .map(|(n, _)| n.clone())
            .collect();
        rooms.sort();
        rooms
    }

    /// Every room with its last delivered seq, sorted by name.
    pub fn rooms(&self) -> Vec<(RoomName, Seq)> {
        let mut rooms: Vec<(RoomName, Seq)> = self
            .rooms
            .iter()
            .map(|(n, r)| (n.clone(), r.last))
            .collect();
        rooms.sort();
        rooms
    }

    /// How many events `room` holds (for tests and metrics).
    pub fn held(&self, room: &RoomName) -> usize {
        self.rooms.get(room).map_or(0, |r| r.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seqr = Sequencer<&'static str, u32>;

    impl Weight for &'static str {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    fn room() -> RoomName {
        RoomName::parse("g").unwrap()
    }

    #[test]
    fn the_next_event_is_ready_and_an_old_one_is_stale() {
        let mut s = Seqr::default();
        s.add_room(&room(), 4);
        assert_eq!(
            s.offer(&room(), 5, "e5", Some(1)),
            Offer::Ready("e5", Some(1))
        );
        assert_eq!(s.last(&room()), Some(5));
        assert_eq!(
            s.offer(&room(), 5, "again", None),
            Offer::Stale("again", None)
        );
        assert_eq!(
            s.offer(&room(), 3, "old", Some(2)),
            Offer::Stale("old", Some(2))
        );
    }

    #[test]
    fn a_gap_holds_later_events_until_it_is_filled() {
        let mut s = Seqr::default();
        assert_eq!(
            s.offer(&room(), 3, "e3", Some(7)),
            Offer::Held { repair: true }
        );
        assert_eq!(
            s.offer(&room(), 4, "e4", None),
            Offer::Held { repair: false }
        );
        assert_eq!(s.repair_range(&room()), Some((0, 3)));
        assert_eq!(s.offer(&room(), 1, "e1", None), Offer::Ready("e1", None));
        assert_eq!(s.next_ready(&room()), None, "2 is still missing");
        assert_eq!(s.offer(&room(), 2, "e2", None), Offer::Ready("e2", None));
        assert_eq!(s.next_ready(&room()), Some(Offer::Ready("e3", Some(7))));
        assert_eq!(s.next_ready(&room()), Some(Offer::Ready("e4", None)));
        assert_eq!(s.next_ready(&room()), None);
        assert_eq!(s.last(&room()), Some(4));
        assert!(!s.end_repair(&room()), "nothing left behind");
        assert_eq!(s.repair_range(&room()), None);
    }

    #[test]
    fn a_held_event_keeps_its_waiter_when_it_arrives_again() {
        let mut s = Seqr::default();
        s.offer(&room(), 2, "ours", Some(9));
        s.offer(&room(), 2, "from the store", None);
        s.offer(&room(), 1, "e1", None);
        assert_eq!(s.next_ready(&room()), Some(Offer::Ready("ours", Some(9))));
        // And a waiter arriving for an event held without one is kept too.
        s.offer(&room(), 4, "peer", None);
        s.offer(&room(), 4, "ours", Some(3));
        s.offer(&room(), 3, "e3", None);
        assert_eq!(s.next_ready(&room()), Some(Offer::Ready("peer", Some(3))));
    }

    #[test]
    fn what_is_held_for_nobody_is_bounded() {
        let mut s = Seqr::default();
        for seq in 2..(2 + PENDING_MAX as Seq + 500) {
            s.offer(&room(), seq, "peer", None);
        }
        assert_eq!(s.held(&room()), PENDING_MAX);
        // An event someone here waits for is always held.
        let far = 100_000;
        s.offer(&room(), far, "ours", Some(1));
        assert_eq!(s.held(&room()), PENDING_MAX + 1);
        // The repair reads up to the first held event, then what was dropped.
        assert_eq!(s.repair_range(&room()), Some((0, 2)));
        s.offer(&room(), 1, "e1", None);
        let mut delivered = 1;
        while let Some(Offer::Ready(..)) = s.next_ready(&room()) {
            delivered += 1;
        }
        assert_eq!(delivered, 1 + PENDING_MAX);
        assert!(s.end_repair(&room()), "still behind the highest known seq");
        assert_eq!(
            s.repair_range(&room()),
            Some((1 + PENDING_MAX as Seq, far)),
            "the dropped events are read from the store, up to the held one"
        );
    }

    #[test]
    fn a_store_ahead_of_the_room_asks_for_one_repair() {
        let mut s = Seqr::default();
        s.add_room(&room(), 5);
        assert!(!s.note_stored(&room(), 5));
        assert!(s.note_stored(&room(), 8));
        assert!(!s.note_stored(&room(), 9), "a repair is already scheduled");
        assert_eq!(s.repairing(), vec![room()]);
        assert_eq!(s.repair_range(&room()), Some((5, 10)));
    }

    #[test]
    fn what_is_held_for_nobody_is_bounded_in_bytes_over_every_room() {
        static BIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let big: &'static str = BIG.get_or_init(|| "x".repeat(PENDING_MAX_BYTES / 4));
        let mut s = Seqr::default();
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let room = RoomName::parse(name).unwrap();
            s.offer(&room, 5, big, None);
            assert_eq!(s.held(&room), usize::from(i < 4), "room {name}");
        }
        // Delivering frees the budget.
        let a = RoomName::parse("a").unwrap();
        for seq in 1..=4 {
            s.offer(&a, seq, "small", None);
        }
        assert!(matches!(s.next_ready(&a), Some(Offer::Ready(..))));
        let e = RoomName::parse("e").unwrap();
        s.offer(&e, 6, big, None);
        assert_eq!(s.held(&e), 1);
    }
}
