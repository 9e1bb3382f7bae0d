//! What one soak client holds and checks: the rooms it is in, with each room's state (being
//! joined, live, being left) and the last `seq` it was given there, which survives the
//! client's reconnects so that it can resume with `since`.
//!
//! The checks, the same rule as the load run's and the resume storm's: in a room it is in,
//! the `seq`s a client is given come 1 apart, across reconnects too (a resume's replay
//! comes before the join's ack). A `seq` past the next one counts the events between as
//! gaps (lost); one not past the last a duplicate. A resume acked `"recovered": false`
//! skipped events: they count as gaps too. A fresh membership is checked from its join's
//! ack. Every position is published in `Shared::positions` for the end-of-run check.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::Value;

use super::{Shared, UNTRACKED};

#[derive(Clone, Copy, PartialEq)]
pub(super) enum State {
    Joining,
    Live,
    Leaving,
}

struct Room {
    /// The last seq given (checking starts at the join's ack, or at `since` on a resume).
    last: Option<u64>,
    state: State,
}

pub(super) struct Track {
    client: usize,
    shared: Arc<Shared>,
    rooms: BTreeMap<usize, Room>,
}

impl Track {
    /// A client about to join `rooms` for the first time.
    pub(super) fn new(client: usize, shared: Arc<Shared>, rooms: &[usize]) -> Track {
        let mut track = Track {
            client,
            shared,
            rooms: BTreeMap::new(),
        };
        for &room in rooms {
            track.start_join(room);
        }
        track
    }

    pub(super) fn state(&self, room: usize) -> Option<State> {
        self.rooms.get(&room).map(|r| r.state)
    }

    /// In no room being joined or left.
    pub(super) fn settled(&self) -> bool {
        self.rooms.values().all(|r| r.state == State::Live)
    }

    pub(super) fn joining(&self) -> bool {
        self.rooms.values().any(|r| r.state == State::Joining)
    }

    /// A new membership: its join is about to be sent.
    pub(super) fn start_join(&mut self, room: usize) {
        self.rooms.insert(
            room,
            Room {
                last: None,
                state: State::Joining,
            },
        );
    }

    pub(super) fn start_leave(&mut self, room: usize) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.state = State::Leaving;
        }
    }

    /// After a reconnect: the rooms to join again, each with its `since` (None: a join
    /// that was in flight, sent again plainly). A leave that was in flight has an unknown
    /// outcome: that room is no longer checked.
    pub(super) fn rejoin(&mut self) -> Vec<(usize, Option<u64>)> {
        let leaving: Vec<usize> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.state == State::Leaving)
            .map(|(&i, _)| i)
            .collect();
        for room in leaving {
            self.forget(room);
        }
        self.rooms
            .iter_mut()
            .map(|(&i, r)| {
                r.state = State::Joining;
                (i, r.last)
            })
            .collect()
    }

    pub(super) fn on_text(&mut self, text: &str) {
        let tally = &self.shared.tally;
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            tally.error("unparsable frame");
            return;
        };
        let reference = v["ref"].as_str().unwrap_or_default();
        let room = reference.get(1..).and_then(|r| r.parse::<usize>().ok());
        match (
            v["type"].as_str().unwrap_or_default(),
            v["command"].as_str(),
        ) {
            ("create" | "join" | "leave" | "message", _) => {
                let room = v["room"]
                    .as_str()
                    .and_then(|n| n.strip_prefix(&self.shared.prefix));
                match (room.and_then(|r| r.parse().ok()), v["seq"].as_u64()) {
                    (Some(room), Some(seq)) => self.on_event(room, seq),
                    _ => tally.error("event of another room"),
                }
            }
            ("ack", Some("message")) => {
                tally.acked.fetch_add(1, Relaxed);
            }
            ("ack", Some("join")) if reference.starts_with('j') => {
                match (room, v["seq"].as_u64()) {
                    (Some(room), Some(seq)) => self.on_join_ack(room, seq, v["recovered"] == true),
                    _ => tally.error("bad join ack"),
                }
            }
            ("ack", Some("leave")) => {
                if let Some(room) = room {
                    self.forget(room);
                }
            }
            ("error", _) => {
                tally.error(format!("error {}", v["code"].as_str().unwrap_or("?")));
                if let (Some(room), true) = (room, reference.starts_with(['j', 'l'])) {
                    self.forget(room);
                }
            }
            _ => {}
        }
    }

    fn on_event(&mut self, index: usize, seq: u64) {
        let tally = &self.shared.tally;
        let Some(room) = self.rooms.get_mut(&index) else {
            tally.error("event of a room it is not in");
            return;
        };
        let Some(last) = room.last else {
            return; // a new membership: checking starts at the join's ack
        };
        if seq <= last {
            tally.duplicates.fetch_add(1, Relaxed);
            return;
        }
        if seq > last + 1 {
            tally.gaps.fetch_add(seq - last - 1, Relaxed);
        }
        room.last = Some(seq);
        self.shared.positions[self.client][index].store(seq, Relaxed);
    }

    fn on_join_ack(&mut self, index: usize, seq: u64, recovered: bool) {
        let tally = &self.shared.tally;
        let Some(room) = self.rooms.get_mut(&index) else {
            return;
        };
        match room.last {
            Some(last) => {
                if recovered {
                    tally.resumes.fetch_add(1, Relaxed);
                } else {
                    tally.not_recovered.fetch_add(1, Relaxed);
                }
                if seq > last {
                    tally.gaps.fetch_add(seq - last, Relaxed); // skipped: never given
                    room.last = Some(seq);
                }
            }
            None => room.last = Some(seq),
        }
        room.state = State::Live;
        let held = room.last.unwrap_or(seq);
        self.shared.positions[self.client][index].store(held, Relaxed);
    }

    /// No longer in this room (left, refused, or its leave's outcome unknown).
    fn forget(&mut self, room: usize) {
        self.rooms.remove(&room);
        if let Some(position) = self.shared.positions[self.client].get(room) {
            position.store(UNTRACKED, Relaxed);
        }
    }
}
