//! `storm`: N connected clients in groups while a feeder keeps sending; the spawned server is
//! killed (SIGKILL) and restarted. Every client reconnects with full-jitter backoff and resumes
//! from its cursor. Reports the time until every client has resynced, and lost/duplicated counts.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lanes_protocol::codec::encode_client;
use lanes_protocol::{ClientFrame, ClientMsgId, ConversationId, Cursor, Seq, ServerFrame};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::SpawnedServer;
use super::net::{Target, create_users, next_frame, run_id, user_id, user_name};
use super::report::{Report, histogram, latency_ms};

#[derive(Args, Clone)]
pub(crate) struct StormArgs {
    /// Connected clients.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Clients per group (each group gets the feeder's messages).
    #[arg(long, default_value_t = 100)]
    group_size: usize,
    /// Feeder messages per second (round-robin over the groups).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of traffic before the crash, and again after every client is back.
    #[arg(long, default_value_t = 1.0)]
    settle_secs: f64,
    /// Reconnect backoff: first ceiling, in milliseconds (full jitter below it).
    #[arg(long, default_value_t = 100)]
    backoff_base_ms: u64,
    /// Reconnect backoff: largest ceiling, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    backoff_max_ms: u64,
}

/// Shared by the clients: when the crash happened and how far each is.
struct Shared {
    crashed_at: Mutex<Option<Instant>>,
    /// µs from the crash to each client's first `synced` after it.
    resynced_after: Mutex<Vec<u64>>,
    duplicated: AtomicU64,
    gaps: AtomicU64,
    stop: AtomicBool,
    /// Final head of each group, known once the feeder is done.
    heads: Vec<AtomicU64>,
    feeder_done: AtomicBool,
}

pub(crate) async fn run(
    target: &Target,
    spawned: Option<&mut SpawnedServer>,
    args: StormArgs,
) -> anyhow::Result<Report> {
    let spawned = spawned.context("storm restarts the server: run it with --spawn")?;
    anyhow::ensure!(
        args.clients >= 1 && args.group_size >= 1,
        "nothing to storm"
    );
    let run = run_id();
    let names: Vec<String> = (0..args.clients).map(|i| user_name(&run, i)).collect();
    let feeder = format!("bench-{run}-feeder");
    create_users(target, &names).await?;
    create_users(target, std::slice::from_ref(&feeder)).await?;
    let mut groups = Vec::new();
    for chunk in names.chunks(args.group_size) {
        let members = chunk
            .iter()
            .map(|name| user_id(name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        groups.push(
            target
                .api(&feeder)?
                .create_group("storm", &members)
                .await?
                .conversation_id,
        );
    }
    let shared = Arc::new(Shared {
        crashed_at: Mutex::new(None),
        resynced_after: Mutex::new(Vec::new()),
        duplicated: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        heads: groups.iter().map(|_| AtomicU64::new(0)).collect(),
        feeder_done: AtomicBool::new(false),
    });
    let target = Arc::new(Target::new(
        &target.base_url,
        target.secret(),
        target.sources(),
    ));
    let mut sockets = Vec::with_capacity(args.clients);
    for chunk in names.chunks(256) {
        let connects = chunk.iter().map(|name| target.connect(name, Vec::new()));
        for connected in futures_util::future::try_join_all(connects).await? {
            sockets.push(connected.socket);
        }
    }
    let mut clients = Vec::new();
    for (index, (name, socket)) in names.iter().zip(sockets).enumerate() {
        let group_index = index / args.group_size;
        clients.push(tokio::spawn(client(
            Arc::clone(&target),
            name.clone(),
            groups[group_index],
            group_index,
            socket,
            args.clone(),
            Arc::clone(&shared),
        )));
    }
    let feeder_task = tokio::spawn(feed(
        Arc::clone(&target),
        feeder,
        groups.clone(),
        args.clone(),
        Arc::clone(&shared),
    ));
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;

    *shared.crashed_at.lock().await = Some(Instant::now());
    let restart_started = Instant::now();
    spawned.crash_and_restart()?;
    let restart_secs = restart_started.elapsed().as_secs_f64();
    // Wait until every client has resynced once after the crash.
    let wait_until = Instant::now() + Duration::from_secs(120);
    while shared.resynced_after.lock().await.len() < args.clients && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    shared.stop.store(true, Ordering::Release);
    let sent = feeder_task.await.context("feeder")??;
    let mut lost = 0;
    for client in clients {
        lost += client.await.context("client")??;
    }
    let resynced = shared.resynced_after.lock().await.clone();
    let mut resync = histogram();
    for micros in &resynced {
        let _ = resync.record((*micros).max(1));
    }
    let duplicated = shared.duplicated.load(Ordering::Relaxed);
    let gaps = shared.gaps.load(Ordering::Relaxed);
    let mut report = Report::new(
        "storm",
        json!({
            "clients": args.clients, "group_size": args.group_size, "rate": args.rate,
            "backoff_base_ms": args.backoff_base_ms, "backoff_max_ms": args.backoff_max_ms,
        }),
    );
    report.set("restart_secs", json!(restart_secs));
    report.set("resynced_clients", json!(resynced.len()));
    report.set("resync_after_crash_ms", latency_ms(&resync));
    report.set("messages_acked", json!(sent));
    report.set("lost", json!(lost + gaps));
    report.set("duplicated", json!(duplicated));
    if lost + gaps > 0 || duplicated > 0 || resynced.len() != args.clients {
        report.fail();
    }
    Ok(report)
}

/// The SDK's reconnect backoff (full jitter), so the storm measures what real clients do.
fn backoff(args: &StormArgs, attempt: u32) -> Duration {
    lanes_client::full_jitter(
        Duration::from_millis(args.backoff_base_ms),
        Duration::from_millis(args.backoff_max_ms),
        attempt,
        rand::random(),
    )
}

/// Receives its group's messages across reconnects; returns how many it never got.
async fn client(
    target: Arc<Target>,
    name: String,
    conversation: ConversationId,
    group_index: usize,
    first: super::net::Socket,
    args: StormArgs,
    shared: Arc<Shared>,
) -> anyhow::Result<u64> {
    let mut socket = Some(first);
    let mut last_seq = 0u64;
    let mut attempt = 0u32;
    let mut resynced_after_crash = false;
    let mut give_up_at: Option<Instant> = None;
    loop {
        let Some(ws) = socket.as_mut() else {
            tokio::time::sleep(backoff(&args, attempt)).await;
            attempt += 1;
            let cursor = Cursor {
                conversation_id: conversation,
                seq: Seq(last_seq),
            };
            match target.connect(&name, vec![cursor]).await {
                Ok(connected) => {
                    let ws = connected.socket;
                    for message in connected.caught_up {
                        check(&shared, &mut last_seq, message.seq.0);
                    }
                    attempt = 0;
                    if let Some(crashed_at) = *shared.crashed_at.lock().await
                        && !resynced_after_crash
                    {
                        resynced_after_crash = true;
                        shared
                            .resynced_after
                            .lock()
                            .await
                            .push(crashed_at.elapsed().as_micros() as u64);
                    }
                    socket = Some(ws);
                }
                Err(_) => continue,
            }
            continue;
        };
        if shared.feeder_done.load(Ordering::Acquire) {
            let missing = shared.heads[group_index]
                .load(Ordering::Acquire)
                .saturating_sub(last_seq);
            let give_up_at =
                *give_up_at.get_or_insert_with(|| Instant::now() + Duration::from_secs(30));
            if missing == 0 || Instant::now() >= give_up_at {
                return Ok(missing);
            }
        }
        let frame = tokio::select! {
            frame = next_frame(ws) => frame,
            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
        };
        match frame {
            Ok(ServerFrame::Message(message)) => check(&shared, &mut last_seq, message.seq.0),
            Ok(_) => {}
            Err(_) => socket = None,
        }
    }
}

fn check(shared: &Shared, last_seq: &mut u64, seq: u64) {
    if seq <= *last_seq {
        shared.duplicated.fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared
        .gaps
        .fetch_add(seq - *last_seq - 1, Ordering::Relaxed);
    *last_seq = seq;
}

/// Sends round-robin to the groups at the rate until told to stop, reconnecting and resending
/// unacked messages under their original ids. Returns how many were acked.
async fn feed(
    target: Arc<Target>,
    name: String,
    groups: Vec<ConversationId>,
    args: StormArgs,
    shared: Arc<Shared>,
) -> anyhow::Result<u64> {
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut unacked: VecDeque<(usize, ClientFrame)> = VecDeque::new();
    let mut next = 0usize;
    let mut acked = 0u64;
    let mut socket = None;
    let mut attempt = 0;
    let mut next_send_at = Instant::now();
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        if stopping && unacked.is_empty() {
            break;
        }
        let Some(ws) = socket.as_mut() else {
            tokio::time::sleep(backoff(&args, attempt)).await;
            attempt += 1;
            if let Ok(connected) = target.connect(&name, Vec::new()).await {
                let mut ws = connected.socket;
                attempt = 0;
                let mut resent = true;
                for (_, frame) in &unacked {
                    if ws.send_text(&encode_client(frame)).await.is_err() {
                        resent = false;
                        break;
                    }
                }
                if resent {
                    socket = Some(ws);
                }
            }
            continue;
        };
        if !stopping && Instant::now() >= next_send_at {
            let group = next % groups.len();
            let frame = ClientFrame::Send {
                client_msg_id: ClientMsgId::parse(&format!("s{next}"))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                conversation_id: groups[group],
                body: format!("storm {next}"),
                reply_to: None,
            };
            next += 1;
            next_send_at += interval;
            if ws.send_text(&encode_client(&frame)).await.is_err() {
                socket = None;
            }
            unacked.push_back((group, frame));
            continue;
        }
        let frame = tokio::select! {
            frame = next_frame(ws) => frame,
            _ = tokio::time::sleep_until(next_send_at) => continue,
        };
        match frame {
            Ok(ServerFrame::Ack(ack)) => {
                if let Some(position) = unacked.iter().position(|(_, frame)| {
                    matches!(frame, ClientFrame::Send { client_msg_id, .. } if *client_msg_id == ack.client_msg_id)
                }) && let Some((group, _)) = unacked.remove(position)
                {
                    acked += 1;
                    shared.heads[group].fetch_max(ack.seq.0, Ordering::AcqRel);
                }
            }
            Ok(ServerFrame::Error(error)) => anyhow::bail!("feeder send refused: {error:?}"),
            Ok(_) => {}
            Err(_) => socket = None,
        }
    }
    shared.feeder_done.store(true, Ordering::Release);
    Ok(acked)
}
