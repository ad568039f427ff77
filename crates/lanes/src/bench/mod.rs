//! `lanes bench`: the load generator every performance claim is measured with. It talks to a
//! server over real sockets (starting one itself with `--spawn`), mints its users' tokens as an
//! application backend would (HS256 JWTs), and prints a human summary plus one JSON line per run.

mod net;
mod pairs;
mod report;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

pub(crate) use net::Target;

/// The secret `--spawn` servers and bench tokens share when none is given.
const DEFAULT_SECRET: &str = "lanes-bench-secret-lanes-bench-secret";

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Server to load, e.g. http://127.0.0.1:8080 (ignored with --spawn).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    addr: String,
    /// Start a local `lanes serve` with a temporary data dir for the run.
    #[arg(long, global = true)]
    spawn: bool,
    /// HS256 secret the server accepts, used to mint the bench users' tokens.
    #[arg(long, global = true, env = "LANES_BENCH_JWT_SECRET", default_value = DEFAULT_SECRET)]
    jwt_secret: String,
    /// With --spawn: the server's durability (`full` or `normal`).
    #[arg(long, global = true, default_value = "full")]
    durability: String,
    /// Spread client sockets over this many source addresses 127.0.0.1..=127.0.0.N.
    #[arg(long, global = true, default_value_t = 1)]
    sources: u8,
    /// Hard limit on the whole run, in seconds; the bench stops by itself.
    #[arg(long, global = true, default_value_t = 300)]
    time_limit_secs: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// U online users in 1:1 pairs, each sending to its partner with a window of unacked sends.
    Pairs(pairs::PairsArgs),
}

/// A `lanes serve` started by the bench.
pub(crate) struct SpawnedServer {
    child: Child,
    pub(crate) base_url: String,
    _data_dir: tempfile::TempDir,
}

impl SpawnedServer {
    fn start(secret: &str, durability: &str) -> anyhow::Result<SpawnedServer> {
        let data_dir = tempfile::tempdir().context("create temp data dir")?;
        let exe = std::env::current_exe().context("find own executable")?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--durability",
                durability,
            ])
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("LANES_JWT_HS256_SECRET", secret)
            .env("LANES_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn lanes serve")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .context("read server address")?;
        let Some(addr) = line
            .strip_prefix("lanes listening on ")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            let _ = child.kill();
            bail!("unexpected server output: {line:?}");
        };
        Ok(SpawnedServer {
            child,
            base_url: addr.to_owned(),
            _data_dir: data_dir,
        })
    }

    /// The server's resident memory, from /proc.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(PathBuf::from(format!("/proc/{pid}/status"))).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs one scenario.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Client sockets need descriptors: take everything the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!("RLIMIT_NOFILE raised to {limit}"),
        Err(err) => tracing::warn!("could not raise RLIMIT_NOFILE: {err}"),
    }
    let spawned = if args.spawn {
        Some(SpawnedServer::start(&args.jwt_secret, &args.durability)?)
    } else {
        None
    };
    let base_url = spawned
        .as_ref()
        .map_or_else(|| args.addr.clone(), |server| server.base_url.clone());
    let target = Target::new(&base_url, &args.jwt_secret, args.sources);
    let time_limit = Duration::from_secs(args.time_limit_secs);
    let work = async {
        match args.scenario {
            Scenario::Pairs(pairs) => pairs::run(&target, spawned.as_ref(), pairs).await,
        }
    };
    let report = tokio::time::timeout(time_limit, work)
        .await
        .context("the run hit --time-limit-secs")??;
    report.print();
    if report.failed() {
        bail!("lost or duplicated messages: see the report above");
    }
    Ok(())
}
