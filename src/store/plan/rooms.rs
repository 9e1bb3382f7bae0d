//! Deciding what changes a room's people: invitations, kicks, bans, roles,
//! DMs, and who owns a room after its owner leaves.

use super::{sorted, AppendOp, AppendOutcome, BanRow, Invitation, Planner, Refusal, RoomRow};
use crate::protocol::{Event, EventKind, Role, RoomName, Target, UserId};

impl Planner<'_> {
    /// `invite`, `uninvite`, `kick`, `ban`, `unban` and `set_role` by a member
    /// of a room that is not a DM.
    pub(super) fn moderate(
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
    pub(super) fn dm(
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
    pub(super) fn succeed(&mut self, room: &RoomName, from: &UserId) -> Option<Event> {
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
}
