//! `fanout`: one group of G online members; `senders` of them send at a combined `rate` msgs/s.
//! Reports deliveries/s and, per message, the time until the last member received it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lanes_protocol::codec::encode_client;
use lanes_protocol::{ClientFrame, ClientMsgId, ConversationId, Seq, ServerFrame};
use serde_json::json;
use tokio::time::Instant;

use super::net::{
    Confirmations, Quick, Socket, Target, create_users, leading_number, next_frame, quick, run_id,
    user_id, user_name,
};
use super::report::Report;
use super::{CpuTime, SpawnedServer};

#[derive(Args, Clone)]
pub(crate) struct FanoutArgs {
    /// Members of the group (all online).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Combined send rate, msgs/s.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Members that send (round-robin).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Size of each message body in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Members confirm what they receive with `received`, as the Rust SDK does by itself.
    #[arg(long)]
    receipts: bool,
    /// With --receipts: at most one `received` per member per interval, as the SDK's
    /// `receipts_interval` (default 1 s); 0 confirms every message.
    #[arg(long, default_value_t = 1000)]
    receipts_interval_ms: u64,
    /// The same in a group the server calls large (`synced`'s `large`: more members than its
    /// `receipts_members_max`), as the SDK's `receipts_interval_large` (default 30 s).
    #[arg(long, default_value_t = 30_000)]
    receipts_interval_large_ms: u64,
}

pub(crate) async fn run(
    target: &Arc<Target>,
    spawned: Option<&SpawnedServer>,
    args: FanoutArgs,
) -> anyhow::Result<Report> {
    anyhow::ensure!(args.members >= 2, "--members must be ≥ 2");
    anyhow::ensure!(
        args.senders >= 1 && args.senders <= args.members,
        "bad --senders"
    );
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let run = run_id();
    let names: Vec<String> = (0..args.members).map(|i| user_name(&run, i)).collect();
    create_users(target, &names).await?;
    let others = names[1..]
        .iter()
        .map(|name| user_id(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let group = target
        .api(&names[0])?
        .create_group("fanout", &others)
        .await
        .context("create group")?
        .conversation_id;
    let connections = super::net::connect_all(target, &names).await?;
    let told_large = connections
        .iter()
        .filter(|connected| connected.large.contains(&group))
        .count();
    let total = (args.rate * args.duration_secs).ceil() as usize;
    let slowest = Arc::new(Slowest::new(total));
    let cpu_before = (spawned.and_then(SpawnedServer::cpu_time), CpuTime::of(None));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_secs) + Duration::from_secs(30);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (index, connected) in connections.into_iter().enumerate() {
        if index < args.senders {
            senders.push(connected.socket);
            continue;
        }
        let slowest = Arc::clone(&slowest);
        let large = connected.large.contains(&group);
        let interval_ms = if large {
            args.receipts_interval_large_ms
        } else {
            args.receipts_interval_ms
        };
        let socket = connected.socket;
        let confirm = args.receipts.then(|| {
            let interval = Duration::from_millis(interval_ms);
            (group, Confirmations::new(interval, large))
        });
        receivers.push(tokio::spawn(async move {
            let mut socket = socket;
            let mut counts = Counts::default();
            let received = tokio::time::timeout_at(
                deadline,
                receive(&mut socket, total, started, &slowest, confirm, &mut counts),
            )
            .await;
            // Complete, or late (then only its arrivals count).
            let complete = match received {
                Ok(received) => received.map(|()| 1)?,
                Err(_) => 0,
            };
            // The socket stays open until every member is done: closing it while others still
            // wait for the last message would make the server and the bench handle thousands
            // of disconnects inside that message's measured time.
            anyhow::Ok((complete, counts, socket))
        }));
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut acked = 0;
    for n in 0..total {
        tokio::time::sleep_until(started + interval.mul_f64(n as f64)).await;
        let sender = &mut senders[n % args.senders];
        let body = format!("{n}:{}", started.elapsed().as_micros());
        let send = ClientFrame::Send {
            client_msg_id: ClientMsgId::parse(&format!("f{n}"))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            conversation_id: group,
            body: format!(
                "{body}{}",
                "x".repeat(args.body_bytes.saturating_sub(body.len()))
            ),
            reply_to: None,
        };
        sender.send_text(&encode_client(&send)).await?;
    }
    // Senders also receive every message: read their acks (they are not counted as receivers).
    for (index, sender) in senders.iter_mut().enumerate() {
        let expected = (index..total).step_by(args.senders).count();
        acked += drain_acks(sender, expected, deadline).await?;
    }
    let (mut complete, mut deliveries, mut other_bytes, mut confirmations) = (0, 0, 0, 0);
    let mut open = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        let (done, counts, socket) = receiver.await.context("receiver")??;
        complete += done;
        deliveries += counts.arrivals;
        other_bytes += counts.other_bytes;
        confirmations += counts.confirmations;
        open.push(socket);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = (spawned.and_then(SpawnedServer::cpu_time), CpuTime::of(None));
    drop(open);
    let receivers_count = args.members - args.senders;
    let mut report = Report::new(
        "fanout",
        json!({
            "members": args.members, "rate": args.rate, "senders": args.senders,
            "duration_secs": args.duration_secs, "body_bytes": args.body_bytes,
            "receipts": args.receipts, "receipts_interval_ms": args.receipts_interval_ms,
            "receipts_interval_large_ms": args.receipts_interval_large_ms,
        }),
    );
    let lost = report.set_reach(
        (0..total).map(|message| slowest.latest(message)),
        deliveries,
        (total * receivers_count) as u64,
        elapsed,
    );
    report.set("acked", json!(acked));
    report.set(
        "other_bytes_per_member",
        json!(other_bytes.checked_div(receivers_count as u64).unwrap_or(0)),
    );
    report.set("receivers_complete", json!(complete));
    // From the first send until every member is done: what each delivery cost the two sides.
    report.set_cpu(
        "server_cpu_us_per_delivery",
        cpu_before.0,
        cpu_after.0,
        deliveries,
    );
    report.set_cpu(
        "bench_cpu_us_per_delivery",
        cpu_before.1,
        cpu_after.1,
        deliveries,
    );
    report.set("confirmations", json!(confirmations));
    // Members whose `synced` called the group large.
    report.set("members_told_large", json!(told_large));
    if let Some(rss) = spawned.and_then(SpawnedServer::rss_kib) {
        report.set("server_rss_kib", json!(rss));
    }
    if lost > 0 || complete != receivers_count || acked != total as u64 {
        report.fail();
    }
    Ok(report)
}

/// Reads a sender's frames until its `expected` acks arrived (or the deadline).
async fn drain_acks(
    socket: &mut Socket,
    expected: usize,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let mut acks = 0;
    while acks < expected as u64 {
        match tokio::time::timeout_at(deadline, next_frame(socket)).await {
            Ok(Ok(ServerFrame::Ack(_))) => acks += 1,
            Ok(Ok(ServerFrame::Error(error))) => anyhow::bail!("send refused: {error:?}"),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => break,
        }
    }
    Ok(acks)
}

/// What one member received.
#[derive(Default)]
struct Counts {
    /// Messages.
    arrivals: u64,
    /// Bytes of every other frame (receipts, presence…).
    other_bytes: u64,
    /// `received` frames sent.
    confirmations: u64,
}

/// Reads until all `total` messages arrived, counting them; confirms them with `received` when
/// `confirm` names the conversation.
/// Thousands of receivers share the cores with the server, so they read only what they check
/// (seq and the body's `n:send-time`) instead of decoding whole frames, count locally, and have
/// the caller put one deadline on the whole read rather than a timer on every frame.
async fn receive(
    socket: &mut Socket,
    total: usize,
    started: Instant,
    slowest: &Slowest,
    mut confirm: Option<(ConversationId, Confirmations)>,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let mut last_seq = 0;
    while last_seq < total as u64 {
        confirm_due(socket, &mut confirm, counts).await?;
        let due = confirm
            .as_ref()
            .and_then(|(_, confirmations)| confirmations.due());
        let text = match due {
            Some(due) => tokio::select! {
                text = socket.next_text() => text?,
                () = tokio::time::sleep_until(due) => continue,
            },
            None => socket.next_text().await?,
        };
        let (seq, body) = match quick(text) {
            Quick::Message { seq, body, .. } => (seq, body),
            // A refused `received`, say: the run must not pass over it.
            Quick::Error => anyhow::bail!(
                "server error: {:?}",
                lanes_protocol::codec::decode_server(text)
            ),
            Quick::Ack { .. } | Quick::Other => {
                counts.other_bytes += text.len() as u64;
                continue;
            }
        };
        anyhow::ensure!(seq == last_seq + 1, "gap or duplicate at seq {seq}");
        last_seq = seq;
        counts.arrivals += 1;
        let parsed = body
            .split_once(':')
            .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, leading_number(rest)?)));
        if let Some((n, sent_at)) = parsed {
            let latency = (started.elapsed().as_micros() as u64).saturating_sub(sent_at);
            slowest.record(n, latency);
        }
        if let Some((_, confirmations)) = &mut confirm {
            confirmations.received(Seq(seq));
        }
    }
    confirm_due(socket, &mut confirm, counts).await
}

/// Sends the `received` that is due, if one is.
async fn confirm_due(
    socket: &mut Socket,
    confirm: &mut Option<(ConversationId, Confirmations)>,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    if let Some((conversation_id, confirmations)) = confirm
        && let Some(seq) = confirmations.take_due()
    {
        let received = ClientFrame::Received {
            conversation_id: *conversation_id,
            seq,
        };
        socket.send_text(&encode_client(&received)).await?;
        counts.confirmations += 1;
    }
    Ok(())
}

/// Shards of `Slowest`: more than the runtime's threads, so each thread writes its own.
const SHARDS: usize = 8;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

/// Per message, the latest arrival (µs after its send) over all members. Kept per thread
/// shard: with one cell per message, every delivery on either core wrote the same cache line.
struct Slowest {
    messages: usize,
    cells: Vec<AtomicU64>,
}

impl Slowest {
    fn new(messages: usize) -> Slowest {
        Slowest {
            messages,
            cells: (0..messages * SHARDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, message: usize, latency: u64) {
        if message < self.messages {
            let cell = SHARD.with(|shard| &self.cells[shard * self.messages + message]);
            cell.fetch_max(latency, Ordering::Relaxed);
        }
    }

    /// The latest arrival of `message` over all shards.
    fn latest(&self, message: usize) -> u64 {
        (0..SHARDS)
            .map(|shard| self.cells[shard * self.messages + message].load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}
