//! The `confab` binary: parses the command line and the environment, then
//! runs a node (`confab`, `confab serve`) or migrates its store (`confab migrate`).

use std::process::ExitCode;

use clap::Parser;
use confab::config::{Cli, Cmd, Config};

fn main() -> ExitCode {
    // --help and --version print and exit here, before anything starts.
    let cli = Cli::parse();
    let settings = &cli.settings;
    env_logger::Builder::new()
        .parse_filters(settings.rust_log.as_deref().unwrap_or("info"))
        .parse_write_style(settings.rust_log_style.as_deref().unwrap_or("auto"))
        .init();
    let config = match Config::from_settings(settings) {
        Ok(c) => c,
        Err(e) => {
            log::error!("bad configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Cmd::Serve);
    let result = actix_web::rt::System::new().block_on(async move {
        match command {
            Cmd::Serve => {
                confab::Node::build(config)
                    .await?
                    .run(confab::node::signal())
                    .await
            }
            Cmd::Migrate => confab::store::migrate(&config.store).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
