//! `idle`: C authenticated connections held open (answering the server's pings); reports the
//! connect rate and the server's resident memory per connection.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::SpawnedServer;
use super::net::{Target, run_id, user_name};
use super::report::Report;

#[derive(Args, Clone)]
pub(crate) struct IdleArgs {
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections per user (devices); users = connections / devices.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// How long to hold them all before measuring, in seconds.
    #[arg(long, default_value_t = 2.0)]
    hold_secs: f64,
}

pub(crate) async fn run(
    target: &Target,
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

    let started = Instant::now();
    let mut holders = Vec::with_capacity(args.connections);
    let names: Vec<&String> = (0..args.connections)
        .map(|i| &users[i / args.devices])
        .collect();
    let mut connect_latency = super::report::histogram();
    for chunk in names.chunks(args.parallel.max(1)) {
        let connects = chunk.iter().map(|name| async move {
            let started = Instant::now();
            let connected = target.connect(name, Vec::new()).await?;
            anyhow::Ok((connected, started.elapsed()))
        });
        for ((socket, _), took) in futures_util::future::try_join_all(connects)
            .await
            .context("connect")?
        {
            let _ = connect_latency.record(took.as_micros() as u64);
            // Reading keeps the socket answering pings; nothing else arrives.
            holders.push(tokio::spawn(async move {
                let mut socket = socket;
                while let Some(Ok(_)) = socket.next().await {}
            }));
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
    let rss_after = spawned.and_then(SpawnedServer::rss_kib);
    let still_open = holders
        .iter()
        .filter(|holder| !holder.is_finished())
        .count();
    for holder in &holders {
        holder.abort();
    }

    let mut report = Report::new(
        "idle",
        json!({"connections": args.connections, "devices": args.devices, "parallel": args.parallel}),
    );
    report.set("connect_secs", json!(connect_secs));
    report.set(
        "connect_per_s",
        json!((args.connections as f64 / connect_secs).round()),
    );
    report.set("still_open", json!(still_open));
    report.set(
        "connect_latency_ms",
        super::report::latency_ms(&connect_latency),
    );
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
