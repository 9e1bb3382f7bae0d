//! The resume storm's report: what it holds (serialised as is for `--json`), when it is
//! clean (what `--check` asks), and how it is printed as text.

use serde::Serialize;

#[derive(Serialize, Default)]
pub(super) struct ResumeReport {
    pub(super) run_id: String,
    pub(super) url: String,
    pub(super) clients: usize,
    pub(super) rooms: usize,
    pub(super) rate: f64,
    pub(super) connected: usize,
    pub(super) joined: usize,
    pub(super) setup_s: f64,
    pub(super) setup_failed: usize,
    pub(super) killed_pid: u32,
    pub(super) dropped_by_kill: usize,
    pub(super) resumed: usize,
    pub(super) not_recovered: usize,
    pub(super) reconnect_attempts: u64,
    pub(super) replayed_events: u64,
    pub(super) recovery_p50_ms: f64,
    pub(super) recovery_p99_ms: f64,
    /// From the kill until the last dropped client's resuming join was acked.
    pub(super) all_recovered_s: Option<f64>,
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) refused: u64,
    pub(super) deliveries: u64,
    /// Events some client never got: gaps plus what it lacked at the end.
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    /// Acked messages whose seq is past the room's last seq: acked but not stored.
    pub(super) acked_not_stored: u64,
    pub(super) clients_behind_at_end: usize,
    pub(super) failure: Option<String>,
}

impl ResumeReport {
    /// Nothing lost or duplicated, every acked message stored, every dropped client resumed
    /// with its events recovered, and every client holding its room's last event.
    pub(super) fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.acked_not_stored == 0
            && self.not_recovered == 0
            && self.clients_behind_at_end == 0
            && self.resumed == self.dropped_by_kill
    }
}

/// The report as text on stdout.
pub(super) fn print(r: &ResumeReport) {
    println!("resume storm {} via {}", r.run_id, r.url);
    println!(
        "  clients {} in {} rooms, {} joined in {:.2} s ({} failed), {:.0} msg/s",
        r.clients, r.rooms, r.joined, r.setup_s, r.setup_failed, r.rate
    );
    println!(
        "  killed pid {}: {} clients dropped, {} resumed (recovered), {} not recovered, {} reconnect attempts, {} events replayed",
        r.killed_pid, r.dropped_by_kill, r.resumed, r.not_recovered, r.reconnect_attempts, r.replayed_events
    );
    match r.all_recovered_s {
        Some(s) => println!(
            "  recovery: p50 {:.1} ms, p99 {:.1} ms, all recovered {:.3} s after the kill",
            r.recovery_p50_ms, r.recovery_p99_ms, s
        ),
        None => println!("  recovery: no client was dropped"),
    }
    println!(
        "  sent {}, acked {}, refused {}, deliveries {}",
        r.sent, r.acked, r.refused, r.deliveries
    );
    println!(
        "  lost {}, duplicated {}, acked but not stored {}, clients behind at the end {}",
        r.lost, r.duplicated, r.acked_not_stored, r.clients_behind_at_end
    );
    if let Some(f) = &r.failure {
        println!("  FAILED: {f}");
    }
}
