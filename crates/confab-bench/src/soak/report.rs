//! The soak's report: one line per sample while it runs, and the summary at the end (RSS at
//! the start, after 1 minute, at the end and at most; whether memory levelled off; the
//! counters). Serialised as is for `--json`.
//!
//! Memory "levelled off" when the RSS at the end is within 20 % or 4 MiB of the highest
//! RSS sampled between 1 and 2 minutes in: what grew in the first minute (allocator pools,
//! SQLite's page cache, buffers reaching their working size) is allowed, steady growth
//! after it is not.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use super::{SoakArgs, Tally};
use crate::util::lock;

#[derive(Serialize, Default, Clone)]
pub(super) struct Sample {
    pub(super) elapsed_s: f64,
    pub(super) rss_kib: Option<u64>,
    /// RssAnon: heap and stacks.
    pub(super) rss_anon_kib: Option<u64>,
    pub(super) fds: Option<u64>,
    pub(super) threads: Option<u64>,
    /// The node's `confab_connections` gauge.
    pub(super) connections: Option<u64>,
    /// The node's `confab_evictions_total`.
    pub(super) node_evictions: Option<u64>,
    /// Connections the soak holds open.
    pub(super) open: i64,
    pub(super) sent: u64,
    pub(super) acked: u64,
    /// 4000 closes the slow readers were given.
    pub(super) evictions: u64,
    pub(super) cut: u64,
    pub(super) resumes: u64,
    pub(super) churned: u64,
    pub(super) errors: u64,
    pub(super) gaps: u64,
    pub(super) duplicates: u64,
}

#[derive(Serialize, Default)]
pub(super) struct SoakReport {
    pub(super) run_id: String,
    pub(super) url: String,
    pub(super) pid: u32,
    pub(super) minutes: f64,
    pub(super) clients: usize,
    pub(super) rooms: usize,
    pub(super) senders: usize,
    pub(super) rate: f64,
    pub(super) size: usize,
    pub(super) churn_per_s: usize,
    pub(super) slow_readers: usize,
    pub(super) stall_s: f64,
    pub(super) setup_s: f64,
    /// Before any soak client connected.
    pub(super) rss_idle_kib: u64,
    pub(super) rss_start_kib: Option<u64>,
    pub(super) rss_1min_kib: Option<u64>,
    pub(super) rss_end_kib: Option<u64>,
    /// Highest RSS of the samples taken every second.
    pub(super) rss_max_kib: u64,
    /// Highest RSS sampled between 1 and 2 minutes in: the reference for `levelled_off`.
    pub(super) rss_reference_kib: Option<u64>,
    pub(super) levelled_off: Option<bool>,
    pub(super) rss_anon_start_kib: Option<u64>,
    pub(super) rss_anon_1min_kib: Option<u64>,
    pub(super) rss_anon_end_kib: Option<u64>,
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) stalls: u64,
    /// Stalls that ended without a 4000: the reader closed and resumed on a new socket.
    pub(super) outlasted: u64,
    pub(super) evictions: u64,
    /// Of them, 4000s before the resume's joins were all acked.
    pub(super) evicted_joining: u64,
    /// Slow readers cut by a reset (the node's TCP_USER_TIMEOUT) rather than a 4000.
    pub(super) cut: u64,
    pub(super) resumes: u64,
    pub(super) not_recovered: u64,
    pub(super) reconnects: u64,
    pub(super) churned: u64,
    pub(super) gaps: u64,
    pub(super) duplicates: u64,
    /// Client-room pairs that did not hold the room's last event at the end.
    pub(super) behind_at_end: usize,
    pub(super) missing_at_end: u64,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) node_died: bool,
    pub(super) failure: Option<String>,
    pub(super) samples: Vec<Sample>,
}

const MIB: f64 = 1024.0;

impl SoakReport {
    pub(super) fn init(&mut self, args: &SoakArgs, run_id: &str, rss_idle_kib: u64) {
        self.run_id = run_id.to_owned();
        self.url = args.url.clone();
        self.pid = args.pid;
        self.minutes = args.minutes;
        self.clients = args.clients;
        self.rooms = args.rooms;
        self.senders = args.senders;
        self.rate = args.rate;
        self.size = args.size;
        self.churn_per_s = args.churn;
        self.slow_readers = args.slow_readers;
        self.stall_s = args.stall;
        self.rss_idle_kib = rss_idle_kib;
        self.rss_max_kib = rss_idle_kib;
    }

    pub(super) fn note_rss(&mut self, rss_kib: Option<u64>) {
        self.rss_max_kib = self.rss_max_kib.max(rss_kib.unwrap_or(0));
    }

    pub(super) fn finish(&mut self, tally: &Tally) {
        self.sent = tally.sent.load(Relaxed);
        self.acked = tally.acked.load(Relaxed);
        self.stalls = tally.stalls.load(Relaxed);
        self.outlasted = tally.outlasted.load(Relaxed);
        self.evictions = tally.evictions.load(Relaxed);
        self.evicted_joining = tally.evicted_joining.load(Relaxed);
        self.cut = tally.cut.load(Relaxed);
        self.resumes = tally.resumes.load(Relaxed);
        self.not_recovered = tally.not_recovered.load(Relaxed);
        self.reconnects = tally.reconnects.load(Relaxed);
        self.churned = tally.churned.load(Relaxed);
        self.gaps = tally.gaps.load(Relaxed);
        self.duplicates = tally.duplicates.load(Relaxed);
        self.errors = lock(&tally.errors).clone();
        let rss = |s: &Sample| s.rss_kib;
        let anon = |s: &Sample| s.rss_anon_kib;
        let minute = self.samples.iter().find(|s| s.elapsed_s >= 59.5);
        self.rss_start_kib = self.samples.first().and_then(rss);
        self.rss_1min_kib = minute.and_then(rss);
        self.rss_end_kib = self.samples.last().and_then(rss);
        self.rss_anon_start_kib = self.samples.first().and_then(anon);
        self.rss_anon_1min_kib = minute.and_then(anon);
        self.rss_anon_end_kib = self.samples.last().and_then(anon);
        self.rss_reference_kib = self
            .samples
            .iter()
            .filter(|s| (59.5..=120.5).contains(&s.elapsed_s))
            .filter_map(rss)
            .max();
        self.levelled_off = self
            .rss_reference_kib
            .zip(self.rss_end_kib)
            .filter(|_| self.samples.last().is_some_and(|s| s.elapsed_s >= 119.5))
            .map(|(reference, end)| {
                end as f64 <= (reference as f64 * 1.2).max(reference as f64 + 4.0 * MIB)
            });
    }

    /// No gap, duplicate or missing event, and the node alive to the end.
    pub(super) fn clean(&self) -> bool {
        self.gaps == 0
            && self.duplicates == 0
            && self.behind_at_end == 0
            && !self.node_died
            && self.failure.is_none()
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / MIB))
}

fn one_decimal_mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / MIB))
}

fn or_dash(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

/// One report line (with the header before the first).
pub(super) fn print_line(s: &Sample, header: bool) {
    if header {
        println!(
            "{:>6} {:>8} {:>5} {:>5} {:>6} {:>8} {:>8} {:>11} {:>7} {:>6} {:>6} {:>5} {:>5}",
            "time",
            "rss_MiB",
            "anon",
            "fds",
            "conns",
            "sent",
            "acked",
            "evict/node",
            "resumes",
            "churn",
            "errors",
            "gaps",
            "dups"
        );
    }
    let t = s.elapsed_s.round() as u64;
    println!(
        "{:>3}:{:02} {:>8} {:>5} {:>5} {:>6} {:>8} {:>8} {:>11} {:>7} {:>6} {:>6} {:>5} {:>5}",
        t / 60,
        t % 60,
        one_decimal_mib(s.rss_kib),
        one_decimal_mib(s.rss_anon_kib),
        or_dash(s.fds),
        or_dash(s.connections),
        s.sent,
        s.acked,
        format!("{}/{}", s.evictions, or_dash(s.node_evictions)),
        s.resumes,
        s.churned,
        s.errors,
        s.gaps,
        s.duplicates,
    );
}

pub(super) fn print_summary(r: &SoakReport) {
    println!(
        "soak {} on {} (pid {}), {} min",
        r.run_id, r.url, r.pid, r.minutes
    );
    println!(
        "  {} clients in {} rooms ({} senders, {:.0} msg/s of {} B; {} slow readers in every room, stalls of {:.0} s; {} churned/s); setup {:.1} s",
        r.clients, r.rooms, r.senders, r.rate, r.size, r.slow_readers, r.stall_s, r.churn_per_s, r.setup_s
    );
    println!(
        "  RSS: idle {}, start {}, after 1 min {}, end {}, max {}",
        mib(Some(r.rss_idle_kib)),
        mib(r.rss_start_kib),
        mib(r.rss_1min_kib),
        mib(r.rss_end_kib),
        mib(Some(r.rss_max_kib))
    );
    let levelled = match r.levelled_off {
        Some(true) => "yes",
        Some(false) => "NO: still growing",
        None => "not judged (run shorter than 2 min)",
    };
    println!(
        "  RssAnon (heap and stacks): start {}, after 1 min {}, end {}",
        mib(r.rss_anon_start_kib),
        mib(r.rss_anon_1min_kib),
        mib(r.rss_anon_end_kib)
    );
    println!(
        "  memory levelled off: {levelled} (end within 20 % or 4 MiB of the 1-2 min peak {})",
        mib(r.rss_reference_kib)
    );
    if let Some(last) = r.samples.last() {
        println!(
            "  at the end: {} fds, {} connections on the node, {} threads; {} open by the soak",
            or_dash(last.fds),
            or_dash(last.connections),
            or_dash(last.threads),
            last.open
        );
    }
    println!(
        "  sent {}, acked {}; {} stalls: {} evictions (4000) seen ({} while resuming), {} outlasted, {} cut by reset",
        r.sent, r.acked, r.stalls, r.evictions, r.evicted_joining, r.outlasted, r.cut
    );
    println!(
        "  {} resumes (recovered), {} not recovered",
        r.resumes, r.not_recovered
    );
    println!(
        "  {} churns, {} reconnects; gaps {}, duplicates {}, client-rooms behind at the end {} ({} events)",
        r.churned, r.reconnects, r.gaps, r.duplicates, r.behind_at_end, r.missing_at_end
    );
    if !r.errors.is_empty() {
        let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("  errors: {}", list.join("; "));
    }
    if let Some(f) = &r.failure {
        println!("  FAILED: {f}");
    }
    println!(
        "{}",
        if r.clean() {
            "SOAK CLEAN"
        } else {
            "SOAK FAILED: gaps, duplicates, missing events or the node died"
        }
    );
}
