//! The event writer: the only writer of the event tables.
//!
//! It takes appends from a bounded queue and commits everything that queued up
//! while the previous transaction ran as one batch (group commit: one
//! transaction when idle, large batches under load). Each batch's outcomes go
//! back to the ChatServer as one [`Committed`] message, in commit order, and
//! the writer waits until the ChatServer has taken it, so no queue between
//! them grows without bound.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::messages::{Committed, Origin};
use crate::metrics::Metrics;
use crate::protocol::ProtoError;
use crate::store::{AppendOutcome, AppendRequest, EventStore};

/// One append and who is waiting for it.
pub struct AppendJob {
    pub request: AppendRequest,
    pub origin: Origin,
}

/// The sending side of the writer's queue.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<AppendJob>,
}

impl WriterHandle {
    /// Queues a job, or gives it back when the queue is full or the writer gone.
    #[allow(clippy::result_large_err)] // the job is handed back, not boxed: no allocation on the hot path
    pub fn try_append(&self, job: AppendJob) -> Result<(), AppendJob> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
        })
    }
}

/// Starts the writer task. It ends when every [`WriterHandle`] is dropped and
/// the queue is drained; the returned handle resolves then.
pub fn spawn(
    store: Arc<dyn EventStore>,
    node: String,
    queue: usize,
    batch_max: usize,
    sink: Recipient<Committed>,
    metrics: Arc<Metrics>,
) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<AppendJob>(queue);
    let task = tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(batch_max);
        loop {
            if rx.recv_many(&mut jobs, batch_max).await == 0 {
                break;
            }
            let (origins, requests): (Vec<Origin>, Vec<AppendRequest>) =
                jobs.drain(..).map(|j| (j.origin, j.request)).unzip();
            let started = Instant::now();
            let outcomes: Vec<Result<AppendOutcome, ProtoError>> =
                match store.append(&requests, &node).await {
                    Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                    Err(e) => {
                        log::error!("append of a batch of {} failed: {e}", requests.len());
                        metrics.store_errors.inc();
                        requests
                            .iter()
                            .map(|_| Err(ProtoError::unavailable()))
                            .collect()
                    }
                };
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
    });
    (WriterHandle { tx }, task)
}
