//! `longpoll`: W long-poll waiters held open at once (each a user polling `GET /v1/events` with
//! nothing to receive), then one message to a group of all of them wakes every poll. Reports the
//! server's resident memory per waiter and how fast the waiters were answered.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::SpawnedServer;
use super::net::{Target, run_id, user_id, user_name};
use super::report::{Report, histogram, latency_ms};

#[derive(Args, Clone)]
pub(crate) struct LongpollArgs {
    /// Polls waiting at once (one user each).
    #[arg(long, default_value_t = 5_000)]
    waiters: usize,
    /// How long to hold them all before measuring, in seconds.
    #[arg(long, default_value_t = 2.0)]
    hold_secs: f64,
}

/// The server's gauge of online users, from `/metrics`.
async fn online_users(http: &reqwest::Client, base_url: &str) -> anyhow::Result<usize> {
    let text = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix("lanes_online_users "))
        .context("lanes_online_users missing from /metrics")?
        .trim()
        .parse()
        .context("parse lanes_online_users")
}

pub(crate) async fn run(
    target: &Target,
    spawned: Option<&SpawnedServer>,
    args: LongpollArgs,
) -> anyhow::Result<Report> {
    anyhow::ensure!(args.waiters > 0, "nothing to hold");
    anyhow::ensure!(
        args.waiters < lanes_protocol::limits::GROUP_MEMBERS_DEFAULT,
        "at most {} waiters (one group holds them all)",
        lanes_protocol::limits::GROUP_MEMBERS_DEFAULT - 1
    );
    let run = run_id();
    let names: Vec<String> = (0..args.waiters).map(|i| user_name(&run, i)).collect();
    let sender = format!("{run}-sender");
    let mut everyone = names.clone();
    everyone.push(sender.clone());
    super::net::create_users(target, &everyone).await?;
    let members = names
        .iter()
        .map(|name| user_id(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sender_api = target.api(&sender)?;
    let group = sender_api
        .create_group("longpoll bench", &members)
        .await
        .context("create the group")?
        .conversation_id;
    let metrics = reqwest::Client::new();
    let base_online = online_users(&metrics, &target.base_url).await?;
    let rss_before = spawned.and_then(SpawnedServer::rss_kib);

    // One HTTP client per source address: each waiting poll holds its own connection.
    let clients = (0..target.sources())
        .map(|index| {
            reqwest::Client::builder()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + index)))
                .build()
                .context("build an HTTP client")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut waiters = Vec::with_capacity(args.waiters);
    for (index, name) in names.iter().enumerate() {
        let client = clients[index % clients.len()].clone();
        let url = format!("{}/v1/events?timeout_ms=60000", target.base_url);
        let token = target.token(name)?;
        waiters.push(tokio::spawn(async move {
            let page: Value = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::Ok((page, Instant::now()))
        }));
    }
    // Every poll is waiting once every waiter counts as online.
    let deadline = Instant::now() + Duration::from_secs(120);
    while online_users(&metrics, &target.base_url).await? < base_online + args.waiters {
        if Instant::now() > deadline {
            bail!("the polls did not all reach the server within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
    let rss_waiting = spawned.and_then(SpawnedServer::rss_kib);
    let still_waiting = waiters
        .iter()
        .filter(|waiter| !waiter.is_finished())
        .count();

    let sent_at = Instant::now();
    sender_api
        .append(
            group,
            lanes_protocol::ClientMsgId::parse("wake")?,
            lanes_protocol::Content::Message {
                body: "wake up".into(),
                reply_to: None,
            },
        )
        .await
        .context("send the wake-up message")?;
    let mut woken = histogram();
    let mut answered = 0;
    for waiter in waiters {
        let (page, at) = waiter.await??;
        let got_it = page["events"].as_array().is_some_and(|events| {
            events
                .iter()
                .any(|event| event["type"] == "message" && event["body"] == "wake up")
        });
        if got_it {
            answered += 1;
            let micros = at.duration_since(sent_at).as_micros();
            let _ = woken.record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
        }
    }
    let wake_secs = sent_at.elapsed().as_secs_f64();

    let mut report = Report::new("longpoll", json!({"waiters": args.waiters}));
    report.set("open_secs", json!(open_secs));
    report.set("still_waiting_before_wake", json!(still_waiting));
    report.set("answered", json!(answered));
    report.set("wake_all_secs", json!(wake_secs));
    report.set("wake_latency_ms", latency_ms(&woken));
    if let (Some(before), Some(after)) = (rss_before, rss_waiting) {
        report.set(
            "server_rss_kib",
            json!({"before": before, "waiting": after}),
        );
        report.set(
            "server_bytes_per_waiter",
            json!(((after.saturating_sub(before)) * 1024) / args.waiters as u64),
        );
    }
    if answered != args.waiters || still_waiting != args.waiters {
        report.fail();
    }
    Ok(report)
}
