//! `confab-bench`: the load generator for Confab, plus the "floor" server it is compared with.
//!
//! This file owns the command line and hands it to one of four commands:
//!
//! - without a subcommand, the open-loop load run (`load.rs`, with `load/`): `--clients`
//!   connections, `--senders` of them writing at `--rate`, every delivery checked for loss,
//!   duplicates and order and timed end to end; `--find-max` steps the rate up;
//! - `confab-bench floor --port P`, the floor server (`floor.rs`): the simplest broadcast
//!   server for the bench's protocol subset, the machine's practical floor;
//! - `confab-bench resume`, the resume storm (W4): see `resume.rs`;
//! - `confab-bench soak`, a bounded soak of one node (steady load, churn, slow readers;
//!   RSS, fds and connections over minutes): see `soak.rs`, with `soak/`.
//!
//! Shared by them: `ws.rs` (the WebSocket client side), `procfs.rs` (RSS and CPU from
//! `/proc`) and `util.rs`.
//!
//! Exit codes: 0 done; 1 `--check` failed (the soak: gaps, duplicates or the node died);
//! 2 usage error, setup failure or hard deadline.

mod floor;
mod load;
mod procfs;
mod resume;
mod soak;
mod store_floor;
mod util;
mod ws;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "confab-bench",
    version,
    about = "Load generator for the Confab chat server (and `floor`, a minimal reference server)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Targets must be loopback (127.0.0.0/8, ::1, localhost). Each connection is a file \
descriptor: raise `ulimit -n` for large --clients, and spread over several --url \
ws://127.0.0.N:PORT/ws when local ports run out.\nExit codes: 0 done, 1 --check failed, \
2 usage error, setup failure or hard deadline."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: load::LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the floor server: the simplest room broadcast server speaking the bench's protocol subset.
    Floor(floor::FloorArgs),
    /// The resume storm: kill a node under load, every dropped client resumes with `since`.
    Resume(resume::ResumeArgs),
    /// A bounded soak of one node: steady load, churn and slow readers for --minutes; RSS, fds, connections.
    Soak(soak::SoakArgs),
    /// The store floor on SQLite: batched inserts of event rows with the store's PRAGMAs, rows/s.
    StoreFloor(store_floor::StoreFloorArgs),
}

fn main() {
    let cli = Cli::parse();
    let quiet = cli.command.is_none() && cli.load.quiet;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if quiet {
        "warn"
    } else {
        "info"
    }))
    .format_timestamp_millis()
    .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("confab-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Some(Command::Floor(args)) => floor::main(args).await,
            Some(Command::Resume(args)) => resume::main(args).await,
            Some(Command::Soak(args)) => soak::main(args).await,
            Some(Command::StoreFloor(args)) => store_floor::main(args).await,
            None => load::main(cli.load).await,
        }
    });
    // Exit at once rather than tearing down every connection task one by one.
    std::process::exit(code);
}
