//! A node's metrics, on `prometheus-client`, exposed at `/metrics` in the
//! OpenMetrics text format ([`Metrics::render`], served as [`CONTENT_TYPE`]).
//!
//! Owns: the metric handles the rest of the server bumps on the hot path
//! (counters and gauges are single atomics; a histogram observation takes a
//! short uncontended lock), their series names and HELP texts, and the
//! node's own [`Registry`].
//!
//! Must not: use a global or process-wide registry or recorder (two nodes run
//! inside one test process and must not share series), do I/O, or hand-write
//! exposition text — `prometheus_client::encoding::text::encode` writes it,
//! including the escaping of label values such as the `node` label.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PromGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as PromHistogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::{Command, ErrorCode};

/// What [`Metrics::render`] produces: `encode` writes OpenMetrics 1.0 text
/// (ending in `# EOF`), not Prometheus' 0.0.4 text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A monotonically increasing count. Clones share the value.
#[derive(Clone, Debug, Default)]
pub struct Counter(PromCounter<u64>);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A monotonically increasing total of time, exported in seconds.
#[derive(Clone, Debug, Default)]
pub struct SecondsCounter(PromCounter<f64, std::sync::atomic::AtomicU64>);

impl SecondsCounter {
    pub fn add_duration(&self, d: Duration) {
        self.0.inc_by(d.as_secs_f64());
    }
    /// The total so far, in seconds.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// A value that goes up and down. Clones share the value.
#[derive(Clone, Debug, Default)]
pub struct Gauge(PromGauge<i64>);

impl Gauge {
    pub fn inc(&self) {
        self.0.inc();
    }
    pub fn dec(&self) {
        self.0.dec();
    }
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A distribution over fixed buckets. Clones share the buckets.
#[derive(Clone, Debug)]
pub struct Histogram(PromHistogram);

impl Histogram {
    fn new(buckets: impl IntoIterator<Item = f64>) -> Self {
        Self(PromHistogram::new(buckets))
    }
    pub fn observe(&self, v: f64) {
        self.0.observe(v);
    }
    /// Observes a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// Seconds, 50 µs · 2^k up to ~13 s (19 buckets, then +Inf).
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(50e-6, 2.0, 19)
}

/// Every metric a node exports, and the registry they are exported from.
pub struct Metrics {
    pub connections: Gauge,
    /// WebSocket connections accepted (series `confab_connections_accepted_total`).
    pub connections_total: Counter,
    pub commands: Counter,
    pub command_errors: Counter,
    pub rate_limited: Counter,
    pub evictions: Counter,
    pub events_committed: Counter,
    pub deliveries: Counter,
    pub batches: Counter,
    pub batched_appends: Counter,
    /// Time spent in append transactions (series `confab_append_seconds_total`).
    pub batch_seconds: SecondsCounter,
    pub store_errors: Counter,
    pub replays: Counter,
    pub replays_from_memory: Counter,
    pub replayed_events: Counter,
    pub gap_repairs: Counter,
    pub bus_published: Counter,
    pub bus_received: Counter,
    pub bus_errors: Counter,
    pub rooms: Gauge,
    /// Seconds from a command being read to its ack being handed to the socket.
    pub ack_latency: Histogram,
    /// Seconds per append transaction.
    pub commit_latency: Histogram,
    /// Appends per append transaction.
    pub batch_size: Histogram,
    /// Events sent by one replay.
    pub replay_size: Histogram,
    /// Commands received, by `command` (`invalid` when the frame is not one):
    /// a series per command type, made at start, so that counting is a map
    /// lookup and an atomic add, with no label set built per frame.
    commands_by_type: HashMap<&'static str, PromCounter<u64>>,
    /// Commands answered with an error, by `code`, made the same way.
    errors_by_code: HashMap<&'static str, PromCounter<u64>>,
    registry: Registry,
}

/// `Registry::register` appends a `.` to every HELP text; the texts below
/// are written as exported, so drop theirs.
fn help(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

impl Metrics {
    /// Counts a command received, by its type.
    pub fn command(&self, command: &'static str) {
        self.commands.inc();
        if let Some(c) = self.commands_by_type.get(command) {
            c.inc();
        }
    }

    /// Counts a command answered with an error, by its code.
    pub fn command_error(&self, code: ErrorCode) {
        self.command_errors.inc();
        if let Some(c) = self.errors_by_code.get(code.as_str()) {
            c.inc();
        }
    }

    /// A fresh set of metrics in a registry of its own: every series is
    /// prefixed `confab_` and labelled `node="<node>"`.
    pub fn new(node: &str) -> Metrics {
        let mut registry = Registry::with_prefix_and_labels(
            "confab",
            [(Cow::Borrowed("node"), Cow::Owned(node.to_owned()))].into_iter(),
        );
        let mut m = Metrics {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            commands: Counter::default(),
            command_errors: Counter::default(),
            rate_limited: Counter::default(),
            evictions: Counter::default(),
            events_committed: Counter::default(),
            deliveries: Counter::default(),
            batches: Counter::default(),
            batched_appends: Counter::default(),
            batch_seconds: SecondsCounter::default(),
            store_errors: Counter::default(),
            replays: Counter::default(),
            replays_from_memory: Counter::default(),
            replayed_events: Counter::default(),
            gap_repairs: Counter::default(),
            bus_published: Counter::default(),
            bus_received: Counter::default(),
            bus_errors: Counter::default(),
            rooms: Gauge::default(),
            ack_latency: Histogram::new(latency_buckets()),
            commit_latency: Histogram::new(latency_buckets()),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            replay_size: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            commands_by_type: HashMap::new(),
            errors_by_code: HashMap::new(),
            registry: Registry::default(),
        };
        let by_type = Family::<Vec<(&'static str, &'static str)>, PromCounter<u64>>::default();
        let by_code = Family::<Vec<(&'static str, &'static str)>, PromCounter<u64>>::default();
        for name in Command::types().chain(["invalid"]) {
            let c = by_type.get_or_create(&vec![("command", name)]).clone();
            m.commands_by_type.insert(name, c);
        }
        for code in ErrorCode::ALL {
            let c = by_code
                .get_or_create(&vec![("code", code.as_str())])
                .clone();
            m.errors_by_code.insert(code.as_str(), c);
        }
        registry.register(
            "commands_by_type",
            help("Commands received, by type (invalid: not a command)."),
            by_type,
        );
        registry.register(
            "command_errors_by_code",
            help("Commands answered with an error, by error code."),
            by_code,
        );

        let gauges = [
            ("connections", "Open WebSocket connections.", &m.connections),
            ("rooms", "Rooms known to this node.", &m.rooms),
        ];
        for (name, text, gauge) in gauges {
            registry.register(name, help(text), gauge.0.clone());
        }

        // Counter names go without `_total`: the encoder appends it.
        let counters = [
            // Not `connections`: in OpenMetrics the counter `…_total` and the
            // gauge `confab_connections` would be one family name, which is
            // invalid, so this counter is `confab_connections_accepted_total`.
            (
                "connections_accepted",
                "WebSocket connections accepted.",
                &m.connections_total,
            ),
            ("commands", "Commands received.", &m.commands),
            (
                "command_errors",
                "Commands answered with an error.",
                &m.command_errors,
            ),
            (
                "rate_limited",
                "Commands refused by the rate limit.",
                &m.rate_limited,
            ),
            (
                "evictions",
                "Slow consumers evicted (close 4000).",
                &m.evictions,
            ),
            (
                "events_committed",
                "Events committed by this node.",
                &m.events_committed,
            ),
            (
                "deliveries",
                "Event frames queued to local sockets.",
                &m.deliveries,
            ),
            ("append_batches", "Append transactions.", &m.batches),
            (
                "append_batched",
                "Appends handled in batches.",
                &m.batched_appends,
            ),
            ("store_errors", "Failed store operations.", &m.store_errors),
            (
                "replays",
                "Joins with since that replayed events.",
                &m.replays,
            ),
            (
                "replays_from_memory",
                "Replays served from the recent events in memory, without a store read.",
                &m.replays_from_memory,
            ),
            (
                "replayed_events",
                "Events sent by replays.",
                &m.replayed_events,
            ),
            (
                "gap_repairs",
                "Gaps in a room's seq repaired from the store.",
                &m.gap_repairs,
            ),
            (
                "bus_published",
                "Events published on the bus.",
                &m.bus_published,
            ),
            (
                "bus_received",
                "Events received from peers on the bus.",
                &m.bus_received,
            ),
            (
                "bus_errors",
                "Bus publish or subscribe failures.",
                &m.bus_errors,
            ),
        ];
        for (name, text, counter) in counters {
            registry.register(name, help(text), counter.0.clone());
        }
        registry.register_with_unit(
            "append",
            help("Time spent in append transactions."),
            Unit::Seconds,
            m.batch_seconds.0.clone(),
        );

        let histograms = [
            (
                "ack_latency",
                "Time from reading a command to handing its ack to the socket.",
                Some(Unit::Seconds),
                &m.ack_latency,
            ),
            (
                "commit_latency",
                "Duration of append transactions.",
                Some(Unit::Seconds),
                &m.commit_latency,
            ),
            (
                "append_batch_size",
                "Appends per append transaction.",
                None,
                &m.batch_size,
            ),
            (
                "replay_size",
                "Events sent by one replay.",
                None,
                &m.replay_size,
            ),
        ];
        for (name, text, unit, histogram) in histograms {
            match unit {
                Some(unit) => {
                    registry.register_with_unit(name, help(text), unit, histogram.0.clone())
                }
                None => registry.register(name, help(text), histogram.0.clone()),
            }
        }

        // `confab_build_info{node="…",version="…"} 1`
        registry.register(
            "build",
            help("The running build."),
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );

        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition, `# EOF` included; serve it as
    /// [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail, and no metric here refuses to encode.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }
}

#[cfg(test)]
mod tests;
