//! `pairs`: U online users in 1:1 pairs; each sends to its partner keeping up to `window` sends
//! unacked (throughput), optionally paced at `rate` msgs/s per user (latency). Reports acked and
//! delivered msgs/s, ack and end-to-end latency, and lost/duplicated counts (must be 0/0).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::FutureExt;
use hdrhistogram::Histogram;
use lanes_protocol::codec::encode_client;
use lanes_protocol::{ClientFrame, ClientMsgId, ConversationId, Seq};
use serde_json::json;
use tokio::time::Instant;

use super::net::{Confirmations, Quick, Target, quick, run_id, user_id, user_name};
use super::report::{Report, histogram, latency_ms};
use super::{CpuTime, SpawnedServer};

#[derive(Args, Clone)]
pub(crate) struct PairsArgs {
    /// Online users (an even number; users 2k and 2k+1 are partners).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Unacked sends each user keeps in flight.
    #[arg(long, default_value_t = 10)]
    window: usize,
    /// Messages per second per user; 0 sends as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Size of each message body in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Users confirm what they received with `received`, as the Rust SDK does by itself.
    #[arg(long)]
    receipts: bool,
    /// With --receipts: at most one `received` per user per interval, as the SDK's
    /// `receipts_interval` (default 1 s); 0 confirms after every read.
    #[arg(long, default_value_t = 1000)]
    receipts_interval_ms: u64,
}

/// What one user saw. Latencies are kept as raw samples (µs) and merged into histograms at the
/// end: a histogram per user (~140 KB zeroed each) made 1,000 users spend the first ~250 ms of
/// a run page-faulting, which showed up as the run's worst latencies.
struct UserResult {
    sent: u64,
    acked: u64,
    received: u64,
    duplicated: u64,
    gaps: u64,
    ack_latency: Vec<u32>,
    e2e_latency: Vec<u32>,
}

fn record_all(histogram: &mut Histogram<u64>, samples: &[u32]) {
    for &micros in samples {
        // Out of range only beyond the histogram's 60 s, which no run lasts.
        let _ = histogram.record(u64::from(micros).max(1));
    }
}

fn micros_u32(micros: u128) -> u32 {
    u32::try_from(micros).unwrap_or(u32::MAX)
}

pub(crate) async fn run(
    target: &Arc<Target>,
    spawned: Option<&SpawnedServer>,
    args: PairsArgs,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.users >= 2 && args.users.is_multiple_of(2),
        "--users must be even and ≥ 2"
    );
    anyhow::ensure!(args.window >= 1, "--window must be ≥ 1");
    let run = run_id();
    let names: Vec<String> = (0..args.users).map(|i| user_name(&run, i)).collect();
    super::net::create_users(target, &names).await?;
    let mut conversations = Vec::with_capacity(args.users / 2);
    for pair in names.chunks(2) {
        let conversation = target
            .api(&pair[0])?
            .create_direct(&user_id(&pair[1])?)
            .await
            .context("create direct conversation")?;
        conversations.push(conversation.conversation_id);
    }
    let connect_started = Instant::now();
    let sockets = super::net::connect_all(target, &names).await?;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let rss_before = spawned.and_then(SpawnedServer::rss_kib);
    let cpu_before = (spawned.and_then(SpawnedServer::cpu_time), CpuTime::of(None));

    let started = Instant::now();
    let send_until = started + Duration::from_secs_f64(args.duration_secs);
    let shared = Arc::new(Shared {
        acked: (0..args.users).map(|_| AtomicU64::new(0)).collect(),
        done: (0..args.users).map(|_| AtomicBool::new(false)).collect(),
    });
    let mut tasks = Vec::with_capacity(args.users);
    for (index, socket) in sockets.into_iter().enumerate() {
        let user = User {
            index,
            me: names[index].clone(),
            conversation_id: conversations[index / 2],
            args: args.clone(),
            started,
            send_until,
            shared: Arc::clone(&shared),
        };
        tasks.push(tokio::spawn(user.run(socket.socket)));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("user task")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss_after = spawned.and_then(SpawnedServer::rss_kib);
    let cpu_after = (spawned.and_then(SpawnedServer::cpu_time), CpuTime::of(None));

    let mut ack_latency = histogram();
    let mut e2e_latency = histogram();
    let (mut sent, mut acked, mut received, mut duplicated, mut gaps) = (0, 0, 0, 0, 0);
    for result in &results {
        sent += result.sent;
        acked += result.acked;
        received += result.received;
        duplicated += result.duplicated;
        gaps += result.gaps;
        record_all(&mut ack_latency, &result.ack_latency);
        record_all(&mut e2e_latency, &result.e2e_latency);
    }
    let lost = acked.saturating_sub(received) + gaps;
    let mut report = Report::new(
        "pairs",
        json!({
            "users": args.users, "window": args.window, "rate_per_user": args.rate,
            "duration_secs": args.duration_secs, "body_bytes": args.body_bytes,
            "receipts": args.receipts, "receipts_interval_ms": args.receipts_interval_ms,
        }),
    );
    report.set(
        "connect_per_s",
        json!((args.users as f64 / connect_secs).round()),
    );
    report.set("sent", json!(sent));
    report.set("acked", json!(acked));
    report.set("delivered", json!(received));
    report.set(
        "acked_per_s",
        json!((acked as f64 / args.duration_secs).round()),
    );
    report.set(
        "delivered_per_s",
        json!((received as f64 / elapsed).round()),
    );
    report.set("ack_latency_ms", latency_ms(&ack_latency));
    report.set("e2e_latency_ms", latency_ms(&e2e_latency));
    report.set("lost", json!(lost));
    report.set("duplicated", json!(duplicated));
    // Per message acked: its commit, its delivery and its ack.
    report.set_cpu(
        "server_cpu_us_per_message",
        cpu_before.0,
        cpu_after.0,
        acked,
    );
    report.set_cpu("bench_cpu_us_per_message", cpu_before.1, cpu_after.1, acked);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.set("server_rss_kib", json!({"before": before, "after": after}));
    }
    if lost > 0 || duplicated > 0 || sent != acked {
        report.fail();
    }
    Ok(report)
}

/// Counters partners read from each other to know when the last message has arrived.
struct Shared {
    acked: Vec<AtomicU64>,
    done: Vec<AtomicBool>,
}

struct User {
    index: usize,
    me: String,
    conversation_id: ConversationId,
    args: PairsArgs,
    started: Instant,
    send_until: Instant,
    shared: Arc<Shared>,
}

/// Body: the send time in µs since `started`, padded to the body size.
fn body(started: Instant, size: usize) -> String {
    let mut body = format!("{}:", started.elapsed().as_micros());
    body.extend(std::iter::repeat_n('x', size.saturating_sub(body.len())));
    body
}

fn sent_at_micros(body: &str) -> Option<u64> {
    body.split_once(':')?.0.parse().ok()
}

impl User {
    /// True once the partner finished sending and everything it had acked has arrived here.
    fn partner_caught_up(&self, received: u64) -> bool {
        let partner = self.index ^ 1;
        self.shared.done[partner].load(Ordering::Acquire)
            && received >= self.shared.acked[partner].load(Ordering::Acquire)
    }

    async fn run(self, mut socket: super::net::Socket) -> anyhow::Result<UserResult> {
        let args = &self.args;
        let mut result = UserResult {
            sent: 0,
            acked: 0,
            received: 0,
            duplicated: 0,
            gaps: 0,
            ack_latency: Vec::new(),
            e2e_latency: Vec::new(),
        };
        let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
        // Stagger paced senders so they do not all fire on the same tick.
        let mut next_send_at =
            self.started + interval.map_or(Duration::ZERO, |i| i.mul_f64(rand::random()));
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        // Each connection sees every seq of its conversation exactly once, its own messages as
        // acks and the partner's as messages, in order: anything else is a gap or a duplicate.
        let mut last_seq = 0u64;
        let mut confirmations =
            Confirmations::new(Duration::from_millis(args.receipts_interval_ms), false);
        let mut received_before = 0u64;
        let drain_deadline = self.send_until + Duration::from_secs(10);
        let mut announced_done = false;
        loop {
            let sending = Instant::now() < self.send_until;
            let mut wrote = false;
            while sending && in_flight.len() < args.window && Instant::now() >= next_send_at {
                let send = ClientFrame::Send {
                    client_msg_id: ClientMsgId::parse(&result.sent.to_string())
                        .map_err(|err| anyhow::anyhow!("{err}"))?,
                    conversation_id: self.conversation_id,
                    body: body(self.started, args.body_bytes),
                    reply_to: None,
                };
                socket.feed_text(&encode_client(&send));
                in_flight.push_back(Instant::now());
                result.sent += 1;
                wrote = true;
                if let Some(interval) = interval {
                    next_send_at += interval;
                }
            }
            if wrote {
                socket.flush().await?;
            }
            if !sending && in_flight.is_empty() {
                if !announced_done {
                    self.shared.acked[self.index].store(result.acked, Ordering::Release);
                    self.shared.done[self.index].store(true, Ordering::Release);
                    announced_done = true;
                }
                if self.partner_caught_up(result.received) || Instant::now() >= drain_deadline {
                    break;
                }
            }
            if let Some(seq) = confirmations.take_due() {
                let received = ClientFrame::Received {
                    conversation_id: self.conversation_id,
                    seq,
                };
                socket.send_text(&encode_client(&received)).await?;
            }
            let wake_at = if sending && in_flight.len() < args.window {
                next_send_at.min(self.send_until)
            } else if sending {
                self.send_until
            } else {
                // Poll the partner's progress now and then while draining.
                (Instant::now() + Duration::from_millis(20)).min(drain_deadline)
            };
            let wake_at = confirmations.due().map_or(wake_at, |due| due.min(wake_at));
            let text = tokio::select! {
                text = socket.next_text() => text?,
                _ = tokio::time::sleep_until(wake_at) => continue,
            };
            self.on_frame(text, &mut result, &mut in_flight, &mut last_seq)?;
            // Frames that already arrived are read before sending again, so the sends they let
            // through go out in one write, as a client flushing its outbox does.
            while let Some(text) = socket.next_text().now_or_never() {
                self.on_frame(text?, &mut result, &mut in_flight, &mut last_seq)?;
            }
            if args.receipts && result.received > received_before {
                received_before = result.received;
                confirmations.received(Seq(last_seq));
            }
        }
        Ok(result)
    }

    /// Counts one frame: an ack of this connection's own oldest unacked send, or a message.
    fn on_frame(
        &self,
        text: &str,
        result: &mut UserResult,
        in_flight: &mut VecDeque<Instant>,
        last_seq: &mut u64,
    ) -> anyhow::Result<()> {
        // Each seq takes its place in the conversation's order: behind the last one is a
        // duplicate, beyond the next one leaves a gap. Says whether it was new.
        let mut place = |seq: u64| {
            if seq <= *last_seq {
                result.duplicated += 1;
                return false;
            }
            result.gaps += seq - *last_seq - 1;
            *last_seq = seq;
            true
        };
        match quick(text) {
            Quick::Ack { seq } => {
                // The ack is this connection's copy of its own message.
                place(seq);
                if let Some(sent_at) = in_flight.pop_front() {
                    result.acked += 1;
                    result
                        .ack_latency
                        .push(micros_u32(sent_at.elapsed().as_micros()));
                }
            }
            Quick::Message { seq, sender, body } => {
                if !place(seq) {
                    return Ok(());
                }
                if sender != self.me {
                    result.received += 1;
                    if let Some(sent_at) = sent_at_micros(body) {
                        let now = self.started.elapsed().as_micros();
                        result
                            .e2e_latency
                            .push(micros_u32(now.saturating_sub(u128::from(sent_at))));
                    }
                }
            }
            Quick::Error => {
                let error = lanes_protocol::codec::decode_server(text);
                anyhow::bail!("server error: {error:?}");
            }
            Quick::Other => {}
        }
        Ok(())
    }
}
