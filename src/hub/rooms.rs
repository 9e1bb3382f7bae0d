//! What a node knows of each room beyond its seq: privacy, a DM's users,
//! the members with their roles and the open invitations, as of the room's
//! last delivered event. It answers `rooms` per user from memory and tells
//! the hub whom an event removes; the store stays the authority for every
//! decision and for the reads that could reveal a private room.

use std::collections::{HashMap, HashSet};

use crate::messages::LiveEvent;
use crate::protocol::{EventKind, Role, RoomInfo, RoomName, Seq, Standing, UserId};
use crate::store::{RoomRow, Snapshot};

/// One room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomState {
    pub private: bool,
    /// A DM's two users.
    pub dm: Option<(UserId, UserId)>,
    pub members: HashMap<UserId, Role>,
    pub invited: HashSet<UserId>,
}

impl RoomState {
    fn of(row: &RoomRow) -> RoomState {
        RoomState {
            private: row.private,
            dm: row.dm.clone(),
            ..RoomState::default()
        }
    }

    /// Applies one event, in seq order (the fold of docs/protocol.md, Roles).
    pub fn apply(&mut self, ev: &LiveEvent) {
        let target = ev.facts.target.as_ref();
        match ev.kind {
            EventKind::Create => {
                self.private = ev.facts.private;
                let role = if ev.facts.dm {
                    self.dm = target.map(|t| crate::store::sorted(&ev.user, t));
                    // Roles do not apply in a DM: two members, no owner.
                    Role::Member
                } else {
                    Role::Owner
                };
                self.members.insert(ev.user.clone(), role);
            }
            EventKind::Join => {
                let role = if self.members.is_empty() && self.dm.is_none() {
                    Role::Owner
                } else {
                    Role::Member
                };
                self.members.insert(ev.user.clone(), role);
                self.invited.remove(&ev.user);
            }
            EventKind::Leave => {
                self.members.remove(&ev.user);
            }
            EventKind::Invite => {
                if let Some(t) = target {
                    self.invited.insert(t.clone());
                }
            }
            EventKind::Uninvite => {
                if let Some(t) = target {
                    self.invited.remove(t);
                }
            }
            EventKind::Kick | EventKind::Ban => {
                if let Some(t) = target {
                    self.members.remove(t);
                    self.invited.remove(t);
                }
            }
            EventKind::Role => {
                if let (Some(t), Some(role)) = (target, ev.facts.role) {
                    if role == Role::Owner {
                        for r in self.members.values_mut() {
                            if *r == Role::Owner {
                                *r = Role::Admin;
                            }
                        }
                    }
                    if let Some(r) = self.members.get_mut(t) {
                        *r = role;
                    }
                }
            }
            EventKind::Message
            | EventKind::Unban
            | EventKind::Edit
            | EventKind::Delete
            | EventKind::React
            | EventKind::Unreact
            | EventKind::Typing
            | EventKind::Read => {}
        }
    }

    /// Where `user` stands in the room, if anywhere.
    pub fn standing(&self, user: &UserId) -> Option<Standing> {
        match self.members.get(user) {
            Some(role) => Some((*role).into()),
            None if self.invited.contains(user) => Some(Standing::Invited),
            None => None,
        }
    }

    /// Whether `user` (or an anonymous connection, `None`) may see the
    /// room's name: a public room, or one the user is in, invited to or a DM of.
    pub fn visible_to(&self, user: Option<&UserId>) -> bool {
        !self.private
            || user.is_some_and(|u| {
                self.standing(u).is_some()
                    || self.dm.as_ref().is_some_and(|(a, b)| a == u || b == u)
            })
    }
}

/// Every room a node knows.
#[derive(Debug, Default)]
pub struct Rooms(HashMap<RoomName, RoomState>);

impl Rooms {
    /// The rooms as a store's snapshot has them.
    pub fn from_snapshot(snapshot: &Snapshot) -> Rooms {
        let mut rooms = Rooms::default();
        for (name, state) in Rooms::states(snapshot) {
            rooms.0.insert(name, state);
        }
        rooms
    }

    /// Each room of a snapshot as a [`RoomState`], with its last seq.
    pub fn states(snapshot: &Snapshot) -> HashMap<RoomName, RoomState> {
        let mut out: HashMap<RoomName, RoomState> = snapshot
            .rooms
            .iter()
            .map(|(name, row)| (name.clone(), RoomState::of(row)))
            .collect();
        for (room, user, role) in &snapshot.members {
            if let Some(s) = out.get_mut(room) {
                s.members.insert(user.clone(), *role);
            }
        }
        for (room, user) in &snapshot.invites {
            if let Some(s) = out.get_mut(room) {
                s.invited.insert(user.clone());
            }
        }
        out
    }

    pub fn get(&self, room: &RoomName) -> Option<&RoomState> {
        self.0.get(room)
    }

    pub fn replace(&mut self, room: RoomName, state: RoomState) {
        self.0.insert(room, state);
    }

    /// Applies a delivered event to its room.
    pub fn apply(&mut self, ev: &LiveEvent) {
        self.0.entry(ev.room.clone()).or_default().apply(ev);
    }

    /// The `rooms` reply for `user` (`None`: an anonymous connection, or the
    /// REST API in open mode): the rooms it may see, with `rooms`' fields,
    /// in the order of `seqs` (each room's last delivered seq, by name), and
    /// the unread counts of its rooms as the store gave them.
    pub fn infos(
        &self,
        seqs: impl IntoIterator<Item = (RoomName, Seq)>,
        user: Option<&UserId>,
        unread: &HashMap<RoomName, (u64, u64)>,
    ) -> Vec<RoomInfo> {
        seqs.into_iter()
            .filter_map(|(name, last_seq)| {
                let empty = RoomState::default();
                let state = self.0.get(&name).unwrap_or(&empty);
                if !state.visible_to(user) {
                    return None;
                }
                let with = match (&state.dm, user) {
                    (Some((a, b)), Some(u)) => Some(if a == u { b.clone() } else { a.clone() }),
                    _ => None,
                };
                Some(RoomInfo {
                    members: state.members.len(),
                    last_seq,
                    private: state.private,
                    dm: state.dm.is_some(),
                    with,
                    role: user.and_then(|u| state.standing(u)),
                    unread: unread.get(&name).map(|u| u.0),
                    mentions_unread: unread.get(&name).map(|u| u.1),
                    name,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Facts;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn ev(kind: EventKind, user: &str, facts: Facts) -> LiveEvent {
        LiveEvent {
            room: RoomName::parse("r").unwrap(),
            seq: 1,
            kind,
            user: u(user),
            facts,
            frame: "{}".into(),
        }
    }

    fn on(target: &str) -> Facts {
        Facts {
            target: Some(u(target)),
            ..Facts::default()
        }
    }

    #[test]
    fn roles_follow_the_log() {
        let mut s = RoomState::default();
        s.apply(&ev(EventKind::Create, "a", Facts::default()));
        s.apply(&ev(EventKind::Join, "b", Facts::default()));
        s.apply(&ev(EventKind::Join, "c", Facts::default()));
        let admin = Facts {
            role: Some(Role::Admin),
            ..on("c")
        };
        s.apply(&ev(EventKind::Role, "a", admin));
        assert_eq!(s.members[&u("c")], Role::Admin);
        let owner = Facts {
            role: Some(Role::Owner),
            ..on("b")
        };
        s.apply(&ev(EventKind::Role, "a", owner));
        assert_eq!(
            (s.members[&u("a")], s.members[&u("b")]),
            (Role::Admin, Role::Owner)
        );
        s.apply(&ev(EventKind::Kick, "b", on("c")));
        assert!(!s.members.contains_key(&u("c")));
        // Everyone leaves; the next joiner owns the room.
        s.apply(&ev(EventKind::Leave, "a", Facts::default()));
        s.apply(&ev(EventKind::Leave, "b", Facts::default()));
        s.apply(&ev(EventKind::Join, "d", Facts::default()));
        assert_eq!(s.members[&u("d")], Role::Owner);
    }

    #[test]
    fn a_private_room_is_seen_only_by_its_members_and_invitees() {
        let mut rooms = Rooms::default();
        let private = Facts {
            private: true,
            ..Facts::default()
        };
        rooms.apply(&ev(EventKind::Create, "a", private));
        rooms.apply(&ev(EventKind::Invite, "a", on("b")));
        let seqs = || vec![(RoomName::parse("r").unwrap(), 2)];
        assert_eq!(rooms.infos(seqs(), None, &HashMap::new()), vec![]);
        assert_eq!(rooms.infos(seqs(), Some(&u("c")), &HashMap::new()), vec![]);
        let b = rooms.infos(seqs(), Some(&u("b")), &HashMap::new());
        assert_eq!(b[0].role, Some(Standing::Invited));
        assert!(b[0].private);
        rooms.apply(&ev(EventKind::Uninvite, "a", on("b")));
        assert_eq!(rooms.infos(seqs(), Some(&u("b")), &HashMap::new()), vec![]);
        assert_eq!(
            rooms.infos(seqs(), Some(&u("a")), &HashMap::new())[0].role,
            Some(Standing::Owner)
        );
    }

    #[test]
    fn a_dm_names_the_other_user() {
        let mut rooms = Rooms::default();
        let dm = Facts {
            private: true,
            dm: true,
            ..on("b")
        };
        rooms.apply(&ev(EventKind::Create, "a", dm));
        let by = Facts {
            by: Some(u("a")),
            ..Facts::default()
        };
        rooms.apply(&ev(EventKind::Join, "b", by));
        let seqs = || vec![(RoomName::parse("r").unwrap(), 2)];
        let b = rooms.infos(seqs(), Some(&u("b")), &HashMap::new());
        assert_eq!((b[0].dm, b[0].with.clone()), (true, Some(u("a"))));
        assert_eq!(b[0].members, 2);
        assert_eq!(
            rooms.infos(seqs(), Some(&u("a")), &HashMap::new())[0].role,
            Some(Standing::Member)
        );
    }
}
