//! Deciding `message`, `edit`, `delete`, `react` and `unreact`: each
//! against the target message as stored, folding into its state.

use super::{AppendOp, AppendOutcome, MessageRow, Planner, Refusal};
use crate::protocol::{EventKind, Role, RoomName, Target, UserId};

impl Planner<'_> {
    /// `message`, `edit`, `delete`, `react` and `unreact` by a member.
    pub(super) fn message_op(
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
}
