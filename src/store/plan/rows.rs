//! What a batch is decided from and what it decides: the rows a store
//! loads ([`Loaded`], asked for by [`Keys`]) and what it writes ([`Plan`]).

use std::collections::{HashMap, HashSet};

use super::super::{AppendOp, AppendOutcome, AppendRequest};
use crate::protocol::{Event, Role, RoomName, Seq, UserId};

/// A room as a batch sees it (the `rooms` row).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomRow {
    pub last_seq: Seq,
    pub private: bool,
    /// `None` only while the room has no members.
    pub owner: Option<UserId>,
    /// A DM's two users, in byte order.
    pub dm: Option<(UserId, UserId)>,
}

impl RoomRow {
    pub(super) fn in_dm(&self, user: &UserId) -> bool {
        self.dm
            .as_ref()
            .is_some_and(|(a, b)| a == user || b == user)
    }
}

/// A member's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub role: Role,
    pub joined_seq: Seq,
}

/// An open invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub by: UserId,
    pub seq: Seq,
}

/// A ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRow {
    pub by: UserId,
    pub reason: Option<String>,
    pub seq: Seq,
}

/// A message's current state beside the log (`message_state`): made the
/// first time an edit, delete or reaction needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateRow {
    /// The latest edit's text (`None` before any edit, and once deleted).
    pub text: Option<String>,
    pub edited: u32,
    pub deleted_by: Option<UserId>,
    /// The seq of the last event folded into the state.
    pub state_seq: Seq,
}

/// A `message` event that a batch acts on or answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub author: UserId,
    pub state: Option<StateRow>,
}

impl MessageRow {
    pub(super) fn deleted(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.deleted_by.is_some())
    }
}

/// A reaction: (room, message seq, emoji, user).
pub type ReactionKey = (RoomName, Seq, String, UserId);

/// A room a batch may create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRoom {
    pub name: RoomName,
    pub creator: UserId,
    pub private: bool,
    pub dm: Option<(UserId, UserId)>,
}

pub(super) type Pair = (RoomName, UserId);

/// What a store loaded, under its locks, for the rooms and users a batch touches.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rooms that exist.
    pub rooms: HashMap<RoomName, RoomRow>,
    /// Rooms that exist but were created by a concurrent transaction after this
    /// one looked: nothing in this batch may use them.
    pub taken: HashSet<RoomName>,
    /// Memberships among the batch's pairs ([`Keys::pairs`]); a pair that is
    /// not here is not a member.
    pub members: HashMap<Pair, Membership>,
    /// Invitations among the batch's pairs.
    pub invites: HashMap<Pair, Invitation>,
    /// Bans among the batch's pairs.
    pub bans: HashMap<Pair, BanRow>,
    /// (blocker, blocked) among [`Keys::blocks`].
    pub blocks: HashSet<(UserId, UserId)>,
    /// For the rooms of [`Keys::succession`]: members outside the batch's
    /// pairs who could inherit the room, best first (admins, then by join).
    pub successors: HashMap<RoomName, Vec<(UserId, Membership)>>,
    /// Stored events whose (room, user, client_msg_id) the batch repeats.
    pub sent: HashMap<(RoomName, UserId, String), Event>,
    /// The `message` events the batch acts on or answers ([`Keys::messages`]).
    pub messages: HashMap<(RoomName, Seq), MessageRow>,
    /// Reactions among [`Keys::reactions`] that exist.
    pub reactions: HashSet<ReactionKey>,
}

/// What a batch writes: the stores turn this into SQL.
#[derive(Debug, Default)]
pub struct Plan {
    pub outcomes: Vec<AppendOutcome>,
    /// New events in append order, `id` still 0.
    pub events: Vec<Event>,
    /// Rooms this batch creates.
    pub created: Vec<NewRoom>,
    /// The new last seq and owner of every room the batch appended to.
    pub rooms: Vec<(RoomName, Seq, Option<UserId>)>,
    /// Memberships the batch changed, as they are at its end (`None`: not a member).
    pub membership: Vec<(Pair, Option<Membership>)>,
    /// Invitations the batch changed, as at its end.
    pub invites: Vec<(Pair, Option<Invitation>)>,
    /// Bans the batch changed, as at its end.
    pub bans: Vec<(Pair, Option<BanRow>)>,
    /// Message states the batch changed, as at its end.
    pub states: Vec<((RoomName, Seq), StateRow)>,
    /// Messages the batch deleted: their text, and their edits', goes.
    pub redact: Vec<(RoomName, Seq)>,
    /// Reactions the batch added (`Some(seq of the react)`) or removed.
    pub reactions: Vec<(ReactionKey, Option<Seq>)>,
    /// (room, seq, user) of every kept mention.
    pub mentions: Vec<(RoomName, Seq, UserId)>,
    /// Read markers that posting moves forward: (room, user, seq).
    pub reads: Vec<(RoomName, UserId, Seq)>,
}

impl Plan {
    /// Fills in the ids the database gave the new events, keyed by (room, seq).
    pub fn set_ids(&mut self, ids: &HashMap<(RoomName, Seq), i64>) {
        let set = |ev: &mut Event| {
            if ev.id == 0 {
                if let Some(id) = ids.get(&(ev.room.clone(), ev.seq)) {
                    ev.id = *id;
                }
            }
        };
        self.events.iter_mut().for_each(set);
        for outcome in self.outcomes.iter_mut() {
            match outcome {
                AppendOutcome::Appended(events) => events.iter_mut().for_each(set),
                AppendOutcome::Duplicate(ev) => set(ev),
                _ => {}
            }
        }
    }
}

/// What a store must load for a batch.
pub struct Keys {
    /// Every room the batch names, in name order (the lock order).
    pub rooms: Vec<RoomName>,
    /// The rooms the batch may create, one per name.
    pub creates: Vec<NewRoom>,
    /// (room, user) for every caller and every user acted on.
    pub pairs: HashSet<Pair>,
    /// (blocker, blocked): whether the users an `invite` or `dm` reaches
    /// blocked its caller.
    pub blocks: Vec<(UserId, UserId)>,
    /// (room, user, client_msg_id) of the batch's requests that have one.
    pub sent: Vec<(RoomName, UserId, String)>,
    /// The messages the batch acts on or answers.
    pub messages: Vec<(RoomName, Seq)>,
    /// The reactions the batch adds or removes.
    pub reactions: Vec<ReactionKey>,
    /// Whether any request needs invitations, bans or blocks (anything but
    /// messages and leaves): a batch of messages skips those reads.
    pub moderation: bool,
}

impl Keys {
    pub fn of(batch: &[AppendRequest]) -> Keys {
        let mut rooms: Vec<RoomName> = batch.iter().map(|r| r.room.clone()).collect();
        rooms.sort();
        rooms.dedup();
        let mut creates: Vec<NewRoom> = Vec::new();
        let mut pairs: HashSet<Pair> = HashSet::new();
        let mut blocks: HashSet<(UserId, UserId)> = HashSet::new();
        let mut sent: HashSet<(RoomName, UserId, String)> = HashSet::new();
        let mut messages: HashSet<(RoomName, Seq)> = HashSet::new();
        let mut reactions: HashSet<ReactionKey> = HashSet::new();
        for r in batch {
            pairs.insert((r.room.clone(), r.user.clone()));
            if let Some(c) = r.op.client_msg_id() {
                sent.insert((r.room.clone(), r.user.clone(), c.to_owned()));
            }
            if let Some(seq) = r.op.target_seq() {
                messages.insert((r.room.clone(), seq));
            }
            match &r.op {
                AppendOp::Message { mentions, .. } => {
                    for m in mentions {
                        pairs.insert((r.room.clone(), m.clone()));
                    }
                }
                AppendOp::React { target, emoji, .. } => {
                    reactions.insert((r.room.clone(), *target, emoji.clone(), r.user.clone()));
                }
                _ => {}
            }
            if let Some(target) = r.op.target() {
                pairs.insert((r.room.clone(), target.clone()));
            }
            let new = match &r.op {
                AppendOp::Create { private } => Some(NewRoom {
                    name: r.room.clone(),
                    creator: r.user.clone(),
                    private: *private,
                    dm: None,
                }),
                AppendOp::Dm { other } => Some(NewRoom {
                    name: r.room.clone(),
                    creator: r.user.clone(),
                    private: true,
                    dm: Some(sorted(&r.user, other)),
                }),
                _ => None,
            };
            if let Some(new) = new {
                if !creates.iter().any(|c| c.name == new.name) {
                    creates.push(new);
                }
            }
            match &r.op {
                AppendOp::Invite { target } => {
                    blocks.insert((target.clone(), r.user.clone()));
                }
                AppendOp::Dm { other } => {
                    blocks.insert((other.clone(), r.user.clone()));
                }
                _ => {}
            }
        }
        let moderation = batch.iter().any(|r| {
            !matches!(
                r.op,
                AppendOp::Message { .. }
                    | AppendOp::Leave
                    | AppendOp::Edit { .. }
                    | AppendOp::Delete { .. }
                    | AppendOp::React { .. }
            )
        });
        Keys {
            moderation,
            rooms,
            creates,
            pairs,
            blocks: blocks.into_iter().collect(),
            sent: sent.into_iter().collect(),
            messages: messages.into_iter().collect(),
            reactions: reactions.into_iter().collect(),
        }
    }

    /// The rooms whose possible heirs the store must load once it has the
    /// rooms' rows, with how many of them at most: those where the owner
    /// (as loaded, or as the batch may make one) leaves. The heirs exclude
    /// the batch's own pairs, which the plan follows itself, so one more
    /// than the room's pairs always suffices.
    pub fn succession(
        &self,
        batch: &[AppendRequest],
        rooms: &HashMap<RoomName, RoomRow>,
    ) -> Vec<(RoomName, i64)> {
        let mut out: Vec<(RoomName, i64)> = Vec::new();
        for r in batch {
            if !matches!(r.op, AppendOp::Leave) || out.iter().any(|(n, _)| n == &r.room) {
                continue;
            }
            let owner_leaves = rooms
                .get(&r.room)
                .is_some_and(|row| row.owner.as_ref() == Some(&r.user));
            let ownership_moves = batch.iter().any(|o| {
                o.room == r.room
                    && matches!(
                        o.op,
                        AppendOp::SetRole {
                            role: Role::Owner,
                            ..
                        }
                    )
            });
            if owner_leaves || ownership_moves {
                let pairs = self
                    .pairs
                    .iter()
                    .filter(|(room, _)| room == &r.room)
                    .count();
                out.push((r.room.clone(), pairs as i64 + 1));
            }
        }
        out
    }
}

/// The two users of a DM in byte order.
pub fn sorted(a: &UserId, b: &UserId) -> (UserId, UserId) {
    if a.as_str() <= b.as_str() {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}
