//! The one history read, for `history` on a socket and
//! `GET /rooms/{room}/events` alike: who may read, then the page.

use crate::metrics::Metrics;
use crate::protocol::{HistoryRange, ProtoError, RoomName, UserId};
use crate::store::{EventStore, Page};

/// A page of `room`'s events for `reader` (`None`: the REST API in open
/// mode, which only needs the room to exist). Store errors are logged and
/// answered `unavailable`: their text never reaches a client.
pub async fn read(
    store: &dyn EventStore,
    metrics: &Metrics,
    room: &RoomName,
    reader: Option<&UserId>,
    range: HistoryRange,
) -> Result<Page, ProtoError> {
    let page = async {
        match store.check_reader(room, reader).await? {
            Some(refusal) => Ok(Err(refusal.to_error(room))),
            None => Ok(Ok(store.events(room, range).await?)),
        }
    };
    match page.await {
        Ok(result) => result,
        Err(e) => {
            let e: crate::store::StoreError = e;
            log::error!("history read of {room} failed: {e}");
            metrics.store_errors.inc();
            Err(ProtoError::unavailable())
        }
    }
}
