//! The `confab` binary: parses the command line and the environment, then
//! runs a node (`confab`, `confab serve`), migrates its store (`confab
//! migrate`) or prints a token for token mode (`confab token USER`).

use std::io::Write as _;
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
    if let Cmd::Token { user, ttl } = &command {
        return token(&config, user, *ttl);
    }
    let result = actix_web::rt::System::new().block_on(async move {
        match command {
            Cmd::Serve => {
                confab::Node::build(config)
                    .await?
                    .run(confab::node::signal())
                    .await
            }
            Cmd::Migrate => confab::store::migrate(&config.store).await,
            Cmd::Token { .. } => unreachable!("handled above"),
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

/// `confab token USER [--ttl 1h]`: prints a token signed with `AUTH_SECRET`
/// on stdout, alone on its line.
fn token(config: &Config, user: &confab::protocol::UserId, ttl: std::time::Duration) -> ExitCode {
    let Some(auth) = &config.auth else {
        log::error!(
            "AUTH_SECRET is not set: confab token signs with the secret the nodes verify with \
             (set AUTH_SECRET, or pass --auth-secret)"
        );
        return ExitCode::from(2);
    };
    match auth.sign(user, ttl) {
        // The token is this command's output, for a shell or a script: stdout,
        // not the log.
        Ok(token) => match writeln!(std::io::stdout().lock(), "{token}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("cannot write the token: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}
