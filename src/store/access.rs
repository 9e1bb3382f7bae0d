//! Who may read what of a room: [`Access`], what a reader is to a room as
//! the store has it, checked against what a read [`Need`]s.

use super::{Refusal, RoomRow};
use crate::protocol::{Role, UserId};

/// What a reader is to a room, as the store has it: decides who may read
/// `history`, `members` and `bans` (see [`Access::check`]).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `None`: no such room.
    pub room: Option<RoomRow>,
    pub role: Option<Role>,
    pub invited: bool,
}

/// What a read needs of its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `history`: a member (or, without a reader, a public room).
    Member,
    /// `members`: anyone for a public room, a member for a private one.
    Visible,
    /// `bans`: the owner or an admin, not in a DM.
    Moderator,
}

impl Access {
    /// `None` when the reader may read; the refusal otherwise. An outsider
    /// of a private room gets `NoSuchRoom`, as for a room that does not exist.
    pub fn check(&self, reader: Option<&UserId>, need: Need) -> Option<Refusal> {
        let Some(room) = &self.room else {
            return Some(Refusal::NoSuchRoom);
        };
        let knows = self.role.is_some()
            || self.invited
            || reader.is_some_and(|r| room.dm.as_ref().is_some_and(|(a, b)| a == r || b == r));
        if room.private && !knows {
            return Some(Refusal::NoSuchRoom);
        }
        match (need, reader, self.role) {
            (Need::Visible, _, _) if !room.private => None,
            (Need::Member, None, _) => None,
            (_, _, None) => Some(Refusal::NotAMember),
            (Need::Moderator, _, _) if room.dm.is_some() => Some(Refusal::Forbidden),
            (Need::Moderator, _, Some(role)) if !role.moderates() => Some(Refusal::Forbidden),
            _ => None,
        }
    }
}
