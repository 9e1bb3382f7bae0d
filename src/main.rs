//! The `confab` binary: reads the configuration from the environment and runs a node.

use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match confab::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            log::error!("bad configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    match actix_web::rt::System::new().block_on(confab::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
