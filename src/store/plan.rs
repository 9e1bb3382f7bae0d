//! Deciding a batch: [`plan`] takes what a store loaded under its locks for
//! the rooms and users a batch touches ([`Loaded`], asked for by [`Keys`])
//! and decides every request in order, as one transaction would: seqs
//! continue each room's last seq with no gap, and each request sees what the
//! requests before it did. The stores turn the resulting [`Plan`] into SQL.
//!
//! The rules are docs/protocol.md's, "Rooms with owners": who may do what,
//! what an outsider of a private room is told, and who owns a room after
//! its owner leaves.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{AppendOp, AppendOutcome, AppendRequest, Refusal};
use crate::protocol::{Event, EventKind, Role, RoomName, Seq, Target, UserId};

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
    fn in_dm(&self, user: &UserId) -> bool {
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
    fn deleted(&self) -> bool {
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

type Pair = (RoomName, UserId);

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
    pub pairs: Vec<Pair>,
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
            pairs: pairs.into_iter().collect(),
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

/// Decides every request of `batch` in order against what was loaded.
pub fn plan(batch: &[AppendRequest], loaded: Loaded, node: &str, at: DateTime<Utc>) -> Plan {
    let pairs: HashSet<Pair> = Keys::of(batch).pairs.into_iter().collect();
    let mut p = Planner {
        s: loaded,
        pairs,
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
    pairs: HashSet<Pair>,
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

    /// `message`, `edit`, `delete`, `react` and `unreact` by a member.
    fn message_op(
        &mut self,
        room: &RoomName,
        user: &UserId,
        my: Role,
        op: &AppendOp,
    ) -> Result<AppendOutcome, Refusal> {
        let key = op.target_seq().map(|seq| (room.clone(), seq));
        let target = key.as_ref().and_then(|k| self.s.messages.get(k).cloned());
        if let AppendOp::Message {
            text,
            client_msg_id,
            reply_to,
            mentions,
        } = op
        {
            if reply_to.is_some() && target.is_none() {
                return Err(Refusal::NoSuchEvent);
            }
            let kept: Vec<UserId> = mentions
                .iter()
                .filter(|m| self.member(room, m).is_some())
                .cloned()
                .collect();
            let mut ev = self.event(room, EventKind::Message, user);
            ev.message = Some(text.clone());
            ev.client_msg_id = client_msg_id.clone();
            ev.reply_to = *reply_to;
            for m in &kept {
                self.plan.mentions.push((room.clone(), ev.seq, m.clone()));
            }
            ev.mentions = kept;
            self.s.messages.insert(
                (room.clone(), ev.seq),
                MessageRow {
                    author: user.clone(),
                    state: None,
                },
            );
            // One row per poster and room, at its last message: an
            // `UPDATE … FROM` with two rows for one member applies only one.
            match self
                .plan
                .reads
                .iter_mut()
                .find(|(r, u, _)| r == room && u == user)
            {
                Some(read) => read.2 = read.2.max(ev.seq),
                None => self.plan.reads.push((room.clone(), user.clone(), ev.seq)),
            }
            return Ok(AppendOutcome::Appended(vec![ev]));
        }
        let (Some(key), Some(target)) = (key, target) else {
            return Err(Refusal::NoSuchEvent);
        };
        if target.deleted() {
            return Err(Refusal::NoSuchEvent);
        }
        let mut state = target.state.clone().unwrap_or_default();
        let mut ev = match op {
            AppendOp::Edit {
                text,
                client_msg_id,
                ..
            } => {
                if &target.author != user {
                    return Err(Refusal::NotAuthor);
                }
                let mut ev = self.event(room, EventKind::Edit, user);
                ev.message = Some(text.clone());
                ev.client_msg_id = client_msg_id.clone();
                state.text = Some(text.clone());
                state.edited += 1;
                ev
            }
            AppendOp::Delete { client_msg_id, .. } => {
                if &target.author != user && !my.moderates() {
                    return Err(Refusal::Forbidden);
                }
                let mut ev = self.event(room, EventKind::Delete, user);
                ev.client_msg_id = client_msg_id.clone();
                state.text = None;
                state.deleted_by = Some(user.clone());
                self.plan.redact.push(key.clone());
                ev
            }
            AppendOp::React {
                emoji,
                on,
                client_msg_id,
                ..
            } => {
                let reaction = (room.clone(), key.1, emoji.clone(), user.clone());
                let exists = self.s.reactions.contains(&reaction);
                let last_seq = self.s.rooms.get(room).map_or(0, |r| r.last_seq);
                match (on, exists) {
                    (true, true) => return Ok(AppendOutcome::Repeated { last_seq }),
                    (false, false) => return Err(Refusal::NoSuchReaction),
                    _ => {}
                }
                let kind = if *on {
                    EventKind::React
                } else {
                    EventKind::Unreact
                };
                let mut ev = self.event(room, kind, user);
                ev.emoji = Some(emoji.clone());
                ev.client_msg_id = client_msg_id.clone();
                if *on {
                    self.s.reactions.insert(reaction.clone());
                    self.plan.reactions.push((reaction, Some(ev.seq)));
                } else {
                    self.s.reactions.remove(&reaction);
                    self.plan.reactions.push((reaction, None));
                }
                ev
            }
            _ => return Err(Refusal::Forbidden),
        };
        ev.target = Some(Target::Seq(key.1));
        state.state_seq = ev.seq;
        self.s.messages.insert(
            key.clone(),
            MessageRow {
                author: target.author,
                state: Some(state),
            },
        );
        if !self.states_changed.contains(&key) {
            self.states_changed.push(key);
        }
        Ok(AppendOutcome::Appended(vec![ev]))
    }

    /// `invite`, `uninvite`, `kick`, `ban`, `unban` and `set_role` by a member
    /// of a room that is not a DM.
    fn moderate(
        &mut self,
        room: &RoomName,
        row: &RoomRow,
        user: &UserId,
        my: Role,
        op: &AppendOp,
    ) -> Result<AppendOutcome, Refusal> {
        let Some(target) = op.target() else {
            return Err(Refusal::Forbidden);
        };
        let tkey = (room.clone(), target.clone());
        let theirs = self.member(room, target);
        let unchanged = AppendOutcome::Unchanged {
            last_seq: row.last_seq,
        };
        let mut ev = match op {
            AppendOp::Invite { .. } => {
                if row.private && !my.moderates() {
                    return Err(Refusal::Forbidden);
                }
                if self.s.blocks.contains(&(target.clone(), user.clone())) {
                    return Err(Refusal::Forbidden);
                }
                if theirs.is_some() {
                    return Err(Refusal::AlreadyMember);
                }
                if self.s.bans.contains_key(&tkey) {
                    return Err(Refusal::Banned);
                }
                if self.s.invites.contains_key(&tkey) {
                    return Ok(unchanged);
                }
                let ev = self.event(room, EventKind::Invite, user);
                self.s.invites.insert(
                    tkey.clone(),
                    Invitation {
                        by: user.clone(),
                        seq: ev.seq,
                    },
                );
                self.invites_changed.insert(tkey);
                ev
            }
            AppendOp::Uninvite { .. } => {
                if row.private && !my.moderates() {
                    return Err(Refusal::Forbidden);
                }
                let Some(invitation) = self.s.invites.get(&tkey) else {
                    return Err(Refusal::NotInvited);
                };
                if !my.moderates() && &invitation.by != user {
                    return Err(Refusal::Forbidden);
                }
                let ev = self.event(room, EventKind::Uninvite, user);
                self.s.invites.remove(&tkey);
                self.invites_changed.insert(tkey);
                ev
            }
            AppendOp::Kick { .. } | AppendOp::Ban { .. } => {
                if !my.moderates() {
                    return Err(Refusal::Forbidden);
                }
                let Some(theirs) = theirs else {
                    return Err(Refusal::NoSuchMember);
                };
                if theirs.role == Role::Owner || (my == Role::Admin && theirs.role == Role::Admin) {
                    return Err(Refusal::Forbidden);
                }
                self.remove_member(room, target);
                if self.s.invites.remove(&tkey).is_some() {
                    self.invites_changed.insert(tkey.clone());
                }
                match op {
                    AppendOp::Ban { reason, .. } => {
                        let mut ev = self.event(room, EventKind::Ban, user);
                        ev.reason = reason.clone();
                        self.s.bans.insert(
                            tkey.clone(),
                            BanRow {
                                by: user.clone(),
                                reason: reason.clone(),
                                seq: ev.seq,
                            },
                        );
                        self.bans_changed.insert(tkey);
                        ev
                    }
                    _ => self.event(room, EventKind::Kick, user),
                }
            }
            AppendOp::Unban { .. } => {
                if !my.moderates() {
                    return Err(Refusal::Forbidden);
                }
                if self.s.bans.remove(&tkey).is_none() {
                    return Err(Refusal::NotBanned);
                }
                self.bans_changed.insert(tkey);
                self.event(room, EventKind::Unban, user)
            }
            AppendOp::SetRole { role, .. } => {
                if my != Role::Owner {
                    return Err(Refusal::Forbidden);
                }
                let Some(theirs) = theirs else {
                    return Err(Refusal::NoSuchMember);
                };
                if target == user {
                    return Err(Refusal::Forbidden);
                }
                if theirs.role == *role {
                    return Ok(unchanged);
                }
                let mut ev = self.event(room, EventKind::Role, user);
                ev.role = Some(*role);
                self.set_role(room, target, *role);
                if *role == Role::Owner {
                    self.set_role(room, user, Role::Admin);
                }
                ev
            }
            _ => return Err(Refusal::Forbidden),
        };
        ev.target = Some(Target::User(target.clone()));
        Ok(AppendOutcome::Appended(vec![ev]))
    }

    /// `dm`: creates the DM when it does not exist and makes both users members.
    fn dm(
        &mut self,
        room: &RoomName,
        user: &UserId,
        other: &UserId,
    ) -> Result<AppendOutcome, Refusal> {
        if self.s.blocks.contains(&(other.clone(), user.clone())) {
            return Err(Refusal::Forbidden);
        }
        if self.s.taken.contains(room) {
            return Err(Refusal::Busy);
        }
        let mut events = Vec::new();
        if !self.s.rooms.contains_key(room) {
            self.create(room, user, true, Some(sorted(user, other)));
            let mut ev = self.event(room, EventKind::Create, user);
            ev.private = true;
            ev.dm = true;
            ev.target = Some(Target::User(other.clone()));
            // Roles do not apply in a DM: two members, no owner.
            self.set_member(room, user, Role::Member, ev.seq);
            events.push(ev);
        }
        if self.member(room, user).is_none() {
            let ev = self.event(room, EventKind::Join, user);
            self.join(room, user, ev.seq);
            events.push(ev);
        }
        if self.member(room, other).is_none() {
            let mut ev = self.event(room, EventKind::Join, other);
            ev.by = Some(user.clone());
            self.join(room, other, ev.seq);
            events.push(ev);
        }
        if events.is_empty() {
            let last_seq = self.s.rooms.get(room).map_or(0, |r| r.last_seq);
            return Ok(AppendOutcome::AlreadyMember { last_seq });
        }
        Ok(AppendOutcome::Appended(events))
    }

    /// After the owner `from` left: the `role` event that passes the room to
    /// the admin who joined first, else the member who joined first; none
    /// when the room is now empty.
    fn succeed(&mut self, room: &RoomName, from: &UserId) -> Option<Event> {
        let in_batch = self
            .s
            .members
            .iter()
            .filter(|((r, _), _)| r == room)
            .map(|((_, u), m)| (u.clone(), *m));
        let outside = self
            .s
            .successors
            .get(room)
            .into_iter()
            .flatten()
            .filter(|(u, _)| !self.pairs.contains(&(room.clone(), u.clone())))
            .cloned();
        let heir = in_batch
            .chain(outside)
            .min_by_key(|(u, m)| (m.role != Role::Admin, m.joined_seq, u.clone()))
            .map(|(u, _)| u);
        let Some(heir) = heir else {
            if let Some(row) = self.s.rooms.get_mut(room) {
                row.owner = None;
            }
            return None;
        };
        let mut ev = self.event(room, EventKind::Role, from);
        ev.target = Some(Target::User(heir.clone()));
        ev.role = Some(Role::Owner);
        self.set_role(room, &heir, Role::Owner);
        Some(ev)
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
