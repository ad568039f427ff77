//! `sync`: a user is offline while K messages arrive across C conversations, in a store already
//! holding H messages; reports how long the reconnect takes from `hello` to `synced` with all K
//! received. Run it for two very different H to see whether resync cost depends on store size.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lanes_protocol::codec::encode_client;
use lanes_protocol::{ClientFrame, ClientMsgId, ConversationId, Cursor, Seq, ServerFrame};
use serde_json::json;
use tokio::time::Instant;

use super::SpawnedServer;
use super::net::{Socket, Target, create_users, next_frame, run_id, user_id, user_name};
use super::report::Report;

#[derive(Args, Clone)]
pub(crate) struct SyncArgs {
    /// Conversations of the offline user.
    #[arg(long, default_value_t = 100)]
    conversations: usize,
    /// Messages that arrive while it is offline (spread over the conversations).
    #[arg(long, default_value_t = 1000)]
    missed: usize,
    /// Messages stored before (spread over the same conversations).
    #[arg(long, default_value_t = 100_000)]
    prefill: usize,
    /// Resyncs to time (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

pub(crate) async fn run(
    target: &Target,
    spawned: Option<&SpawnedServer>,
    args: SyncArgs,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.conversations >= 1 && args.repeats >= 1,
        "nothing to sync"
    );
    let run = run_id();
    let reader = user_name(&run, 0);
    let writers: Vec<String> = (1..=args.conversations)
        .map(|i| user_name(&run, i))
        .collect();
    create_users(target, std::slice::from_ref(&reader)).await?;
    create_users(target, &writers).await?;
    let mut conversations = Vec::with_capacity(args.conversations);
    for writer in &writers {
        let conversation = target
            .api(writer)?
            .create_direct(&user_id(&reader)?)
            .await?;
        conversations.push(conversation.conversation_id);
    }
    let mut sockets = Vec::with_capacity(writers.len());
    for writer in &writers {
        sockets.push(target.connect(writer, Vec::new()).await?.socket);
    }
    let prefill_started = Instant::now();
    send_spread(&mut sockets, &conversations, args.prefill, "p").await?;
    let prefill_secs = prefill_started.elapsed().as_secs_f64();

    let mut durations = Vec::with_capacity(args.repeats);
    for repeat in 0..args.repeats {
        // The reader's cursors: the heads now, before it misses K messages.
        let heads: HashMap<ConversationId, Seq> = target
            .api(&reader)?
            .conversations()
            .await?
            .into_iter()
            .map(|conversation| (conversation.conversation_id, conversation.head_seq))
            .collect();
        let cursors: Vec<Cursor> = heads
            .iter()
            .map(|(conversation_id, seq)| Cursor {
                conversation_id: *conversation_id,
                seq: *seq,
            })
            .collect();
        send_spread(
            &mut sockets,
            &conversations,
            args.missed,
            &format!("m{repeat}-"),
        )
        .await?;
        let started = Instant::now();
        let caught_up = target
            .connect(&reader, cursors)
            .await
            .context("resync")?
            .caught_up;
        durations.push(started.elapsed());
        anyhow::ensure!(
            caught_up.len() == args.missed,
            "resync delivered {} of {} missed messages",
            caught_up.len(),
            args.missed
        );
        for message in &caught_up {
            let head = heads
                .get(&message.conversation_id)
                .copied()
                .unwrap_or_default();
            anyhow::ensure!(
                message.seq > head,
                "resync re-sent seq {} of {}",
                message.seq,
                message.conversation_id
            );
        }
    }
    durations.sort();
    let median = durations[durations.len() / 2];
    let mut report = Report::new(
        "sync",
        json!({
            "conversations": args.conversations, "missed": args.missed, "prefill": args.prefill,
            "repeats": args.repeats,
        }),
    );
    report.set("prefill_secs", json!(prefill_secs));
    report.set("resync_ms_median", json!(median.as_secs_f64() * 1000.0));
    report.set(
        "resync_ms_all",
        json!(
            durations
                .iter()
                .map(|d| (d.as_secs_f64() * 1e6).round() / 1000.0)
                .collect::<Vec<_>>()
        ),
    );
    if let Some(rss) = spawned.and_then(SpawnedServer::rss_kib) {
        report.set("server_rss_kib", json!(rss));
    }
    report.set("lost", json!(0));
    Ok(report)
}

/// Sends `count` messages round-robin over the conversations (writer i writes conversation i),
/// pipelined with a window per writer, and waits for every ack.
async fn send_spread(
    sockets: &mut [Socket],
    conversations: &[ConversationId],
    count: usize,
    prefix: &str,
) -> anyhow::Result<()> {
    const WINDOW: usize = 64;
    let per_writer: Vec<usize> = (0..sockets.len())
        .map(|i| count / sockets.len() + usize::from(i < count % sockets.len()))
        .collect();
    let sends = sockets.iter_mut().zip(conversations).zip(per_writer).map(
        |((socket, conversation), total)| async move {
            let (mut sent, mut acked) = (0, 0);
            while acked < total {
                while sent < total && sent - acked < WINDOW {
                    let frame = ClientFrame::Send {
                        client_msg_id: ClientMsgId::parse(&format!("{prefix}{sent}"))
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                        conversation_id: *conversation,
                        body: format!("message {sent} of a long history"),
                        reply_to: None,
                    };
                    socket.feed_text(&encode_client(&frame));
                    sent += 1;
                }
                socket.flush().await?;
                match tokio::time::timeout(Duration::from_secs(30), next_frame(socket)).await?? {
                    ServerFrame::Ack(_) => acked += 1,
                    ServerFrame::Error(error) => anyhow::bail!("send refused: {error:?}"),
                    _ => {}
                }
            }
            anyhow::Ok(())
        },
    );
    futures_util::future::try_join_all(sends).await?;
    Ok(())
}
