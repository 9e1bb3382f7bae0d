//! The one history read, for `history` on a socket and
//! `GET /rooms/{room}/events` alike: who may read, then the page, cut to fit
//! the connection's outbound bound.

use crate::metrics::Metrics;
use crate::protocol::{HistoryRange, ProtoError, RoomName, UserId};
use crate::store::{EventStore, Page};

/// A page of `room`'s events for `reader` (`None`: the REST API in open
/// mode, which only needs the room to exist), at most `max_bytes` of event
/// JSON (see [`fit`]). Store errors are logged and answered `unavailable`:
/// their text never reaches a client.
pub async fn read(
    store: &dyn EventStore,
    metrics: &Metrics,
    room: &RoomName,
    reader: Option<&UserId>,
    range: HistoryRange,
    max_bytes: usize,
) -> Result<Page, ProtoError> {
    let page = async {
        match store.check_reader(room, reader).await? {
            Some(refusal) => Ok(Err(refusal.to_error(room))),
            None => Ok(Ok(store.events(room, range).await?)),
        }
    };
    match page.await {
        Ok(Ok(mut page)) => {
            fit(&mut page, range.since.is_none(), max_bytes);
            Ok(page)
        }
        Ok(Err(refusal)) => Err(refusal),
        Err(e) => {
            let e: crate::store::StoreError = e;
            log::error!("history read of {room} failed: {e}");
            metrics.store_errors.inc();
            Err(ProtoError::unavailable())
        }
    }
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
            .map(|seq| Event {
                kind: EventKind::Message,
                room: RoomName::parse("g").unwrap(),
                seq,
                id: seq,
                user_id: UserId::parse("u").unwrap(),
                message: Some("x".repeat(text)),
                client_msg_id: None,
                node: "n".into(),
                at: now_micros(),
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
