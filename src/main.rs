//! The `keyward` binary: parse the command line, set up logging, dispatch,
//! and map errors to the exit codes of SPEC §1 (0 ok, 1 runtime, 2 usage or
//! config).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keyward::app::{self, ConfigSource};
use keyward::cli::{keys, Cli, Command, RoutesCommand, ServeArgs};
use keyward::config::{Config, StoreKind};
use keyward::store::{MemoryStore, Store};
use keyward::telemetry::logging::{self, LogFormat, LogTarget};

/// jemalloc rather than glibc's malloc: glibc gives each busy thread its
/// own arena, and with a large key cache filled from two worker threads the
/// arenas kept ~15 MB of freed memory resident (bench/README.md, "Memory").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("keyward: {}", message.trim_end().replace('\n', "\nkeyward: "));
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn config_path(args: &ServeArgs) -> Result<PathBuf, Failure> {
    args.config
        .clone()
        .ok_or_else(|| (2, "no config file: pass --config PATH or set KEYWARD_CONFIG".to_string()))
}

fn load(args: &ServeArgs) -> Result<(PathBuf, Config), Failure> {
    let path = config_path(args)?;
    let config = Config::load(&path, &args.overrides()).map_err(|e| (2, e.to_string()))?;
    Ok((path, config))
}

/// The runtime snapshot `serve` would build: also compiles the route table.
fn runtime_of(
    path: &std::path::Path,
    config: &Config,
) -> Result<keyward::runtime::Runtime, Failure> {
    keyward::runtime::Runtime::new(std::sync::Arc::new(config.clone())).map_err(|e| match e {
        keyward::runtime::RuntimeError::Routes(errors) => (2, errors.to_string()),
        other => (2, format!("{}: {other}", path.display())),
    })
}

/// The async runtime. On one CPU (a sidecar limited to one core, or pinned
/// with taskset) a single-threaded scheduler does the same work without the
/// multi-threaded one's cross-thread wake-ups.
fn tokio_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    let one_cpu = std::thread::available_parallelism().map(|n| n.get() == 1).unwrap_or(false);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().map_err(|e| (1, format!("cannot start the async runtime: {e}")))
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::CheckConfig(args) => {
            let (path, config) = load(&args)?;
            let rt = runtime_of(&path, &config)?;
            keyward::tls::check(&config).map_err(|e| (2, format!("{}: {e}", path.display())))?;
            println!("{}: OK", path.display());
            println!("{}", config.summary());
            for warning in rt.routes.warnings(&config) {
                eprintln!("warning: {warning}");
            }
            Ok(())
        }
        Command::Serve(args) => {
            let path = config_path(&args)?;
            let format = cli.log_format.unwrap_or(LogFormat::Json);
            logging::init(format, &cli.log_level, LogTarget::Stdout).map_err(|e| (2, e))?;
            let source = ConfigSource { path, overrides: args.overrides() };
            tokio_runtime()?
                .block_on(app::serve(source))
                .map_err(|e| (e.exit_code() as u8, e.to_string()))
        }
        Command::Routes {
            config: args,
            command: RoutesCommand::Explain { method, path, json },
        } => {
            let (file, config) = load(&args)?;
            let rt = runtime_of(&file, &config)?;
            let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| (2, format!("METHOD: {method:?} is not an HTTP method")))?;
            let allow = config.limits.allow_semicolon_in_path;
            let raw = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
            if json {
                let v = keyward::routes::explain_json(&rt.routes, &method, raw, allow);
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", keyward::routes::explain(&rt.routes, &method, raw, allow));
            }
            Ok(())
        }
        Command::VerifySignature(args) => {
            let (_, config) = load(&args.config)?;
            let now = keyward::clock::unix_seconds();
            match keyward::cli::verify::run(&config, &args, now) {
                Ok(verdict) => {
                    eprintln!("{verdict}");
                    Ok(())
                }
                Err(failure) => Err((failure.code, failure.message)),
            }
        }
        Command::Demo(args) => {
            let format = cli.log_format.unwrap_or(LogFormat::Text);
            logging::init(format, &cli.log_level, LogTarget::Stdout).map_err(|e| (2, e))?;
            tokio_runtime()?.block_on(keyward::demo::run(&args))
        }
        Command::Keys { store, command } => {
            // Lifecycle events (key.created, …) go to stderr, so stdout
            // carries only the command's output (and --json stays parsable).
            let format = cli.log_format.unwrap_or(LogFormat::Text);
            logging::init(format, &cli.log_level, LogTarget::Stderr).map_err(|e| (2, e))?;
            if let keys::KeysCommand::Hash { key } = &command {
                println!("{}", keyward::store::KeyHash::of(key).to_hex());
                return Ok(());
            }
            let (_, config) = load(&store)?;
            tokio_runtime()?
                .block_on(async {
                    // The CLI may create the memory store's keys file; `serve`
                    // insists that it exists (a typo'd path must not mean "no keys").
                    let store = match (&config.store.kind, &config.store.memory.keys_file) {
                        (StoreKind::Memory, Some(path)) => {
                            Store::Memory(MemoryStore::load_or_create(path)?)
                        }
                        _ => Store::from_config(&config.store)?,
                    };
                    keys::run(&config, &store, command).await
                })
                .map_err(|e: keys::KeysError| (e.code, e.message))
        }
    }
}
