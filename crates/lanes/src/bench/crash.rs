//! `crash`: the crash-safety proof. Clients (the Rust SDK) send continuously into groups while
//! the spawned server is killed with SIGKILL at random moments and restarted, `--kills` times.
//! Each client records what it was acked and what it received. Afterwards an independent
//! checker reads every conversation back over HTTP and verifies, against those records: every
//! acked (conversation, client_msg_id) is stored exactly once at its acked seq; seqs are
//! gap-free; each sender's messages are stored in the order they were acked; and every client
//! received every message of its conversations, once and in order. Finally the store's own
//! integrity check runs on the data left behind.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lanes_client::{Client, ClientConfig, ConversationId, Event, MessageFrame, Seq};
use lanes_protocol::ClientMsgId;
use rand::Rng;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::SpawnedServer;
use super::net::{Target, create_users, run_id, user_id, user_name};
use super::report::Report;

#[derive(Args, Clone)]
pub(crate) struct CrashArgs {
    /// SIGKILLs (each followed by a restart).
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Sending clients.
    #[arg(long, default_value_t = 24)]
    clients: usize,
    /// Clients per group conversation.
    #[arg(long, default_value_t = 4)]
    group_size: usize,
    /// Shortest time between a restart and the next kill, in milliseconds.
    #[arg(long, default_value_t = 100)]
    min_up_ms: u64,
    /// Longest time between a restart and the next kill, in milliseconds.
    #[arg(long, default_value_t = 700)]
    max_up_ms: u64,
}

/// What one client saw.
#[derive(Default)]
struct Record {
    /// (conversation, client_msg_id, acked seq), in ack order.
    acked: Vec<(ConversationId, String, Seq)>,
    /// Messages delivered to the app, in delivery order.
    received: Vec<MessageFrame>,
}

/// What the store holds, by conversation, ascending.
type Stored = HashMap<ConversationId, Vec<MessageFrame>>;

/// The checker's findings.
#[derive(Default, Debug, PartialEq, Eq)]
struct Findings {
    lost: usize,
    duplicated: usize,
    misplaced: usize,
    gaps: usize,
    out_of_order: usize,
    not_resumed: usize,
}

pub(crate) async fn run(
    target: &Target,
    spawned: Option<&mut SpawnedServer>,
    args: CrashArgs,
) -> anyhow::Result<Report> {
    let spawned = spawned.context("crash kills the server: run it with --spawn")?;
    anyhow::ensure!(
        args.clients >= 2 && args.group_size >= 2 && args.min_up_ms <= args.max_up_ms,
        "need at least two clients per group and min-up-ms <= max-up-ms"
    );
    let run = run_id();
    let names: Vec<String> = (0..args.clients).map(|i| user_name(&run, i)).collect();
    create_users(target, &names).await?;
    let mut group_of: HashMap<String, ConversationId> = HashMap::new();
    let mut groups = Vec::new();
    for chunk in names.chunks(args.group_size) {
        let members = chunk
            .iter()
            .skip(1)
            .map(|name| user_id(name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let group = target
            .api(&chunk[0])?
            .create_group("crash", &members)
            .await
            .context("create a group")?
            .conversation_id;
        for name in chunk {
            group_of.insert(name.clone(), group);
        }
        groups.push(group);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for name in &names {
        let mut config = ClientConfig::new(&target.base_url, &target.token(name)?);
        config.backoff_base = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(500);
        config.ack_timeout = Duration::from_secs(3);
        let (client, mut events) = Client::connect(config)
            .await
            .with_context(|| format!("connect {name}"))?;
        let record = Arc::new(Mutex::new(Record::default()));
        let receiver = {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    if let Event::Message(message) = event {
                        record.lock().await.received.push(message);
                    }
                }
            })
        };
        let sender = {
            let (client, record, stop) = (client.clone(), Arc::clone(&record), Arc::clone(&stop));
            let (name, group) = (name.clone(), group_of[name]);
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{name}-{n}");
                    let client_msg_id = ClientMsgId::parse(&id)?;
                    // Retried by the SDK under the same id across every crash until acked.
                    let ack = client
                        .send_with_id(group, client_msg_id, &format!("{name} {n}"))
                        .await
                        .with_context(|| format!("send {id}"))?;
                    record.lock().await.acked.push((group, id, ack.seq));
                    n += 1;
                }
                anyhow::Ok(())
            })
        };
        clients.push((name.clone(), client, record));
        tasks.push((sender, receiver));
    }

    let started = Instant::now();
    let mut rng = rand::thread_rng();
    for _ in 0..args.kills {
        let up = rng.gen_range(args.min_up_ms..=args.max_up_ms);
        tokio::time::sleep(Duration::from_millis(up)).await;
        spawned.crash_and_restart()?;
    }
    tokio::time::sleep(Duration::from_millis(args.max_up_ms)).await;
    stop.store(true, Ordering::Relaxed);
    let mut senders_failed = 0;
    for (sender, _) in &mut tasks {
        match sender.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!("a sender failed: {err:#}");
                senders_failed += 1;
            }
            Err(err) => {
                tracing::error!("a sender panicked: {err}");
                senders_failed += 1;
            }
        }
    }
    let traffic_secs = started.elapsed().as_secs_f64();

    // The stored truth, read over HTTP.
    let mut stored: Stored = HashMap::new();
    for (index, group) in groups.iter().enumerate() {
        let api = target.api(&names[index * args.group_size])?;
        let mut all: Vec<MessageFrame> = Vec::new();
        loop {
            let after = all.last().map_or(Seq::ZERO, |message| message.seq);
            let page = api.history_after(*group, after, 500).await?;
            let more = page.has_more;
            all.extend(page.messages);
            if !more {
                break;
            }
        }
        stored.insert(*group, all);
    }
    // Every client must catch up to the head of its group by itself (resume after the crashes).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut behind = 0;
        for (name, _, record) in &clients {
            let head = stored[&group_of[name]].len();
            if record.lock().await.received.len() < head {
                behind += 1;
            }
        }
        if behind == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut records = Vec::new();
    for (name, client, record) in &clients {
        let record = std::mem::take(&mut *record.lock().await);
        records.push((group_of[name], record));
        client.close().await;
    }
    let findings = check(&stored, &records);
    let acked_total: usize = records.iter().map(|(_, record)| record.acked.len()).sum();
    for (_, receiver) in tasks {
        receiver.abort();
    }
    // The server is stopped by the report's end; check the files it leaves behind.
    let integrity = spawned.stop_and_check_integrity();

    let mut report = Report::new(
        "crash",
        json!({
            "kills": args.kills, "clients": args.clients, "group_size": args.group_size,
            "min_up_ms": args.min_up_ms, "max_up_ms": args.max_up_ms,
        }),
    );
    report.set("traffic_secs", json!(traffic_secs));
    report.set("acked", json!(acked_total));
    report.set(
        "stored",
        json!(stored.values().map(Vec::len).sum::<usize>()),
    );
    report.set("lost", json!(findings.lost));
    report.set("duplicated", json!(findings.duplicated));
    report.set("misplaced", json!(findings.misplaced));
    report.set("gaps", json!(findings.gaps));
    report.set("out_of_order", json!(findings.out_of_order));
    report.set("not_resumed", json!(findings.not_resumed));
    report.set("senders_failed", json!(senders_failed));
    report.set(
        "integrity",
        json!(
            integrity
                .as_ref()
                .map_or_else(|err| format!("{err:#}"), |()| "ok".into())
        ),
    );
    if findings.lost
        + findings.duplicated
        + findings.misplaced
        + findings.gaps
        + findings.out_of_order
        + findings.not_resumed
        + senders_failed
        > 0
        || integrity.is_err()
        || acked_total == 0
    {
        report.fail();
    }
    Ok(report)
}

/// The independent checker: what the store holds (`stored`, by conversation, ascending) against
/// what each client (with its conversation) recorded.
fn check(stored: &Stored, clients: &[(ConversationId, Record)]) -> Findings {
    let mut findings = Findings::default();
    for messages in stored.values() {
        for (index, message) in messages.iter().enumerate() {
            if message.seq.0 != index as u64 + 1 {
                findings.gaps += 1;
            }
        }
        let mut ids = HashSet::new();
        for message in messages {
            if !ids.insert((message.sender_id.clone(), message.client_msg_id.clone())) {
                findings.duplicated += 1;
            }
        }
    }
    for (group, record) in clients {
        let messages = stored.get(group).map_or(&[][..], Vec::as_slice);
        let mut last_seq = Seq::ZERO;
        for (conversation, id, seq) in &record.acked {
            let copies: Vec<&MessageFrame> = messages
                .iter()
                .filter(|message| message.client_msg_id.as_str() == id)
                .collect();
            match copies.as_slice() {
                [] => findings.lost += 1,
                [one] if one.seq == *seq && conversation == group => {}
                [_] => findings.misplaced += 1,
                _ => findings.duplicated += 1,
            }
            // A sender's messages are stored in the order they were acked.
            if *seq <= last_seq {
                findings.out_of_order += 1;
            }
            last_seq = *seq;
        }
        let received: Vec<u64> = record
            .received
            .iter()
            .map(|message| message.seq.0)
            .collect();
        let expected: Vec<u64> = messages.iter().map(|message| message.seq.0).collect();
        if received != expected {
            findings.not_resumed += 1;
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_protocol::{MessageId, UnixMillis, UserId};

    fn message(seq: u64, id: &str) -> MessageFrame {
        MessageFrame::new_message(
            ConversationId(1),
            Seq(seq),
            MessageId(seq),
            UserId::parse("alice").unwrap(),
            ClientMsgId::parse(id).unwrap(),
            String::new(),
            UnixMillis(0),
        )
    }

    /// The store holds m0, m1, m2 at seqs 1-3; alice was acked all three and received them.
    fn healthy() -> (Stored, Vec<(ConversationId, Record)>) {
        let messages = vec![message(1, "m0"), message(2, "m1"), message(3, "m2")];
        let record = Record {
            acked: (0..3)
                .map(|i| (ConversationId(1), format!("m{i}"), Seq(i + 1)))
                .collect(),
            received: messages.clone(),
        };
        (
            HashMap::from([(ConversationId(1), messages)]),
            vec![(ConversationId(1), record)],
        )
    }

    #[test]
    fn a_healthy_run_has_no_findings() {
        let (stored, clients) = healthy();
        assert_eq!(check(&stored, &clients), Findings::default());
    }

    #[test]
    fn every_kind_of_breakage_is_found() {
        let (mut stored, mut clients) = healthy();
        // An acked message missing from the store (and so from what the client received).
        stored.get_mut(&ConversationId(1)).unwrap().pop();
        let findings = check(&stored, &clients);
        assert_eq!((findings.lost, findings.not_resumed), (1, 1));

        let (mut stored, _) = healthy();
        // Stored twice, and a gap.
        let messages = stored.get_mut(&ConversationId(1)).unwrap();
        messages.push(message(5, "m2"));
        let findings = check(&stored, &clients);
        assert_eq!((findings.duplicated, findings.gaps), (2, 1));

        let (stored, _) = healthy();
        // Acked at another seq than stored, and acks out of order.
        clients[0].1.acked.swap(0, 1);
        let findings = check(&stored, &clients);
        assert_eq!((findings.misplaced, findings.out_of_order), (0, 1));
        clients[0].1.acked[0].2 = Seq(3);
        let findings = check(&stored, &clients);
        assert_eq!(findings.misplaced, 1);
    }
}
