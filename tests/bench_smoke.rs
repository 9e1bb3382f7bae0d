//! A short confab-bench run against live nodes: a smoke test of the load
//! generator and the server together that checks zero loss and zero
//! duplicates (not a timing: figures live in docs/benchmarks.md).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Backend, Cluster, TestNode};

/// The `confab-bench` binary. It belongs to the workspace member `crates/confab-bench`, not to
/// this package, so Cargo neither builds it for these tests nor sets
/// `CARGO_BIN_EXE_confab-bench`; it is found beside this test's own executable:
/// `target/<profile>/deps/bench_smoke-<hash>` -> `target/<profile>/confab-bench`.
fn bench_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()));
    let bin = profile_dir.join(format!("confab-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p confab-bench` \
         (or run scripts/test, which builds every workspace binary)",
        bin.display()
    );
    bin
}

/// Runs confab-bench with `--check`; its report, after asserting that the check passed.
fn checked(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run confab-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "confab-bench --check failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn bench(urls: &[String], extra: &[&str]) {
    let mut cmd = Command::new(bench_bin());
    for u in urls {
        cmd.args(["--url", u]);
    }
    cmd.args([
        "--clients",
        "200",
        "--rooms",
        "10",
        "--senders",
        "10",
        "--rate",
        "500",
    ])
    .args(["--duration", "2", "--warmup", "1", "--check", "--quiet"])
    .args(extra);
    let stdout = checked(&mut cmd);
    assert!(
        stdout.contains("lost"),
        "the report names lost deliveries:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_one_sqlite_node_loses_and_doubles_nothing() {
    let node = TestNode::start(Backend::Sqlite).await;
    bench(&[node.ws_url()], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_three_nodes_behind_nginx_loses_and_doubles_nothing() {
    let mut cluster = Cluster::start(3).await;
    let url = cluster.start_nginx();
    bench(&[url], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_storm_through_nginx_loses_and_doubles_nothing() {
    let mut cluster = Cluster::start(3).await;
    let url = cluster.start_nginx();
    let victim = cluster.node(0).pid().to_string();
    let stdout = checked(
        Command::new(bench_bin())
            .args(["resume", "--url", &url, "--clients", "300", "--rooms", "10"])
            .args(["--rate", "100", "--before", "1", "--after", "1"])
            .args(["--kill-pid", &victim, "--check"]),
    );
    // nginx spreads the 300 over three nodes: about a third lose their node.
    let dropped: usize = stdout
        .split(" clients dropped")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in the report:\n{stdout}"));
    assert!(
        dropped >= 50,
        "the kill dropped only {dropped} clients:\n{stdout}"
    );
    assert!(
        stdout
            .contains("lost 0, duplicated 0, acked but not stored 0, clients behind at the end 0"),
        "{stdout}"
    );
}
