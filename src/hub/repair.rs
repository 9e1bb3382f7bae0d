//! Gap repair and resync: when a room's seq jumps (a peer's publish was lost
//! or arrived out of order), or the bus reconnects, the ChatServer reads what
//! it missed from the store, the source of truth (invariant 3 in docs/architecture.md). The
//! decisions (which range, whether still behind) are the sequencer's.

use std::time::Duration;

use actix::prelude::*;

use crate::hub::rooms::Rooms;
use crate::hub::ChatServer;
use crate::messages::LiveEvent;
use crate::protocol::{HistoryRange, RoomName};
use crate::store::Snapshot;

/// How long a node waits for a missing seq to arrive on the bus before it
/// reads it from the store (peers' publishes may arrive out of commit order).
const GAP_REPAIR_DELAY: Duration = Duration::from_millis(50);
/// Most events one gap-repair read fetches.
const GAP_REPAIR_PAGE: i64 = 1000;
/// How long a failed read waits before it is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(1);

impl ChatServer {
    /// A room's seq jumped: wait briefly for the missing events, then read them.
    pub(super) fn schedule_repair(&mut self, room: RoomName, ctx: &mut Context<Self>) {
        ctx.run_later(GAP_REPAIR_DELAY, move |act, ctx| act.repair(room, ctx));
    }

    fn repair(&mut self, room: RoomName, ctx: &mut Context<Self>) {
        let Some((since, before)) = self.sequencer.repair_range(&room) else {
            return;
        };
        self.metrics.gap_repairs.inc();
        let store = self.store.clone();
        let range = HistoryRange {
            since: Some(since),
            before: Some(before),
            limit: (before - since - 1).min(GAP_REPAIR_PAGE),
        };
        log::debug!("repairing {room}: reading seqs {since} < seq < {before}");
        let read = room.clone();
        let fut = async move { store.events(&read, range).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(page) => {
                act.batch(|act| {
                    for ev in &page.events {
                        act.receive(LiveEvent::of(ev), None, ctx);
                    }
                });
                if act.sequencer.end_repair(&room) {
                    act.schedule_repair(room, ctx);
                }
            }
            Err(e) => {
                log::error!("gap repair read of {room} failed: {e}; retrying in {RETRY_DELAY:?}");
                act.metrics.store_errors.inc();
                ctx.run_later(RETRY_DELAY, move |act, ctx| act.repair(room, ctx));
            }
        }));
    }

    /// Reads every room this node serves from its last delivered seq (after
    /// the bus reconnects, since pub/sub drops what was published meanwhile).
    pub(super) fn resync(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let fut = async move { store.snapshot().await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(snapshot) => act.apply_snapshot(snapshot, ctx),
            Err(e) => {
                log::error!("resync read failed: {e}; retrying in {RETRY_DELAY:?}");
                act.metrics.store_errors.inc();
                ctx.run_later(RETRY_DELAY, |act, ctx| act.resync(ctx));
            }
        }));
    }

    /// Rooms whose stored last seq is ahead of ours are repaired from the
    /// store; rooms in step with it take its members.
    fn apply_snapshot(&mut self, snapshot: Snapshot, ctx: &mut Context<Self>) {
        let mut states = Rooms::states(&snapshot);
        for (name, row) in snapshot.rooms {
            let last = row.last_seq;
            self.sequencer.add_room(&name, 0);
            let local = self.sequencer.last(&name).unwrap_or(0);
            if last > local {
                if self.sequencer.note_stored(&name, last) {
                    self.schedule_repair(name, ctx);
                }
            } else if last == local {
                // In step with the store: its members are this seq's members.
                let stored = states.remove(&name).unwrap_or_default();
                self.rooms.replace(name, stored);
            }
        }
        self.metrics.rooms.set(self.sequencer.len() as i64);
    }
}
