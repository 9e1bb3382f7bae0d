//! Deciding a batch: [`plan`] takes what a store loaded under its locks for
//! the rooms and users a batch touches ([`Loaded`], asked for by [`Keys`])
//! and decides every request in order, as one transaction would: seqs
//! continue each room's last seq with no gap, and each request sees what the
//! requests before it did. The stores turn the resulting [`Plan`] into SQL.
//!
//! The rules are docs/protocol.md's, "Rooms with owners": who may do what,
//! what an outsider of a private room is told, and who owns a room after
//! its owner leaves.
//!
//! By job: `rows.rs` (what is loaded and what is written), this file (the
//! loop and the state it keeps), `messages.rs` (message, edit, delete,
//! react) and `rooms.rs` (invitations, moderation, roles, DMs, succession).

mod messages;
mod rooms;
mod rows;

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{AppendOp, AppendOutcome, AppendRequest, Refusal};
use crate::protocol::{Event, EventKind, Role, RoomName, Seq, UserId};

use rows::Pair;
pub use rows::{
    sorted, BanRow, Invitation, Keys, Loaded, Membership, MessageRow, NewRoom, Plan, RoomRow,
    StateRow,
};

/// Decides every request of `batch` in order against what was loaded.
pub fn plan(batch: &[AppendRequest], loaded: Loaded, node: &str, at: DateTime<Utc>) -> Plan {
    plan_keyed(batch, &Keys::of(batch), loaded, node, at)
}

/// [`plan`] with the [`Keys`] the store already computed to load `loaded`.
pub fn plan_keyed(
    batch: &[AppendRequest],
    keys: &Keys,
    loaded: Loaded,
    node: &str,
    at: DateTime<Utc>,
) -> Plan {
    let mut p = Planner {
        s: loaded,
        pairs: &keys.pairs,
        node,
        at,
        plan: Plan::default(),
        touched: Vec::new(),
        members_changed: HashSet::new(),
        invites_changed: HashSet::new(),
        bans_changed: HashSet::new(),
        states_changed: Vec::new(),
    };
    for req in batch {
        let outcome = match p.decide(req) {
            Ok(outcome) => outcome,
            Err(refusal) => AppendOutcome::Refused(refusal),
        };
        p.plan.outcomes.push(outcome);
    }
    p.finish()
}

struct Planner<'a> {
    /// The state as of the request being decided.
    s: Loaded,
    pairs: &'a HashSet<Pair>,
    node: &'a str,
    at: DateTime<Utc>,
    plan: Plan,
    touched: Vec<RoomName>,
    members_changed: HashSet<Pair>,
    invites_changed: HashSet<Pair>,
    bans_changed: HashSet<Pair>,
    states_changed: Vec<(RoomName, Seq)>,
}

impl Planner<'_> {
    fn decide(&mut self, req: &AppendRequest) -> Result<AppendOutcome, Refusal> {
        let room = &req.room;
        let user = &req.user;
        match &req.op {
            AppendOp::Create { private } => {
                if self.s.rooms.contains_key(room) || self.s.taken.contains(room) {
                    return Err(Refusal::RoomExists);
                }
                self.create(room, user, *private, None);
                let mut ev = self.event(room, EventKind::Create, user);
                ev.private = *private;
                self.set_member(room, user, Role::Owner, ev.seq);
                return Ok(AppendOutcome::Appended(vec![ev]));
            }
            AppendOp::Dm { other } => return self.dm(room, user, other),
            _ => {}
        }
        let Some(row) = self.s.rooms.get(room).cloned() else {
            return Err(Refusal::NoSuchRoom);
        };
        if self.s.taken.contains(room) {
            return Err(Refusal::NoSuchRoom);
        }
        let me = self.member(room, user);
        let key = (room.clone(), user.clone());
        let outsider =
            row.private && me.is_none() && !self.s.invites.contains_key(&key) && !row.in_dm(user);
        if outsider {
            return Err(Refusal::NoSuchRoom);
        }
        let me = match (&req.op, me) {
            (AppendOp::Join, Some(_)) => {
                return Ok(AppendOutcome::AlreadyMember {
                    last_seq: row.last_seq,
                })
            }
            (AppendOp::Join, None) => {
                if self.s.bans.contains_key(&key) {
                    return Err(Refusal::Banned);
                }
                let ev = self.event(room, EventKind::Join, user);
                self.join(room, user, ev.seq);
                return Ok(AppendOutcome::Appended(vec![ev]));
            }
            (_, None) => return Err(Refusal::NotAMember),
            (_, Some(me)) => me,
        };
        match &req.op {
            AppendOp::Leave => {
                let ev = self.event(room, EventKind::Leave, user);
                self.remove_member(room, user);
                let mut events = vec![ev];
                if me.role == Role::Owner {
                    events.extend(self.succeed(room, user));
                }
                Ok(AppendOutcome::Appended(events))
            }
            op @ (AppendOp::Message { .. }
            | AppendOp::Edit { .. }
            | AppendOp::Delete { .. }
            | AppendOp::React { .. }) => {
                if let Some(c) = op.client_msg_id() {
                    let sent = (room.clone(), user.clone(), c.to_owned());
                    if let Some(original) = self.s.sent.get(&sent) {
                        return Ok(AppendOutcome::Duplicate(Box::new(original.clone())));
                    }
                }
                let outcome = self.message_op(room, user, me.role, op)?;
                if let (Some(c), AppendOutcome::Appended(events)) = (op.client_msg_id(), &outcome) {
                    if let Some(ev) = events.first() {
                        self.s
                            .sent
                            .insert((room.clone(), user.clone(), c.to_owned()), ev.clone());
                    }
                }
                Ok(outcome)
            }
            op => {
                if row.dm.is_some() {
                    return Err(Refusal::Forbidden);
                }
                self.moderate(room, &row, user, me.role, op)
            }
        }
    }

    fn member(&self, room: &RoomName, user: &UserId) -> Option<Membership> {
        if let Some(m) = self.s.members.get(&(room.clone(), user.clone())) {
            return Some(*m);
        }
        // A successor loaded for an owner's leave is a member too.
        if self.pairs.contains(&(room.clone(), user.clone())) {
            return None;
        }
        self.s
            .successors
            .get(room)
            .and_then(|s| s.iter().find(|(u, _)| u == user).map(|(_, m)| *m))
    }

    fn create(
        &mut self,
        room: &RoomName,
        user: &UserId,
        private: bool,
        dm: Option<(UserId, UserId)>,
    ) {
        self.s.rooms.insert(
            room.clone(),
            RoomRow {
                last_seq: 0,
                private,
                owner: dm.is_none().then(|| user.clone()),
                dm: dm.clone(),
            },
        );
        self.plan.created.push(NewRoom {
            name: room.clone(),
            creator: user.clone(),
            private,
            dm,
        });
    }

    /// A join at `seq`: the joiner owns an empty room; an invitation is used up.
    fn join(&mut self, room: &RoomName, user: &UserId, seq: Seq) {
        let role = match self.s.rooms.get_mut(room) {
            Some(row) if row.owner.is_none() && row.dm.is_none() => {
                row.owner = Some(user.clone());
                Role::Owner
            }
            _ => Role::Member,
        };
        self.set_member(room, user, role, seq);
        let key = (room.clone(), user.clone());
        if self.s.invites.remove(&key).is_some() {
            self.invites_changed.insert(key);
        }
    }

    fn set_member(&mut self, room: &RoomName, user: &UserId, role: Role, joined_seq: Seq) {
        let key = (room.clone(), user.clone());
        self.s
            .members
            .insert(key.clone(), Membership { role, joined_seq });
        self.members_changed.insert(key);
    }

    fn set_role(&mut self, room: &RoomName, user: &UserId, role: Role) {
        if let Some(m) = self.member(room, user) {
            self.set_member(room, user, role, m.joined_seq);
        }
        if role == Role::Owner {
            if let Some(row) = self.s.rooms.get_mut(room) {
                row.owner = Some(user.clone());
            }
        }
    }

    fn remove_member(&mut self, room: &RoomName, user: &UserId) {
        let key = (room.clone(), user.clone());
        self.s.members.remove(&key);
        self.members_changed.insert(key);
    }

    /// The next event of `room`; fields beyond the kind and user are set by
    /// the caller. The outcomes hold the events: [`Planner::finish`] lists them.
    fn event(&mut self, room: &RoomName, kind: EventKind, user: &UserId) -> Event {
        // Every caller has checked (or made) the room: `or_default` never runs.
        let row = self.s.rooms.entry(room.clone()).or_default();
        row.last_seq += 1;
        if !self.touched.contains(room) {
            self.touched.push(room.clone());
        }

        Event::new(
            kind,
            room.clone(),
            row.last_seq,
            user.clone(),
            self.node.to_owned(),
            self.at,
        )
    }

    fn finish(mut self) -> Plan {
        // Requests are decided in order, so their events in order are the
        // append order.
        self.plan.events = self
            .plan
            .outcomes
            .iter()
            .flat_map(|o| match o {
                AppendOutcome::Appended(events) => events.as_slice(),
                _ => &[],
            })
            .cloned()
            .collect();
        self.plan.rooms = self
            .touched
            .iter()
            .filter_map(|room| {
                self.s
                    .rooms
                    .get(room)
                    .map(|row| (room.clone(), row.last_seq, row.owner.clone()))
            })
            .collect();
        self.plan.membership = self
            .members_changed
            .into_iter()
            .map(|k| {
                let m = self.s.members.get(&k).copied();
                (k, m)
            })
            .collect();
        self.plan.invites = self
            .invites_changed
            .into_iter()
            .map(|k| {
                let i = self.s.invites.get(&k).cloned();
                (k, i)
            })
            .collect();
        self.plan.states = self
            .states_changed
            .iter()
            .filter_map(|k| {
                let state = self.s.messages.get(k)?.state.clone()?;
                Some((k.clone(), state))
            })
            .collect();
        self.plan.bans = self
            .bans_changed
            .into_iter()
            .map(|k| {
                let b = self.s.bans.get(&k).cloned();
                (k, b)
            })
            .collect();
        self.plan
    }
}
