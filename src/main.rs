//! The `keyward` binary: parse the command line, set up logging, dispatch,
//! and map errors to the exit codes of SPEC §1 (0 ok, 1 runtime, 2 usage or
//! config).

use std::process::ExitCode;

use clap::Parser;
use keyward::app::{self, ConfigSource};
use keyward::cli::{Cli, Command, ServeArgs};
use keyward::config::Config;
use keyward::telemetry::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!(
                "keyward: {}",
                message.trim_end().replace('\n', "\nkeyward: ")
            );
            ExitCode::from(code)
        }
    }
}

fn config_path(args: &ServeArgs) -> Result<std::path::PathBuf, (u8, String)> {
    args.config.clone().ok_or_else(|| {
        (
            2,
            "no config file: pass --config PATH or set KEYWARD_CONFIG".to_string(),
        )
    })
}

fn run(cli: Cli) -> Result<(), (u8, String)> {
    match cli.command {
        Command::CheckConfig(args) => {
            let path = config_path(&args)?;
            let config = Config::load(&path, &args.overrides()).map_err(|e| (2, e.to_string()))?;
            keyward::runtime::Runtime::new(std::sync::Arc::new(config.clone()))
                .map_err(|e| (2, format!("{}: {e}", path.display())))?;
            println!("{}: OK", path.display());
            println!("{}", config.summary());
            Ok(())
        }
        Command::Serve(args) => {
            let path = config_path(&args)?;
            logging::init(cli.log_format, &cli.log_level).map_err(|e| (2, e))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| (1, format!("cannot start the async runtime: {e}")))?;
            let source = ConfigSource {
                path,
                overrides: args.overrides(),
            };
            rt.block_on(app::serve(source))
                .map_err(|e| (e.exit_code() as u8, e.to_string()))
        }
    }
}
