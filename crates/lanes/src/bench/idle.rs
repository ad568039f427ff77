//! `idle`: C authenticated connections held open (answering the server's pings); reports the
//! connect rate and the server's resident memory per connection. When one process may not hold
//! C sockets (its descriptor limit), helper processes (`idle-worker`) hold the rest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tokio::time::Instant;

use super::SpawnedServer;
use super::net::{Target, run_id, user_name};
use super::report::{Report, histogram, latency_ms};

#[derive(Args, Clone)]
pub(crate) struct IdleArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections per user (devices); users = connections / devices.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Connections being opened at once (per process).
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// How long to hold them all before measuring, in seconds.
    #[arg(long, default_value_t = 2.0)]
    hold_secs: f64,
    /// Client processes to spread the sockets over; by default as many as the per-process
    /// descriptor limit requires.
    #[arg(long)]
    processes: Option<usize>,
}

/// A helper process holding part of an `idle` run's connections (started by the bench itself).
#[derive(Args, Clone)]
pub(crate) struct IdleWorkerArgs {
    /// The parent's run id (user names).
    #[arg(long)]
    run: String,
    /// Index of this worker's first connection in the run.
    #[arg(long)]
    first: usize,
    /// Connections to hold.
    #[arg(long)]
    connections: usize,
    /// Connections per user.
    #[arg(long)]
    devices: usize,
    /// Connections being opened at once.
    #[arg(long)]
    parallel: usize,
}

/// Descriptors a bench process keeps for itself besides client sockets.
const DESCRIPTORS_SPARE: usize = 256;

pub(crate) async fn run(
    target: &Arc<Target>,
    spawned: Option<&SpawnedServer>,
    args: IdleArgs,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.connections > 0 && args.devices > 0,
        "nothing to connect"
    );
    let run = run_id();
    let users: Vec<String> = (0..args.connections.div_ceil(args.devices))
        .map(|i| user_name(&run, i))
        .collect();
    super::net::create_users(target, &users).await?;
    let rss_before = spawned.and_then(SpawnedServer::rss_kib);

    let descriptors = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let per_process = usize::try_from(descriptors)
        .unwrap_or(usize::MAX)
        .saturating_sub(DESCRIPTORS_SPARE)
        .max(1);
    let processes = args
        .processes
        .unwrap_or_else(|| args.connections.div_ceil(per_process))
        .max(1);
    let share = args.connections.div_ceil(processes);
    anyhow::ensure!(
        share <= per_process,
        "{share} sockets per process exceed the descriptor limit; use more --processes"
    );

    let started = Instant::now();
    // Helper processes take the later shares and connect at the same time as this one.
    let mut workers = Vec::new();
    for index in 1..processes {
        let first = index * share;
        let count = share.min(args.connections.saturating_sub(first));
        if count > 0 {
            workers.push(spawn_worker(target, &run, first, count, &args)?);
        }
    }
    let own = share.min(args.connections);
    let (holders, connect_latency) =
        open(target, &run, 0, own, args.devices, args.parallel).await?;
    let mut opened = holders.len();
    for worker in &mut workers {
        opened += read_count(worker, "connected").await?;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        opened == args.connections,
        "opened {opened} of {} connections",
        args.connections
    );

    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
    let rss_after = spawned.and_then(SpawnedServer::rss_kib);
    let mut still_open = holders
        .iter()
        .filter(|holder| !holder.is_finished())
        .count();
    for holder in &holders {
        holder.abort();
    }
    for mut worker in workers {
        // Closing its stdin tells the worker to count what is still open and exit.
        drop(worker.stdin.take());
        still_open += read_count(&mut worker, "still_open").await?;
        let _ = worker.child.wait().await;
    }

    let mut report = Report::new(
        "idle",
        json!({
            "connections": args.connections, "devices": args.devices,
            "parallel": args.parallel, "processes": processes,
        }),
    );
    report.set("connect_secs", json!(connect_secs));
    report.set(
        "connect_per_s",
        json!((args.connections as f64 / connect_secs).round()),
    );
    // Measured in this process (its share of the connections).
    report.set("connect_latency_ms", latency_ms(&connect_latency));
    report.set("still_open", json!(still_open));
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.set("server_rss_kib", json!({"before": before, "after": after}));
        report.set(
            "server_bytes_per_connection",
            json!(((after.saturating_sub(before)) * 1024) / args.connections as u64),
        );
    }
    if still_open != args.connections {
        report.fail();
    }
    Ok(report)
}

/// Runs in a helper process: connects its share, says so on stdout, holds until stdin closes.
pub(crate) async fn worker(target: &Arc<Target>, args: IdleWorkerArgs) -> anyhow::Result<()> {
    let (holders, _) = open(
        target,
        &args.run,
        args.first,
        args.connections,
        args.devices,
        args.parallel,
    )
    .await?;
    println!("connected {}", holders.len());
    let mut rest = Vec::new();
    tokio::io::stdin().read_to_end(&mut rest).await?;
    let still_open = holders
        .iter()
        .filter(|holder| !holder.is_finished())
        .count();
    println!("still_open {still_open}");
    Ok(())
}

/// Opens connections `first..first + count` of the run, `parallel` at a time, each held by a
/// task that keeps reading (so pings are answered).
async fn open(
    target: &Arc<Target>,
    run: &str,
    first: usize,
    count: usize,
    devices: usize,
    parallel: usize,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Histogram<u64>)> {
    let mut holders = Vec::with_capacity(count);
    let mut connect_latency = histogram();
    let names: Vec<String> = (first..first + count)
        .map(|i| user_name(run, i / devices))
        .collect();
    // A sliding window of `parallel` connects in flight, not batches: a batch waits for its
    // slowest connect, which made the tail, not the server, set the measured rate.
    let mut connects = super::net::connect_tasks(target, names).buffer_unordered(parallel.max(1));
    while let Some(connected) = connects.next().await {
        let (connected, took) = connected.context("connect task")?.context("connect")?;
        let socket = connected.socket;
        let _ = connect_latency.record(took.as_micros() as u64);
        holders.push(tokio::spawn(async move {
            let mut socket = socket;
            while socket.next_text().await.is_ok() {}
        }));
    }
    Ok((holders, connect_latency))
}

struct Worker {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

fn spawn_worker(
    target: &Target,
    run: &str,
    first: usize,
    count: usize,
    args: &IdleArgs,
) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("find own executable")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "--addr", &target.base_url])
        .args(["--sources", &target.sources().to_string()])
        .env("LANES_BENCH_JWT_SECRET", target.secret())
        .args(["idle-worker", "--run", run])
        .args([
            "--first",
            &first.to_string(),
            "--connections",
            &count.to_string(),
        ])
        .args(["--devices", &args.devices.to_string()])
        .args(["--parallel", &args.parallel.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn bench worker")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("worker stdout")?;
    Ok(Worker {
        child,
        stdin,
        stdout: tokio::io::BufReader::new(stdout).lines(),
    })
}

/// Reads the worker's next `<label> <n>` line.
async fn read_count(worker: &mut Worker, label: &str) -> anyhow::Result<usize> {
    while let Some(line) = worker.stdout.next_line().await? {
        if let Some(count) = line.strip_prefix(label) {
            return Ok(count.trim().parse()?);
        }
    }
    anyhow::bail!("bench worker ended before reporting {label}")
}
