//! The event writer: the only writer of the event tables.
//!
//! It takes appends from a bounded queue and commits everything that queued up
//! while the previous transaction ran as one batch (group commit: one
//! transaction when idle, large batches under load). Each batch's outcomes go
//! back to the ChatServer as one [`Committed`] message, in commit order, and
//! the writer waits until the ChatServer has taken it, so no queue between
//! them grows without bound.
//!
//! One request must not fail the others: when a batch fails in a way that may
//! be one request's fault (a statement the database refused,
//! [`StoreError::may_be_one_request`]), the writer appends the batch's
//! requests again one at a time, in order, and each gets its own outcome.
//! Seqs are assigned inside each append's transaction, so a room's order is
//! still the commit order. When the store itself failed (unreachable, a pool
//! timeout), the whole batch gets `unavailable` at once.
//!
//! More than one commit in flight: the writer is `lanes` such loops, each
//! with its own queue, and a room always goes to the same lane (a hash of its
//! name). So each room's appends still commit one batch after the other, in
//! the order the ChatServer queued them, while other rooms' batches commit
//! beside them on other connections. Lanes are to one node what several
//! nodes are to one database: the store's row locks already keep concurrent
//! batches apart (`store::postgres`). A store that commits one transaction at
//! a time (SQLite) asks for one lane ([`EventStore::max_concurrent_appends`]).

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::messages::{Committed, Origin};
use crate::metrics::Metrics;
use crate::protocol::ProtoError;
use crate::store::{AppendOp, AppendOutcome, AppendRequest, EventStore, StoreError};

/// One append and who is waiting for it.
pub struct AppendJob {
    pub request: AppendRequest,
    pub origin: Origin,
}

impl AppendJob {
    /// What the job counts against `WRITER_QUEUE_BYTES`: its texts and a
    /// fixed share for the rest.
    fn bytes(&self) -> usize {
        let r = &self.request;
        let op = match &r.op {
            AppendOp::Message {
                text,
                client_msg_id,
                mentions,
                ..
            } => {
                text.len()
                    + client_msg_id.as_ref().map_or(0, String::len)
                    + mentions.iter().map(|m| m.as_str().len()).sum::<usize>()
            }
            AppendOp::Edit { text, .. } => text.len(),
            AppendOp::React { emoji, .. } => emoji.len(),
            _ => 0,
        };
        r.room.as_str().len() + r.user.as_str().len() + op + 128
    }
}

/// The sending side of the writer's queues (one per lane), bounded in jobs
/// and, over all lanes, in bytes.
#[derive(Clone)]
pub struct WriterHandle {
    lanes: Vec<mpsc::Sender<AppendJob>>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl WriterHandle {
    /// Queues a job, or gives it back when the queue is full (in jobs or in
    /// bytes) or the writer gone.
    #[allow(clippy::result_large_err)] // the job is handed back, not boxed: no allocation on the hot path
    pub fn try_append(&self, job: AppendJob) -> Result<(), AppendJob> {
        let bytes = job.bytes();
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > self.max_bytes {
            return Err(job);
        }
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let lane = &self.lanes[lane_of(job.request.room.as_str(), self.lanes.len())];
        lane.try_send(job).map_err(|e| {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            }
        })
    }
}

/// The lane of a room: the same for every append of the room.
fn lane_of(room: &str, lanes: usize) -> usize {
    if lanes == 1 {
        return 0;
    }
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(room);
    (hash % lanes as u64) as usize
}

/// How much the writer's queues hold at most (jobs over all lanes, bytes
/// over all lanes), and how many lanes commit at once.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    pub jobs: usize,
    pub bytes: usize,
    pub lanes: usize,
}

/// Starts the writer's lanes. They end when every [`WriterHandle`] is
/// dropped and the queues are drained; the returned handle resolves then.
pub fn spawn(
    store: Arc<dyn EventStore>,
    node: String,
    queue: QueueBounds,
    batch_max: usize,
    sink: Recipient<Committed>,
    metrics: Arc<Metrics>,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let lanes = queue.lanes.clamp(1, store.max_concurrent_appends());
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<AppendJob>(queue.jobs.div_ceil(lanes));
        senders.push(tx);
        tasks.push(tokio::spawn(lane(
            rx,
            store.clone(),
            node.clone(),
            batch_max,
            queued_bytes.clone(),
            sink.clone(),
            metrics.clone(),
        )));
    }
    if lanes > 1 {
        log::info!("the event writer commits on {lanes} lanes");
    }
    let handle = WriterHandle {
        lanes: senders,
        queued_bytes,
        max_bytes: queue.bytes,
    };
    let task = tokio::spawn(async move {
        for task in tasks {
            if let Err(e) = task.await {
                log::error!("a writer lane failed: {e}");
            }
        }
    });
    (handle, task)
}

/// One lane: takes what queued, commits it as one batch, hands the outcomes
/// to the ChatServer and waits until it has taken them.
async fn lane(
    mut rx: mpsc::Receiver<AppendJob>,
    store: Arc<dyn EventStore>,
    node: String,
    batch_max: usize,
    queued_bytes: Arc<AtomicUsize>,
    sink: Recipient<Committed>,
    metrics: Arc<Metrics>,
) {
    let mut jobs = Vec::with_capacity(batch_max);
    loop {
        if rx.recv_many(&mut jobs, batch_max).await == 0 {
            break;
        }
        let taken: usize = jobs.iter().map(AppendJob::bytes).sum();
        queued_bytes.fetch_sub(taken, Ordering::Relaxed);
        let (origins, requests): (Vec<Origin>, Vec<AppendRequest>) =
            jobs.drain(..).map(|j| (j.origin, j.request)).unzip();
        let started = Instant::now();
        let outcomes = append_batch(store.as_ref(), &requests, &node, &metrics).await;
        metrics.batches.inc();
        metrics.batched_appends.add(requests.len() as u64);
        let took = started.elapsed();
        metrics.batch_seconds.add_duration(took);
        metrics.commit_latency.observe(took.as_secs_f64());
        metrics.batch_size.observe(requests.len() as f64);
        let jobs = origins
            .into_iter()
            .zip(requests)
            .zip(outcomes)
            .map(|((o, r), out)| (o, r, out))
            .collect();
        if sink.send(Committed { jobs }).await.is_err() {
            log::warn!("the chat server is gone; the writer stops");
            break;
        }
    }
}

/// Appends one batch and gives each request its outcome, in order.
async fn append_batch(
    store: &dyn EventStore,
    requests: &[AppendRequest],
    node: &str,
    metrics: &Metrics,
) -> Vec<Result<AppendOutcome, ProtoError>> {
    let e = match store.append(requests, node).await {
        Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
        Err(e) => e,
    };
    metrics.store_errors.inc();
    if requests.len() == 1 || !e.may_be_one_request() {
        log::error!("append of a batch of {} failed: {e}", requests.len());
        return requests
            .iter()
            .map(|_| Err(ProtoError::unavailable()))
            .collect();
    }
    log::warn!(
        "append of a batch of {} failed: {e}; appending its requests one at a time",
        requests.len()
    );
    one_at_a_time(store, requests, node, metrics).await
}

/// Appends each request in its own transaction, in order. A request that
/// fails alone gets `unavailable`; once one fails because the store itself
/// did ([`StoreError::may_be_one_request`] is false), the rest get it too
/// without being tried.
async fn one_at_a_time(
    store: &dyn EventStore,
    requests: &[AppendRequest],
    node: &str,
    metrics: &Metrics,
) -> Vec<Result<AppendOutcome, ProtoError>> {
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut down: Option<StoreError> = None;
    for req in requests {
        if down.is_some() {
            outcomes.push(Err(ProtoError::unavailable()));
            continue;
        }
        match store.append(std::slice::from_ref(req), node).await {
            Ok(one) => outcomes.push(one.into_iter().next().ok_or_else(ProtoError::unavailable)),
            Err(e) => {
                metrics.store_errors.inc();
                // Room and kind only: a message's text is not for the log.
                log::error!(
                    "append of one {} in room {} by {} failed alone: {e}",
                    AppendOp::command(&req.op),
                    req.room,
                    req.user
                );
                if !e.may_be_one_request() {
                    down = Some(e);
                }
                outcomes.push(Err(ProtoError::unavailable()));
            }
        }
    }
    if let Some(e) = down {
        log::error!("the store failed while appending one at a time ({e}); the rest of the batch is unavailable");
    }
    outcomes
}

#[cfg(test)]
mod tests {
    //! The real stores refuse nothing per request any more (U+0000, the one
    //! input PostgreSQL refused, is refused when a command is parsed), so
    //! these tests use a store that fails on demand. `tests/hostile.rs`
    //! proves the same end to end on PostgreSQL, with a CHECK constraint the
    //! test adds to its own database.

    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::protocol::{BanInfo, ErrorCode, HistoryRange, Role, RoomName, Seq, UserId};
    use crate::store::{Access, Page, Snapshot};

    /// Fails a batch holding the text "poison" as a database refuses a
    /// statement; fails everything as an unreachable store while `down`.
    /// Every other request "commits" as the next seq of one shared counter.
    #[derive(Default)]
    struct FakeStore {
        down: AtomicBool,
        /// Go down after this many appends (0: never).
        down_after: AtomicI64,
        seq: AtomicI64,
        calls: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl EventStore for FakeStore {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn epoch(&self) -> &str {
            "fake"
        }
        async fn append(
            &self,
            batch: &[AppendRequest],
            _node: &str,
        ) -> Result<Vec<AppendOutcome>, StoreError> {
            let calls = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(batch.len());
                calls.len() as i64
            };
            let after = self.down_after.load(Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) || (after > 0 && calls > after) {
                let timeout =
                    deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
                return Err(StoreError::Pool(timeout));
            }
            let poisoned = batch
                .iter()
                .any(|r| matches!(&r.op, AppendOp::Message { text, .. } if text == "poison"));
            if poisoned {
                return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                    Some("CHECK constraint failed: no_poison".into()),
                )));
            }
            Ok(batch
                .iter()
                .map(|_| AppendOutcome::AlreadyMember {
                    last_seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
                })
                .collect())
        }
        async fn snapshot(&self) -> Result<Snapshot, StoreError> {
            Ok(Snapshot::default())
        }
        async fn events(&self, _: &RoomName, _: HistoryRange) -> Result<Page, StoreError> {
            Ok(Page::default())
        }
        async fn access(&self, _: &RoomName, _: Option<&UserId>) -> Result<Access, StoreError> {
            Ok(Access::default())
        }
        async fn members(&self, _: &RoomName) -> Result<Vec<(UserId, Role, Seq)>, StoreError> {
            Ok(Vec::new())
        }
        async fn unread(&self, _: &UserId) -> Result<Vec<(RoomName, u64, u64)>, StoreError> {
            Ok(Vec::new())
        }
        async fn mark_read(
            &self,
            _: &RoomName,
            _: &UserId,
            _: Seq,
        ) -> Result<Option<(Seq, bool)>, StoreError> {
            Ok(None)
        }
        async fn bans(&self, _: &RoomName) -> Result<Vec<BanInfo>, StoreError> {
            Ok(Vec::new())
        }
        async fn set_block(&self, _: &UserId, _: &UserId, _: bool) -> Result<(), StoreError> {
            Ok(())
        }
        async fn all_events(&self) -> Result<Vec<crate::protocol::Event>, StoreError> {
            Ok(Vec::new())
        }
        async fn stats(&self) -> Result<(u64, u64), StoreError> {
            Ok((0, 0))
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn batch(texts: &[&str]) -> Vec<AppendRequest> {
        texts
            .iter()
            .map(|t| AppendRequest {
                room: RoomName::trusted("r".into()),
                user: UserId::trusted("u".into()),
                op: AppendOp::Message {
                    text: (*t).into(),
                    client_msg_id: None,
                    reply_to: None,
                    mentions: Vec::new(),
                },
            })
            .collect()
    }

    fn seqs(outcomes: &[Result<AppendOutcome, ProtoError>]) -> Vec<Option<i64>> {
        outcomes
            .iter()
            .map(|o| match o {
                Ok(AppendOutcome::AlreadyMember { last_seq }) => Some(*last_seq),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable);
                    None
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_refused_request_fails_alone_and_the_others_commit_in_order() {
        let store = FakeStore::default();
        let metrics = Metrics::new("t");
        let requests = batch(&["a", "b", "poison", "c", "d"]);
        let out = append_batch(&store, &requests, "n", &metrics).await;
        assert_eq!(seqs(&out), [Some(1), Some(2), None, Some(3), Some(4)]);
        // The batch, then each request alone, in order.
        assert_eq!(*store.calls.lock().unwrap(), [5, 1, 1, 1, 1, 1]);
        assert_eq!(metrics.store_errors.get(), 2);
    }

    #[tokio::test]
    async fn a_batch_that_commits_is_appended_once() {
        let store = FakeStore::default();
        let out = append_batch(&store, &batch(&["a", "b"]), "n", &Metrics::new("t")).await;
        assert_eq!(seqs(&out), [Some(1), Some(2)]);
        assert_eq!(*store.calls.lock().unwrap(), [2]);
    }

    #[tokio::test]
    async fn a_store_that_is_down_is_asked_once_per_batch() {
        let store = FakeStore::default();
        store.down.store(true, Ordering::SeqCst);
        let out = append_batch(
            &store,
            &batch(&["a", "poison", "b"]),
            "n",
            &Metrics::new("t"),
        )
        .await;
        assert_eq!(seqs(&out), [None, None, None]);
        assert_eq!(*store.calls.lock().unwrap(), [3]);
    }

    #[tokio::test]
    async fn a_store_that_goes_down_while_splitting_is_not_asked_again() {
        let store = FakeStore::default();
        // The batch fails (poison), the first single commits, then the store is gone.
        store.down_after.store(2, Ordering::SeqCst);
        let requests = batch(&["a", "poison", "b", "c", "d"]);
        let out = append_batch(&store, &requests, "n", &Metrics::new("t")).await;
        assert_eq!(seqs(&out), [Some(1), None, None, None, None]);
        assert_eq!(*store.calls.lock().unwrap(), [5, 1, 1]);
    }

    #[test]
    fn a_room_always_commits_on_the_same_lane_and_rooms_spread_over_all() {
        let mut used = [0usize; 4];
        for i in 0..1000 {
            let room = format!("room-{i}");
            let lane = lane_of(&room, 4);
            assert_eq!(lane, lane_of(&room, 4));
            used[lane] += 1;
        }
        assert!(used.iter().all(|n| *n > 150), "{used:?}");
        assert_eq!(lane_of("any", 1), 0);
    }

    #[tokio::test]
    async fn the_queue_refuses_past_its_bytes_and_gives_them_back_when_taken() {
        let (tx, mut rx) = mpsc::channel(100);
        let handle = WriterHandle {
            lanes: vec![tx],
            queued_bytes: Arc::default(),
            max_bytes: 3000,
        };
        let job = |text: &str| AppendJob {
            request: batch(&[text]).remove(0),
            origin: Origin::Http(tokio::sync::oneshot::channel().0),
        };
        let big = "x".repeat(1200);
        assert!(handle.try_append(job(&big)).is_ok());
        assert!(handle.try_append(job(&big)).is_ok());
        let refused = handle.try_append(job(&big));
        assert!(refused.is_err(), "the third passes 3,000 bytes");
        assert!(
            handle.try_append(job("small")).is_ok(),
            "a small one still fits"
        );
        // What the writer takes frees its bytes.
        let taken = rx.recv().await.unwrap();
        handle
            .queued_bytes
            .fetch_sub(taken.bytes(), Ordering::Relaxed);
        assert!(handle.try_append(job(&big)).is_ok());
    }
}
