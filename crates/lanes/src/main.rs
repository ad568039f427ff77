//! The `lanes` binary: `lanes serve` runs the chat server. Configuration comes from a TOML file
//! (`--config`), then environment variables, then flags, each overriding the one before.
//! `lanes openapi` prints the HTTP API's OpenAPI document (kept in docs/openapi.json).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

mod bench;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use lanes_server::Config;
use lanes_server::config::DurabilityConfig;
use tracing::error;

#[derive(Parser)]
#[command(
    name = "lanes",
    version,
    about = "Lanes: a durable real-time chat server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat server (embedded SQLite store, zero configuration needed).
    Serve(ServeArgs),
    /// Load a server with a scenario and report throughput, latency and loss.
    Bench(bench::BenchArgs),
    /// Print the OpenAPI document of the HTTP API (the server also serves it at
    /// `GET /openapi.json`; docs/openapi.json is its output).
    Openapi,
}

#[derive(Clone, Copy, ValueEnum)]
enum Durability {
    Full,
    Normal,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; see docs/CONFIGURATION.md.
    #[arg(long, env = "LANES_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "LANES_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory of the SQLite database [default: ./lanes-data].
    #[arg(long, env = "LANES_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `full` (fsync every commit, the default) or `normal` (weaker: may lose acked messages on
    /// power loss).
    #[arg(long, env = "LANES_DURABILITY", value_enum)]
    durability: Option<Durability>,
    /// Largest message body in bytes [default: 16384, at most 65536].
    #[arg(long, env = "LANES_MESSAGE_BODY_BYTES_MAX")]
    message_body_bytes_max: Option<usize>,
    /// Shared secret (≥ 32 bytes) to accept HS256 application JWTs.
    #[arg(long, env = "LANES_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<String>,
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("parse config file {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = &args.data_dir {
        config.data_dir = data_dir.clone();
    }
    if let Some(durability) = args.durability {
        config.durability = match durability {
            Durability::Full => DurabilityConfig::Full,
            Durability::Normal => DurabilityConfig::Normal,
        };
    }
    if let Some(max) = args.message_body_bytes_max {
        config.limits.message_body_bytes_max = max;
    }
    if let Some(secret) = &args.jwt_hs256_secret {
        config.auth.jwt_hs256_secret = Some(secret.clone());
    }
    Ok(config)
}

fn print_openapi() -> anyhow::Result<()> {
    let document = lanes_server::openapi_json().context("serialize the OpenAPI document")?;
    writeln!(std::io::stdout().lock(), "{document}").context("write the OpenAPI document")?;
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                error!("failed to install SIGTERM handler: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let data_dir = config.data_dir.clone();
    let bound = lanes_server::bind(config).await.context("start server")?;
    let addr = bound.local_addr().context("read bound address")?;
    // Printed on stdout (not only logged) so that scripts and tests can read the address. A
    // reader that stops after the first line (`lanes bench --spawn` does) closes the pipe, so
    // write errors are ignored rather than allowed to panic the server.
    let mut open = addr;
    // A wildcard address is not somewhere a browser can go; the loopback one on the same port is.
    if open.ip().is_unspecified() {
        open.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut stdout = std::io::stdout().lock();
    let scheme = bound.scheme();
    let _ = writeln!(
        stdout,
        "lanes listening on {scheme}://{addr} (data in {})",
        data_dir.display()
    );
    let _ = writeln!(stdout, "open {scheme}://{open}/ in a browser to chat");
    let _ = stdout.flush();
    drop(stdout);
    bound.serve(shutdown_signal()).await.context("serve")?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LANES_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!("failed to start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Openapi => print_openapi(),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            error!("failed to {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
