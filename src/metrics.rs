//! Counters and gauges, rendered in Prometheus' text format at `/metrics`.
//! Lock-free atomics only: they are touched on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds a duration in microseconds (rendered as seconds).
    pub fn add_duration(&self, d: Duration) {
        self.add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric a node exports.
#[derive(Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_total: Counter,
    pub commands: Counter,
    pub command_errors: Counter,
    pub rate_limited: Counter,
    pub evictions: Counter,
    pub events_committed: Counter,
    pub deliveries: Counter,
    pub batches: Counter,
    pub batched_appends: Counter,
    /// Microseconds spent in append transactions.
    pub batch_seconds: Counter,
    pub store_errors: Counter,
    pub replays: Counter,
    pub replayed_events: Counter,
    pub gap_repairs: Counter,
    pub bus_published: Counter,
    pub bus_received: Counter,
    pub bus_errors: Counter,
    pub rooms: Gauge,
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self, node: &str) -> String {
        let mut out = String::with_capacity(4096);
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP confab_{name} {help}");
            let _ = writeln!(out, "# TYPE confab_{name} {kind}");
            let _ = writeln!(out, "confab_{name}{{node=\"{node}\"}} {value}");
        };
        let c = |c: &Counter| c.get().to_string();
        let g = |g: &Gauge| g.get().to_string();
        line(
            "connections",
            "gauge",
            "Open WebSocket connections.",
            g(&self.connections),
        );
        line(
            "connections_total",
            "counter",
            "WebSocket connections accepted.",
            c(&self.connections_total),
        );
        line(
            "commands_total",
            "counter",
            "Commands received.",
            c(&self.commands),
        );
        line(
            "command_errors_total",
            "counter",
            "Commands answered with an error.",
            c(&self.command_errors),
        );
        line(
            "rate_limited_total",
            "counter",
            "Commands refused by the rate limit.",
            c(&self.rate_limited),
        );
        line(
            "evictions_total",
            "counter",
            "Slow consumers evicted (close 4000).",
            c(&self.evictions),
        );
        line(
            "events_committed_total",
            "counter",
            "Events committed by this node.",
            c(&self.events_committed),
        );
        line(
            "deliveries_total",
            "counter",
            "Event frames queued to local sockets.",
            c(&self.deliveries),
        );
        line(
            "append_batches_total",
            "counter",
            "Append transactions.",
            c(&self.batches),
        );
        line(
            "append_batched_total",
            "counter",
            "Appends handled in batches.",
            c(&self.batched_appends),
        );
        line(
            "append_seconds_total",
            "counter",
            "Time spent in append transactions.",
            format!("{:.6}", self.batch_seconds.get() as f64 / 1e6),
        );
        line(
            "store_errors_total",
            "counter",
            "Failed store operations.",
            c(&self.store_errors),
        );
        line(
            "replays_total",
            "counter",
            "Joins with since that replayed events.",
            c(&self.replays),
        );
        line(
            "replayed_events_total",
            "counter",
            "Events sent by replays.",
            c(&self.replayed_events),
        );
        line(
            "gap_repairs_total",
            "counter",
            "Gaps in a room's seq repaired from the store.",
            c(&self.gap_repairs),
        );
        line(
            "bus_published_total",
            "counter",
            "Events published on the bus.",
            c(&self.bus_published),
        );
        line(
            "bus_received_total",
            "counter",
            "Events received from peers on the bus.",
            c(&self.bus_received),
        );
        line(
            "bus_errors_total",
            "counter",
            "Bus publish or subscribe failures.",
            c(&self.bus_errors),
        );
        line(
            "rooms",
            "gauge",
            "Rooms known to this node.",
            g(&self.rooms),
        );
        out
    }
}
