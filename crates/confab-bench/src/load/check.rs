//! What the load run counts and how it judges what it counted: the step's counters and
//! latency histograms, each connection's `seq` continuity and per-sender order, the step's
//! figures, and the rules that pass or fail a step (`--find-max`) and a run (`--check`).
//!
//! Every receiver checks the room's `seq` continuity (gaps = lost events, `seq <= last` =
//! duplicates) and per-sender order, and records the end-to-end latency of measured
//! messages. Expected deliveries are, per acked measured message, its room's member count.
//! With `--dialect actix` there is no room seq: every receiver checks that each sender's
//! `sender_seq` goes up by one instead (a gap is lost, a repeat a duplicate, lower out of
//! order), a message counts as acked once written, and is expected `members - 1` times
//! (the sender gets no copy).
//! A step is sustained unless it shows any loss, gap, duplicate or reordering; p99 over the
//! limit; acks below 95 % of sends; or the bench sending under 90 % of the target rate.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use anyhow::Result;
use hdrhistogram::Histogram;

use super::client::Payload;
use super::report::{LatencyReport, RunReport, StepReport};
use super::MAX_CLIENTS;
use crate::util::lock;

/// Counters of the current step, updated by every client task.
pub(super) struct StepStats {
    /// Messages sent in the measured window.
    pub(super) sent: AtomicU64,
    /// Acks of measured messages.
    pub(super) acked: AtomicU64,
    /// Error replies to measured messages.
    pub(super) refused: AtomicU64,
    /// Sum over acked measured messages of their room's member count.
    pub(super) expected: AtomicU64,
    /// Deliveries of measured messages of this step.
    pub(super) received: AtomicU64,
    /// Deliveries of any bench message that arrived during the measured window.
    pub(super) in_window: AtomicU64,
    pub(super) seq_gaps: AtomicU64,
    pub(super) duplicated: AtomicU64,
    pub(super) out_of_order: AtomicU64,
    pub(super) errors: Mutex<BTreeMap<String, u64>>,
    /// End-to-end latency of measured messages, from the moment they were written.
    pub(super) latency_us: Mutex<Histogram<u64>>,
    /// How late senders wrote measured messages against their schedule.
    pub(super) send_lag_us: Mutex<Histogram<u64>>,
}

impl StepStats {
    pub(super) fn new() -> Result<Self> {
        let zero = || AtomicU64::new(0);
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).map(Mutex::new);
        Ok(Self {
            sent: zero(),
            acked: zero(),
            refused: zero(),
            expected: zero(),
            received: zero(),
            in_window: zero(),
            seq_gaps: zero(),
            duplicated: zero(),
            out_of_order: zero(),
            errors: Mutex::default(),
            latency_us: histogram()?,
            send_lag_us: histogram()?,
        })
    }

    pub(super) fn reset(&self) {
        for counter in [
            &self.sent,
            &self.acked,
            &self.refused,
            &self.expected,
            &self.received,
            &self.in_window,
            &self.seq_gaps,
            &self.duplicated,
            &self.out_of_order,
        ] {
            counter.store(0, Relaxed);
        }
        lock(&self.errors).clear();
        lock(&self.latency_us).reset();
        lock(&self.send_lag_us).reset();
    }

    pub(super) fn count_error(&self, code: &str) {
        *lock(&self.errors).entry(code.to_owned()).or_default() += 1;
    }

    /// Whether every measured message has its reply and every expected delivery is in.
    pub(super) fn drained(&self) -> bool {
        let replies = self.acked.load(Relaxed) + self.refused.load(Relaxed);
        replies >= self.sent.load(Relaxed)
            && self.received.load(Relaxed) >= self.expected.load(Relaxed)
    }

    /// The step's figures once it has drained (`sustained` is left false: see [`sustained`]).
    pub(super) fn figures(
        &self,
        step: u64,
        rate: f64,
        measured_s: f64,
        server_cpu_s: Option<f64>,
        bench_cpu_s: Option<f64>,
    ) -> StepReport {
        let errors = lock(&self.errors).clone();
        let latency = {
            let histogram = lock(&self.latency_us);
            let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
            LatencyReport {
                samples: histogram.len(),
                p50_ms: ms(0.5),
                p90_ms: ms(0.9),
                p99_ms: ms(0.99),
                p999_ms: ms(0.999),
                max_ms: histogram.max() as f64 / 1000.0,
            }
        };
        let (send_lag_p99_ms, send_lag_max_ms) = {
            let histogram = lock(&self.send_lag_us);
            (
                histogram.value_at_quantile(0.99) as f64 / 1000.0,
                histogram.max() as f64 / 1000.0,
            )
        };
        let (sent, acked) = (self.sent.load(Relaxed), self.acked.load(Relaxed));
        let (expected, received) = (self.expected.load(Relaxed), self.received.load(Relaxed));
        let in_window = self.in_window.load(Relaxed);
        StepReport {
            step,
            target_rate: rate,
            measured_s,
            sent,
            send_rate: sent as f64 / measured_s,
            acked,
            error_total: errors.values().sum(),
            errors,
            expected_deliveries: expected,
            received_deliveries: received,
            lost: expected.saturating_sub(received),
            seq_gaps: self.seq_gaps.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            out_of_order: self.out_of_order.load(Relaxed),
            deliveries_per_s: in_window as f64 / measured_s,
            latency,
            send_lag_p99_ms,
            send_lag_max_ms,
            server_cpu_s,
            server_cpu_us_per_delivery: server_cpu_s
                .filter(|_| in_window > 0)
                .map(|s| s * 1e6 / in_window as f64),
            bench_cpu_s,
            sustained: false,
        }
    }
}

/// One connection's place in its room: the last room `seq` it was given and the last
/// `sender_seq` of each sender of the room (the only check with `--dialect actix`).
#[derive(Default)]
pub(super) struct Continuity {
    /// Last room seq given to this connection; `None` until the join ack.
    last_seq: Option<u64>,
    /// Last sender_seq seen per sender of this room (sender k sits at k / rooms).
    last_by_sender: Vec<u64>,
}

impl Continuity {
    /// The join ack's seq: where checking starts.
    pub(super) fn start(&mut self, seq: u64) {
        self.last_seq = Some(seq);
    }

    /// Counts the events missing before `seq` as gaps, or the event as a duplicate. True if
    /// the event is new; false for a duplicate or an event before the join ack.
    pub(super) fn check_seq(&mut self, seq: Option<u64>, stats: &StepStats) -> bool {
        let (Some(seq), Some(last)) = (seq, self.last_seq) else {
            return false; // before our join ack: the join ack's seq is where checking starts
        };
        if seq <= last {
            stats.duplicated.fetch_add(1, Relaxed);
            return false;
        }
        if seq > last + 1 {
            stats.seq_gaps.fetch_add(seq - last - 1, Relaxed);
        }
        self.last_seq = Some(seq);
        true
    }

    /// Counts a message of one of this room's senders that comes before one already seen
    /// from the same sender.
    pub(super) fn check_order(
        &mut self,
        payload: &Payload,
        room_index: usize,
        rooms: usize,
        stats: &StepStats,
    ) {
        if let Some(last) = self.last_of_sender(payload, room_index, rooms) {
            if payload.sender_seq < *last {
                stats.out_of_order.fetch_add(1, Relaxed);
            } else {
                *last = payload.sender_seq;
            }
        }
    }

    /// The `--dialect actix` check, with no room seq to go by: each sender's sender_seq
    /// (1, 2, ... from the first message, all sent after every client joined) must go up
    /// by one. A jump counts the messages skipped as gaps, a repeat as a duplicate, a lower
    /// one as out of order. True unless the message is a duplicate or not of this room.
    pub(super) fn check_sender_seq(
        &mut self,
        payload: &Payload,
        room_index: usize,
        rooms: usize,
        stats: &StepStats,
    ) -> bool {
        let Some(last) = self.last_of_sender(payload, room_index, rooms) else {
            return false;
        };
        let seq = payload.sender_seq;
        if seq == *last {
            stats.duplicated.fetch_add(1, Relaxed);
            return false;
        }
        if seq < *last {
            stats.out_of_order.fetch_add(1, Relaxed);
        } else {
            if seq > *last + 1 {
                stats.seq_gaps.fetch_add(seq - *last - 1, Relaxed);
            }
            *last = seq;
        }
        true
    }

    /// The last sender_seq seen from the payload's sender, if it is a sender of this room.
    fn last_of_sender(
        &mut self,
        payload: &Payload,
        room_index: usize,
        rooms: usize,
    ) -> Option<&mut u64> {
        if payload.sender % rooms != room_index || payload.sender / rooms >= MAX_CLIENTS {
            return None;
        }
        let slot = payload.sender / rooms;
        if self.last_by_sender.len() <= slot {
            self.last_by_sender.resize(slot + 1, 0);
        }
        Some(&mut self.last_by_sender[slot])
    }
}

/// Whether a step kept up at its target rate (the `--find-max` rule).
pub(super) fn sustained(row: &StepReport, p99_limit_ms: f64) -> bool {
    row.send_rate >= 0.9 * row.target_rate
        && row.lost + row.seq_gaps + row.duplicated + row.out_of_order == 0
        && row.latency.p99_ms <= p99_limit_ms
        && row.acked as f64 >= 0.95 * row.sent as f64
}

/// Why a run fails `--check`: empty if it passed.
pub(super) fn check_failures(report: &RunReport) -> Vec<String> {
    let mut failures = Vec::new();
    let connect = &report.connect;
    if connect.failed > 0 || connect.join_failed > 0 {
        failures.push(format!(
            "{} connections and {} joins failed",
            connect.failed, connect.join_failed
        ));
    }
    for row in &report.steps {
        for (what, n) in [
            ("lost", row.lost),
            ("seq gaps", row.seq_gaps),
            ("duplicated", row.duplicated),
            ("out of order", row.out_of_order),
            ("errors", row.error_total),
        ] {
            if n > 0 {
                failures.push(format!("step {}: {n} {what}", row.step));
            }
        }
        if row.received_deliveries == 0 {
            failures.push(format!("step {}: nothing was delivered", row.step));
        }
    }
    if report.steps.is_empty() {
        failures.push("no step completed".to_owned());
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(sender: usize, sender_seq: u64) -> Payload {
        Payload {
            sender,
            sender_seq,
            send_ns: 0,
            measured: true,
            step: 0,
        }
    }

    #[test]
    fn actix_continuity_counts_gaps_duplicates_and_reordering_per_sender() {
        let stats = StepStats::new().unwrap();
        let mut continuity = Continuity::default();
        // Room 1 of 10: senders 1 and 11.
        let mut check =
            |sender, seq| continuity.check_sender_seq(&payload(sender, seq), 1, 10, &stats);
        assert!(check(1, 1) && check(11, 1) && check(1, 2) && check(11, 2));
        assert!(check(1, 5)); // 3 and 4 missing
        assert!(!check(1, 5)); // a repeat
        assert!(check(1, 4)); // late
        assert!(!check(2, 1)); // not of this room
        assert_eq!(stats.seq_gaps.load(Relaxed), 2);
        assert_eq!(stats.duplicated.load(Relaxed), 1);
        assert_eq!(stats.out_of_order.load(Relaxed), 1);
    }
}
