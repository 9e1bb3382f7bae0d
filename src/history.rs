//! The reads that could reveal a private room, for a socket and the REST
//! API alike: `history` (cut to fit the connection's outbound bound),
//! `members` and `bans`. Each checks its reader where membership is stored
//! (not a node's memory, which may not have heard of a kick yet), and an
//! outsider of a private room gets `no_such_room` as for a room that does
//! not exist. Also `block`, the one write that is not an event.

use crate::metrics::Metrics;
use crate::protocol::{BanInfo, HistoryRange, ProtoError, Role, RoomName, Seq, UserId};
use crate::store::{EventStore, Need, Page, StoreError};

/// A store failure, logged and answered `unavailable`: its text never
/// reaches a client.
fn unavailable(
    metrics: &Metrics,
    what: &str,
    room: Option<&RoomName>,
    e: StoreError,
) -> ProtoError {
    match room {
        Some(room) => log::error!("{what} of {room} failed: {e}"),
        None => log::error!("{what} failed: {e}"),
    }
    metrics.store_errors.inc();
    ProtoError::unavailable()
}

/// Checks that `reader` may read `room` as `need` says.
async fn check(
    store: &dyn EventStore,
    metrics: &Metrics,
    room: &RoomName,
    reader: Option<&UserId>,
    need: Need,
) -> Result<(), ProtoError> {
    let access = store
        .access(room, reader)
        .await
        .map_err(|e| unavailable(metrics, "the access check", Some(room), e))?;
    match access.check(reader, need) {
        Some(refusal) => Err(refusal.to_error(room, None)),
        None => Ok(()),
    }
}

/// A page of `room`'s events for `reader` (`None`: the REST API in open
/// mode, which reads public rooms only), at most `max_bytes` of event JSON
/// (see [`fit`]).
pub async fn read(
    store: &dyn EventStore,
    metrics: &Metrics,
    room: &RoomName,
    reader: Option<&UserId>,
    range: HistoryRange,
    max_bytes: usize,
) -> Result<Page, ProtoError> {
    check(store, metrics, room, reader, Need::Member).await?;
    let mut page = store
        .events(room, range)
        .await
        .map_err(|e| unavailable(metrics, "history read", Some(room), e))?;
    fit(&mut page, range.since.is_none(), max_bytes);
    Ok(page)
}

/// `members`: anyone may list a public room's; a private room's only its members.
pub async fn members(
    store: &dyn EventStore,
    metrics: &Metrics,
    room: &RoomName,
    reader: Option<&UserId>,
) -> Result<Vec<(UserId, Role, Seq)>, ProtoError> {
    check(store, metrics, room, reader, Need::Visible).await?;
    store
        .members(room)
        .await
        .map_err(|e| unavailable(metrics, "members read", Some(room), e))
}

/// `bans`: for the owner and admins.
pub async fn bans(
    store: &dyn EventStore,
    metrics: &Metrics,
    room: &RoomName,
    reader: Option<&UserId>,
) -> Result<Vec<BanInfo>, ProtoError> {
    check(store, metrics, room, reader, Need::Moderator).await?;
    store
        .bans(room)
        .await
        .map_err(|e| unavailable(metrics, "bans read", Some(room), e))
}

/// `read`: moves `reader`'s marker forward (a member's: checked in the
/// store): the marker after, and whether it moved.
pub async fn mark_read(
    store: &dyn EventStore,
    metrics: &Metrics,
    room: &RoomName,
    reader: &UserId,
    seq: Seq,
) -> Result<(Seq, bool), ProtoError> {
    check(store, metrics, room, Some(reader), Need::Member).await?;
    match store.mark_read(room, reader, seq).await {
        Ok(Some(marker)) => Ok(marker),
        Ok(None) => Err(ProtoError::invalid_field(format!(
            "seq {seq} is past the last event of room {room}"
        ))),
        Err(e) => Err(unavailable(metrics, "read marker", Some(room), e)),
    }
}

/// The unread counts of every room `user` is a member of.
pub async fn unread(
    store: &dyn EventStore,
    metrics: &Metrics,
    user: &UserId,
) -> Result<Vec<(RoomName, u64, u64)>, ProtoError> {
    store
        .unread(user)
        .await
        .map_err(|e| unavailable(metrics, "unread counts", None, e))
}

/// `block` (`on`) or `unblock`.
pub async fn block(
    store: &dyn EventStore,
    metrics: &Metrics,
    user: &UserId,
    blocked: &UserId,
    on: bool,
) -> Result<(), ProtoError> {
    store
        .set_block(user, blocked, on)
        .await
        .map_err(|e| unavailable(metrics, "block", None, e))
}

/// Cuts a page whose events' JSON passes `max_bytes`, keeping the events
/// next to the cursor (the newest when the page was read newest first, the
/// oldest otherwise) and saying `more`: a client pages on and is never cut
/// off for its own request. At least one event stays.
pub fn fit(page: &mut Page, newest_first: bool, max_bytes: usize) {
    let sizes: Vec<usize> = page.events.iter().map(|e| e.to_json().len() + 1).collect();
    if sizes.iter().sum::<usize>() <= max_bytes {
        return;
    }
    let mut kept = 0;
    let mut used = 0;
    let mut take = |size: &usize| {
        if kept > 0 && used + size > max_bytes {
            return false;
        }
        used += size;
        kept += 1;
        true
    };
    if newest_first {
        sizes.iter().rev().take_while(|s| take(s)).for_each(drop);
        page.events.drain(..page.events.len() - kept);
    } else {
        sizes.iter().take_while(|s| take(s)).for_each(drop);
        page.events.truncate(kept);
    }
    page.more = true;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{now_micros, Event, EventKind};

    fn page(n: i64, text: usize) -> Page {
        let events = (1..=n)
            .map(|seq| {
                let mut ev = Event::new(
                    EventKind::Message,
                    RoomName::parse("g").unwrap(),
                    seq,
                    UserId::parse("u").unwrap(),
                    "n".into(),
                    now_micros(),
                );
                ev.id = seq;
                ev.message = Some("x".repeat(text));
                ev
            })
            .collect();
        Page {
            events,
            more: false,
        }
    }

    fn seqs(p: &Page) -> Vec<i64> {
        p.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_page_under_the_cap_is_left_alone() {
        let mut p = page(5, 10);
        fit(&mut p, true, 1 << 20);
        assert_eq!((seqs(&p), p.more), (vec![1, 2, 3, 4, 5], false));
    }

    #[test]
    fn a_page_over_the_cap_keeps_the_events_next_to_the_cursor() {
        // Two-digit seqs and ids make the later events a little longer.
        let one = page(1, 1000).events[0].to_json().len() + 3;
        let mut latest = page(10, 1000);
        fit(&mut latest, true, 3 * one);
        assert_eq!((seqs(&latest), latest.more), (vec![8, 9, 10], true));
        let mut since = page(10, 1000);
        fit(&mut since, false, 3 * one);
        assert_eq!((seqs(&since), since.more), (vec![1, 2, 3], true));
    }

    #[test]
    fn one_event_always_stays() {
        let mut p = page(3, 5000);
        fit(&mut p, false, 10);
        assert_eq!((seqs(&p), p.more), (vec![1], true));
    }
}
