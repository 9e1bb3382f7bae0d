//! The load run's report: what it holds (serialised as is for `--json`) and how it is
//! printed as text.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Dialect;

#[derive(Serialize, Default, Clone)]
pub(super) struct ConnectReport {
    pub(super) attempted: usize,
    pub(super) made: usize,
    pub(super) failed: usize,
    pub(super) elapsed_s: f64,
    pub(super) connects_per_s: f64,
    pub(super) failures: BTreeMap<String, u64>,
    pub(super) joined: usize,
    pub(super) join_failed: usize,
    pub(super) join_failures: BTreeMap<String, u64>,
    pub(super) setup_s: f64,
}

#[derive(Serialize)]
pub(super) struct MemoryReport {
    pub(super) pids: Vec<u32>,
    pub(super) rss_before_kib: u64,
    pub(super) rss_after_kib: u64,
    pub(super) rss_delta_kib: i64,
    pub(super) rss_per_connection_kib: f64,
}

#[derive(Serialize, Default)]
pub(super) struct LatencyReport {
    pub(super) samples: u64,
    pub(super) p50_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) max_ms: f64,
}

#[derive(Serialize)]
pub(super) struct StepReport {
    pub(super) step: u64,
    pub(super) target_rate: f64,
    pub(super) measured_s: f64,
    pub(super) sent: u64,
    pub(super) send_rate: f64,
    pub(super) acked: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) error_total: u64,
    pub(super) expected_deliveries: u64,
    pub(super) received_deliveries: u64,
    /// expected - received, not below 0.
    pub(super) lost: u64,
    /// Events missing from some connection's seq sequence (any event, any time in the step);
    /// with `--dialect actix`, messages missing from some sender's sender_seq sequence.
    pub(super) seq_gaps: u64,
    pub(super) duplicated: u64,
    pub(super) out_of_order: u64,
    pub(super) deliveries_per_s: f64,
    pub(super) latency: LatencyReport,
    /// How late senders were against their open-loop schedule (bench or socket backpressure).
    pub(super) send_lag_p99_ms: f64,
    pub(super) send_lag_max_ms: f64,
    pub(super) server_cpu_s: Option<f64>,
    pub(super) server_cpu_us_per_delivery: Option<f64>,
    pub(super) bench_cpu_s: Option<f64>,
    pub(super) sustained: bool,
}

#[derive(Serialize, Default)]
pub(super) struct RunReport {
    pub(super) run_id: String,
    /// The protocol the server was spoken to in (`--dialect`).
    pub(super) dialect: Dialect,
    pub(super) urls: Vec<String>,
    pub(super) clients: usize,
    pub(super) rooms: usize,
    pub(super) senders: usize,
    pub(super) active_senders: usize,
    pub(super) size: usize,
    pub(super) warmup_s: f64,
    pub(super) duration_s: f64,
    pub(super) connect: ConnectReport,
    pub(super) server_memory: Option<MemoryReport>,
    /// The bench's own RSS once every client has joined.
    pub(super) bench_rss_kib: Option<u64>,
    pub(super) steps: Vec<StepReport>,
    pub(super) find_max: bool,
    pub(super) max_sustained_rate: Option<f64>,
    pub(super) max_sustained_deliveries_per_s: Option<f64>,
    pub(super) timed_out: bool,
    pub(super) failure: Option<String>,
    pub(super) check_failures: Option<Vec<String>>,
}

/// The report as text on stdout.
pub(super) fn print_report(report: &RunReport) {
    let c = &report.connect;
    println!(
        "confab-bench run {} -> {}{}",
        report.run_id,
        report.urls.join(", "),
        match report.dialect {
            Dialect::Confab => "",
            Dialect::Actix =>
                " (dialect actix: acked = written, gaps = per-sender sender_seq gaps)",
        }
    );
    println!(
        "  {} clients, {} rooms, {} senders ({} active), {} B messages, warmup {} s, measured {} s per step",
        report.clients, report.rooms, report.senders, report.active_senders, report.size, report.warmup_s, report.duration_s
    );
    println!(
        "connections: {} made, {} failed in {:.2} s ({:.0}/s); joined {}, join failures {}; setup {:.2} s",
        c.made, c.failed, c.elapsed_s, c.connects_per_s, c.joined, c.join_failed, c.setup_s
    );
    for (reason, n) in c.failures.iter().chain(&c.join_failures) {
        println!("  failure: {reason} x{n}");
    }
    if let Some(kib) = report.bench_rss_kib {
        println!("bench RSS after setup: {kib} KiB");
    }
    if let Some(m) = &report.server_memory {
        println!(
            "server RSS {:?}: {} KiB before, {} KiB after setup, delta {} KiB = {:.2} KiB per connection",
            m.pids, m.rss_before_kib, m.rss_after_kib, m.rss_delta_kib, m.rss_per_connection_kib
        );
    }
    const COLUMNS: [(&str, usize); 17] = [
        ("step", 4),
        ("rate/s", 9),
        ("sent", 9),
        ("acked", 9),
        ("errors", 6),
        ("expected", 10),
        ("received", 10),
        ("lost", 6),
        ("gaps", 6),
        ("dup", 4),
        ("ooo", 4),
        ("deliv/s", 9),
        ("p50ms", 8),
        ("p99ms", 8),
        ("p99.9ms", 8),
        ("maxms", 8),
        ("us/deliv", 8),
    ];
    let print_row = |cells: [String; 17]| {
        let row: Vec<String> = COLUMNS
            .iter()
            .zip(cells)
            .map(|((_, w), c)| format!("{c:>w$}"))
            .collect();
        println!("{}", row.join(" "));
    };
    if !report.steps.is_empty() {
        print_row(COLUMNS.map(|(name, _)| name.to_owned()));
    }
    let opt = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let secs = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.2} s"));
    for r in &report.steps {
        let l = &r.latency;
        print_row([
            r.step.to_string(),
            format!("{:.0}", r.target_rate),
            r.sent.to_string(),
            r.acked.to_string(),
            r.error_total.to_string(),
            r.expected_deliveries.to_string(),
            r.received_deliveries.to_string(),
            r.lost.to_string(),
            r.seq_gaps.to_string(),
            r.duplicated.to_string(),
            r.out_of_order.to_string(),
            format!("{:.0}", r.deliveries_per_s),
            format!("{:.2}", l.p50_ms),
            format!("{:.2}", l.p99_ms),
            format!("{:.2}", l.p999_ms),
            format!("{:.2}", l.max_ms),
            opt(r.server_cpu_us_per_delivery),
        ]);
        println!(
            "     {}p90 {:.2} ms over {} samples; sent {:.0}/s, send lag p99 {:.2} ms (max {:.2}); \
             CPU over {:.2} s: server {}, bench {}",
            if report.find_max && !r.sustained { "NOT SUSTAINED; " } else { "" },
            l.p90_ms, l.samples, r.send_rate, r.send_lag_p99_ms, r.send_lag_max_ms, r.measured_s,
            secs(r.server_cpu_s), secs(r.bench_cpu_s)
        );
        if !r.errors.is_empty() {
            println!("     errors: {:?}", r.errors);
        }
    }
    if report.find_max {
        match report.max_sustained_rate {
            Some(rate) => println!(
                "max sustained: {rate:.0} msg/s ({:.0} deliveries/s)",
                report.max_sustained_deliveries_per_s.unwrap_or_default()
            ),
            None => println!("max sustained: none (the first step already failed)"),
        }
    }
    if report.timed_out {
        println!("TIMED OUT: the hard deadline was reached");
    }
    if let Some(failures) = &report.check_failures {
        if failures.is_empty() {
            println!("CHECK PASSED");
        } else {
            println!("CHECK FAILED: {}", failures.join("; "));
        }
    }
}
