//! Setting the load run up: opening `--clients` connections (each with its client task),
//! then creating each room from its first connected client (client `i` is in room
//! `i % rooms`) and joining every connected client to its room.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use log::info;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};

use super::client::{BenchClient, ClientCommand, ClientLink, SetupKind};
use super::report::ConnectReport;
use super::{LoadArgs, Shared};
use crate::ws::{client_config, connect_failure_reason, CONNECT_TIMEOUT};

const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const SETUP_RETRIES: u32 = 3;

/// Opens `--clients` connections, `--connect-concurrency` at a time, each with its task.
pub(super) async fn connect_clients(
    args: &LoadArgs,
    run_id: &str,
    shared: &Arc<Shared>,
) -> (Vec<Option<ClientLink>>, ConnectReport) {
    let started = Instant::now();
    let config = client_config();
    let mut clients: Vec<Option<ClientLink>> = vec![None; args.clients];
    let mut connect = ConnectReport {
        attempted: args.clients,
        ..ConnectReport::default()
    };
    let mut attempts = futures_util::stream::iter(0..args.clients)
        .map(|i| {
            let url = &args.urls[i % args.urls.len()];
            let attempt = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
            async move { (i, timeout(CONNECT_TIMEOUT, attempt).await) }
        })
        .buffer_unordered(args.connect_concurrency);
    while let Some((i, attempt)) = attempts.next().await {
        let failure = match attempt {
            Ok(Ok((ws, _response))) => {
                let (link, commands) = mpsc::unbounded_channel();
                tokio::spawn(BenchClient::new(i, args, run_id, shared.clone()).run(ws, commands));
                clients[i] = Some(link);
                connect.made += 1;
                None
            }
            Ok(Err(e)) => Some(connect_failure_reason(&e)),
            Err(_) => Some("timeout".to_owned()),
        };
        if let Some(reason) = failure {
            connect.failed += 1;
            *connect.failures.entry(reason).or_default() += 1;
        }
        let done = connect.made + connect.failed;
        if done.is_multiple_of(10_000) && done < args.clients {
            info!("  {done}/{} connections attempted", args.clients);
        }
    }
    connect.elapsed_s = started.elapsed().as_secs_f64();
    connect.connects_per_s = connect.made as f64 / connect.elapsed_s.max(1e-9);
    info!(
        "connected {} of {} in {:.2} s ({} failed)",
        connect.made, args.clients, connect.elapsed_s, connect.failed
    );
    (clients, connect)
}

/// Creates each room from its first connected client, then joins every connected client.
/// Returns which clients joined and each room's member count.
pub(super) async fn join_rooms(
    args: &LoadArgs,
    clients: &[Option<ClientLink>],
    connect: &mut ConnectReport,
) -> (Vec<bool>, Vec<u64>) {
    let started = Instant::now();
    let connected = |i: &usize| clients[*i].is_some();
    let creators: Vec<usize> = (0..args.rooms)
        .filter_map(|r| (r..args.clients).step_by(args.rooms).find(connected))
        .collect();
    let everyone: Vec<usize> = (0..args.clients).filter(connected).collect();
    let concurrency = args.connect_concurrency;
    let mut outcomes = run_setup(clients, &creators, SetupKind::Create, concurrency).await;
    let creates = outcomes.len();
    outcomes.extend(run_setup(clients, &everyone, SetupKind::Join, concurrency).await);
    let (mut joined, mut members) = (vec![false; args.clients], vec![0u64; args.rooms]);
    for (n, (i, outcome)) in outcomes.into_iter().enumerate() {
        let is_join = n >= creates;
        match outcome {
            Ok(()) if is_join => {
                joined[i] = true;
                members[i % args.rooms] += 1;
                connect.joined += 1;
            }
            Ok(()) => {}
            Err(reason) => {
                connect.join_failed += usize::from(is_join);
                *connect.join_failures.entry(reason).or_default() += 1;
            }
        }
    }
    connect.setup_s = started.elapsed().as_secs_f64();
    info!(
        "joined {} clients in {:.2} s",
        connect.joined, connect.setup_s
    );
    (joined, members)
}

/// Sends `kind` to the given clients, `concurrency` at a time; retries `unavailable` and
/// `rate_limited` a few times. Returns each client's outcome.
async fn run_setup(
    clients: &[Option<ClientLink>],
    which: &[usize],
    kind: SetupKind,
    concurrency: usize,
) -> Vec<(usize, Result<(), String>)> {
    futures_util::stream::iter(which.iter().copied())
        .map(|i| async move {
            let Some(tx) = clients[i].as_ref() else {
                return (i, Err("not connected".to_owned()));
            };
            for attempt in 0..=SETUP_RETRIES {
                let (reply, outcome) = oneshot::channel();
                if tx.send(ClientCommand::Setup { kind, reply }).is_err() {
                    return (i, Err("connection closed".to_owned()));
                }
                match timeout(SETUP_TIMEOUT, outcome).await {
                    Ok(Ok(Err(code)))
                        if attempt < SETUP_RETRIES
                            && (code == "unavailable" || code == "rate_limited") =>
                    {
                        sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                    }
                    Ok(Ok(outcome)) => {
                        return (
                            i,
                            outcome.map_err(|code| format!("{} refused: {code}", kind.name())),
                        )
                    }
                    Ok(Err(_)) => return (i, Err("connection closed".to_owned())),
                    Err(_) => return (i, Err(format!("{} timed out", kind.name()))),
                }
            }
            (i, Err("retries exhausted".to_owned()))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}
