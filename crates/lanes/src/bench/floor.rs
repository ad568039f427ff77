//! `floor`: no server, the kernel alone. What one fan-out costs on this machine before any server
//! code runs: `members` loopback TCP connections; `writers` threads write each message to every
//! connection (one `write` per member, as a server must) and `readers` threads receive them with
//! epoll (one `read` per arrival, as `fanout`'s members do). The time until every connection has
//! a message is the floor a server's `fanout` reach sits on here; docs/BENCHMARKS.md compares
//! the two.
//!
//! `--model` chooses how the writing side is built, to tell the kernel's cost from a runtime's:
//! plain threads (the kernel alone), a tokio runtime with a task per connection woken through a
//! queue for each message (the shape of Lanes' connection tasks), or a tokio runtime where a
//! task per worker writes its share of the connections in turn (a publisher writing to the
//! sockets itself). `--fsync` makes each message durable first, as a server's commit does.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use super::CpuTime;
use super::report::Report;

#[derive(Args, Clone)]
pub(crate) struct FloorArgs {
    /// Connections each message is written to. Both ends live in this process, so the file
    /// limit allows about half of it.
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Bytes per message (a Lanes `message` frame with a 100-byte body is ~230).
    #[arg(long, default_value_t = 230)]
    frame_bytes: usize,
    /// Threads writing (a server's runtime workers).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Threads reading (the members' side).
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// How the writing side is built.
    #[arg(long, value_enum, default_value_t = Model::Threads)]
    model: Model,
    /// Before each message goes out, write 4 KiB to a file in the system's temp directory and
    /// `fdatasync` it (a durable server's commit; the reach counts it).
    #[arg(long)]
    fsync: bool,
}

/// The writing side of `floor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Model {
    /// `--writers` threads, each writing its share of the connections in turn.
    Threads,
    /// A tokio runtime with `--writers` workers: one task per connection, woken through its own
    /// queue for every message by one publishing task.
    Tasks,
    /// A tokio runtime with `--writers` workers and as many tasks, each writing its share of
    /// the connections in turn.
    Inline,
}

/// A message's number and send time (µs after the start), sent to the writing side.
type Tick = (u64, u64);

/// A message's number and its send time (µs after the start), the head of every frame.
const HEADER: usize = 16;

/// How long readers wait for the last message after the sends ended.
const GRACE: Duration = Duration::from_secs(10);

pub(crate) fn run(args: FloorArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.members >= 1, "--members must be ≥ 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        args.frame_bytes >= HEADER,
        "--frame-bytes must be ≥ {HEADER}"
    );
    anyhow::ensure!(
        args.writers >= 1 && args.readers >= 1,
        "need a writer and a reader"
    );
    let listener = TcpListener::bind("127.0.0.1:0").context("bind")?;
    let addr = listener.local_addr().context("local address")?;
    let mut sending = Vec::with_capacity(args.members);
    let mut receiving = Vec::with_capacity(args.members);
    for _ in 0..args.members {
        let member = TcpStream::connect(addr).context("connect")?;
        let (server, _) = listener.accept().context("accept")?;
        server.set_nodelay(true).context("nodelay")?;
        member.set_nonblocking(true).context("nonblocking")?;
        sending.push(server);
        receiving.push(mio::net::TcpStream::from_std(member));
    }
    drop(listener);
    let total = (args.rate * args.duration_secs).ceil() as usize;
    let cpu_before = CpuTime::of(None);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration_secs) + GRACE;

    let mut ticks = Vec::new();
    let mut writers = Vec::new();
    let frame_bytes = args.frame_bytes;
    if args.model == Model::Threads {
        for share in split(sending, args.writers) {
            let (tick, ticked) = tokio::sync::mpsc::unbounded_channel::<Tick>();
            ticks.push(tick);
            writers.push(std::thread::spawn(move || {
                write_all(share, ticked, frame_bytes)
            }));
        }
    } else {
        // A tick receiver per publishing task.
        let publishers = if args.model == Model::Inline {
            args.writers
        } else {
            1
        };
        let mut ticked = Vec::new();
        for _ in 0..publishers {
            let (tick, receiver) = tokio::sync::mpsc::unbounded_channel::<Tick>();
            ticks.push(tick);
            ticked.push(receiver);
        }
        let (workers, model) = (args.writers, args.model);
        writers.push(std::thread::spawn(move || {
            write_on_runtime(sending, ticked, frame_bytes, workers, model)
        }));
    }
    let mut readers = Vec::new();
    for share in split(receiving, args.readers) {
        let frame_bytes = args.frame_bytes;
        readers.push(std::thread::spawn(move || {
            read_all(share, total, frame_bytes, started, deadline)
        }));
    }
    let mut log = if args.fsync {
        Some(tempfile::tempfile().context("a file to fsync")?)
    } else {
        None
    };
    let page = [b'l'; 4096];
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    for n in 0..total {
        let at = started + interval.mul_f64(n as f64);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let sent = started.elapsed().as_micros() as u64;
        if let Some(log) = &mut log {
            log.write_all(&page).context("write the log")?;
            log.sync_data().context("fdatasync")?;
        }
        for tick in &ticks {
            tick.send((n as u64, sent))
                .map_err(|_| anyhow::anyhow!("a writer stopped"))?;
        }
    }
    drop(ticks);
    for writer in writers {
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let mut slowest = vec![0u64; total];
    let mut deliveries = 0;
    for reader in readers {
        let (latest, arrivals) = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))??;
        deliveries += arrivals;
        for (slow, late) in slowest.iter_mut().zip(latest) {
            *slow = (*slow).max(late);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = CpuTime::of(None);
    let mut report = Report::new(
        "floor",
        json!({
            "members": args.members, "rate": args.rate, "duration_secs": args.duration_secs,
            "frame_bytes": args.frame_bytes, "writers": args.writers, "readers": args.readers,
            "model": format!("{:?}", args.model).to_lowercase(), "fsync": args.fsync,
        }),
    );
    let lost = report.set_reach(
        slowest.into_iter(),
        deliveries,
        (total * args.members) as u64,
        elapsed,
    );
    // Both ends are in this process: compare with fanout's server and bench together.
    report.set_cpu("cpu_us_per_delivery", cpu_before, cpu_after, deliveries);
    if lost > 0 {
        report.fail();
    }
    Ok(report)
}

/// `items` dealt round-robin into `shares` vectors.
fn split<T>(items: Vec<T>, shares: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..shares).map(|_| Vec::new()).collect();
    for (index, item) in items.into_iter().enumerate() {
        out[index % shares].push(item);
    }
    out
}

/// Message `n`'s frame: its number and send time, then filler.
fn frame_of((n, sent): Tick, frame_bytes: usize) -> Vec<u8> {
    let mut frame = vec![b'x'; frame_bytes];
    frame[..8].copy_from_slice(&n.to_le_bytes());
    frame[8..HEADER].copy_from_slice(&sent.to_le_bytes());
    frame
}

/// Writes every ticked message to each of `streams`, one `write` per stream.
fn write_all(
    mut streams: Vec<TcpStream>,
    mut ticked: tokio::sync::mpsc::UnboundedReceiver<Tick>,
    frame_bytes: usize,
) -> anyhow::Result<()> {
    while let Some(tick) = ticked.blocking_recv() {
        let frame = frame_of(tick, frame_bytes);
        for stream in &mut streams {
            stream.write_all(&frame).context("write")?;
        }
    }
    Ok(())
}

/// Messages a connection's task may have queued (one is all a paced run ever needs).
const TASK_QUEUE: usize = 64;

/// The writing side on a tokio runtime of `workers` threads (`Model::Tasks` or `Model::Inline`),
/// with a tick receiver per publishing task. The publishing tasks are on the runtime, as Lanes' is.
fn write_on_runtime(
    streams: Vec<TcpStream>,
    ticked: Vec<tokio::sync::mpsc::UnboundedReceiver<Tick>>,
    frame_bytes: usize,
    workers: usize,
    model: Model,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_io()
        .build()
        .context("runtime")?;
    runtime.block_on(async move {
        let mut connections = Vec::with_capacity(streams.len());
        for stream in streams {
            stream.set_nonblocking(true).context("nonblocking")?;
            connections.push(tokio::net::TcpStream::from_std(stream).context("register")?);
        }
        let mut ticked = ticked.into_iter();
        if model == Model::Inline {
            let mut publishers = Vec::new();
            for (mut share, mut ticked) in split(connections, workers).into_iter().zip(ticked) {
                publishers.push(tokio::spawn(async move {
                    while let Some(tick) = ticked.recv().await {
                        let frame = frame_of(tick, frame_bytes);
                        for connection in &mut share {
                            connection.write_all(&frame).await.context("write")?;
                        }
                    }
                    anyhow::Ok(())
                }));
            }
            for publisher in publishers {
                publisher.await.context("publisher")??;
            }
            return Ok(());
        }
        let mut ticked = ticked.next().context("no tick receiver")?;
        let mut queues = Vec::with_capacity(connections.len());
        let mut tasks = Vec::with_capacity(connections.len());
        for mut connection in connections {
            let (queue, mut queued) = tokio::sync::mpsc::channel::<Arc<[u8]>>(TASK_QUEUE);
            queues.push(queue);
            tasks.push(tokio::spawn(async move {
                while let Some(frame) = queued.recv().await {
                    connection.write_all(&frame).await.context("write")?;
                }
                anyhow::Ok(())
            }));
        }
        tokio::spawn(async move {
            while let Some(tick) = ticked.recv().await {
                let frame: Arc<[u8]> = frame_of(tick, frame_bytes).into();
                for queue in &queues {
                    queue
                        .try_send(Arc::clone(&frame))
                        .map_err(|_| anyhow::anyhow!("a connection's queue is full"))?;
                }
            }
            anyhow::Ok(())
        })
        .await
        .context("publisher")??;
        for task in tasks {
            task.await.context("connection task")??;
        }
        Ok(())
    })
}

/// Receives until every stream has `total` frames or the deadline passed. Returns, per message,
/// the latest arrival (µs after its send) and the frames received.
fn read_all(
    mut streams: Vec<mio::net::TcpStream>,
    total: usize,
    frame_bytes: usize,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut poll = Poll::new().context("epoll")?;
    for (index, stream) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(stream, Token(index), Interest::READABLE)
            .context("register")?;
    }
    // Per stream: bytes received so far (frames are fixed-size, so this says where one starts).
    let mut received = vec![0usize; streams.len()];
    let mut header = vec![[0u8; HEADER]; streams.len()];
    let mut latest = vec![0u64; total];
    let mut complete = 0;
    let mut events = Events::with_capacity(1024);
    let mut buffer = vec![0u8; 64 * 1024];
    while complete < streams.len() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("poll"),
        }
        for event in &events {
            let index = event.token().0;
            let Some(stream) = streams.get_mut(index) else {
                continue;
            };
            // Edge-triggered: read until the socket is empty.
            loop {
                let read = match stream.read(&mut buffer) {
                    // The writers close their ends once they sent everything.
                    Ok(0) if received[index] == total * frame_bytes => break,
                    Ok(0) => anyhow::bail!("a connection closed early"),
                    Ok(read) => read,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => return Err(err).context("read"),
                };
                let now = started.elapsed().as_micros() as u64;
                let before = received[index];
                for (offset, byte) in buffer[..read].iter().enumerate() {
                    let at = (before + offset) % frame_bytes;
                    if at < HEADER {
                        header[index][at] = *byte;
                    }
                    if at + 1 == frame_bytes {
                        let (n, sent) = header[index].split_at(8);
                        let n = u64::from_le_bytes(n.try_into()?) as usize;
                        let sent = u64::from_le_bytes(sent.try_into()?);
                        if let Some(slot) = latest.get_mut(n) {
                            *slot = (*slot).max(now.saturating_sub(sent));
                        }
                    }
                }
                received[index] += read;
                if received[index] == total * frame_bytes {
                    complete += 1;
                }
            }
        }
    }
    let frames = received
        .iter()
        .map(|bytes| (bytes / frame_bytes) as u64)
        .sum();
    Ok((latest, frames))
}
