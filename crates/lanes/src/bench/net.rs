//! Bench plumbing: tokens, HTTP setup calls, and raw WebSocket connections spread over several
//! loopback source addresses. The load path speaks the protocol directly (not through the SDK's
//! task and channels) so that the driver stays cheaper than the server it measures.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lanes_client::{HttpApi, ReceiptPacer};
use lanes_protocol::codec::{decode_server, encode_client};
use lanes_protocol::{ClientFrame, ConversationId, Seq, ServerFrame, StoreEpoch, UserId};
use memchr::memmem;
use tokio::net::TcpSocket;

pub(crate) use super::ws::Socket;

/// A synced connection.
pub(crate) struct Connected {
    pub(crate) socket: Socket,
    /// The messages caught up before `synced`.
    pub(crate) caught_up: Vec<lanes_protocol::MessageFrame>,
    /// The conversations `synced` called large (where the SDK confirms delivery rarely).
    pub(crate) large: Vec<ConversationId>,
}

/// The server under load and how to act as its users.
pub(crate) struct Target {
    pub(crate) base_url: String,
    host: String,
    server_addr: SocketAddr,
    secret: String,
    sources: u8,
    next_source: AtomicUsize,
    /// The store epoch of the latest `welcome`, sent back with cursors on reconnect.
    epoch: std::sync::Mutex<Option<StoreEpoch>>,
}

impl Target {
    pub(crate) fn new(base_url: &str, secret: &str, sources: u8) -> Target {
        let host = base_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        Target {
            base_url: base_url.to_owned(),
            server_addr: host
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            host,
            secret: secret.to_owned(),
            sources: sources.max(1),
            next_source: AtomicUsize::new(0),
            epoch: std::sync::Mutex::new(None),
        }
    }

    /// The HS256 secret tokens are minted with.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// How many source addresses connections are spread over.
    pub(crate) fn sources(&self) -> u8 {
        self.sources
    }

    /// A JWT for `user`, valid for a day.
    pub(crate) fn token(&self, user: &str) -> anyhow::Result<String> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 24 * 3600;
        let claims = serde_json::json!({ "sub": user, "exp": exp });
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )?)
    }

    /// The HTTP API as `user`.
    pub(crate) fn api(&self, user: &str) -> anyhow::Result<HttpApi> {
        Ok(HttpApi::new(&self.base_url).with_token(&self.token(user)?))
    }

    /// Opens a WebSocket from the next source address, sends `hello` with `cursors` (and the
    /// epoch of the last welcome), and waits for `synced`.
    pub(crate) async fn connect(
        &self,
        user: &str,
        cursors: Vec<lanes_protocol::Cursor>,
    ) -> anyhow::Result<Connected> {
        let epoch = self
            .epoch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let index = self.next_source.fetch_add(1, Ordering::Relaxed) % usize::from(self.sources);
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + index as u8));
        let socket = TcpSocket::new_v4()?;
        // Earlier runs leave ports in TIME_WAIT; without this, bind() refuses them.
        socket.set_reuseaddr(true)?;
        if self.sources > 1 {
            // bind(port 0) searches the port space itself and grows slow with many sockets;
            // connect's own port choice is cheaper, so only bind when spreading over sources.
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket
            .connect(self.server_addr)
            .await
            .with_context(|| format!("connect to {}", self.server_addr))?;
        stream.set_nodelay(true)?;
        let mut ws = Socket::handshake(stream, &self.host, "/v1/ws")
            .await
            .context("websocket handshake")?;
        let hello = ClientFrame::Hello {
            token: self.token(user)?,
            cursors,
            epoch,
        };
        ws.send_text(&encode_client(&hello)).await?;
        let mut caught_up = Vec::new();
        loop {
            match next_frame(&mut ws).await? {
                ServerFrame::Synced { large } => {
                    return Ok(Connected {
                        socket: ws,
                        caught_up,
                        large,
                    });
                }
                ServerFrame::Welcome { epoch, .. } => {
                    *self
                        .epoch
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(epoch);
                }
                ServerFrame::Message(message) => caught_up.push(message),
                ServerFrame::Error(error) => bail!("hello refused: {error:?}"),
                _ => {}
            }
        }
    }
}

/// Connects in flight at once when a scenario sets up its users.
const CONNECTS_IN_FLIGHT: usize = 256;

/// One connect per name, each a task of its own, started as the stream is polled (so a
/// `buffered(n)` keeps n in flight); each yields its connection and how long the connect took.
/// Run inside the caller's future, every connect ran on the one thread blocking on the run,
/// which then had to be woken from the runtime's threads for every socket event and became the
/// driver's bottleneck (perf: ~80% busy while the workers idled).
pub(crate) fn connect_tasks(
    target: &Arc<Target>,
    names: impl IntoIterator<Item = String>,
) -> impl futures_util::Stream<Item = tokio::task::JoinHandle<anyhow::Result<(Connected, Duration)>>>
{
    let target = Arc::clone(target);
    futures_util::stream::iter(names.into_iter().map(move |name| {
        let target = Arc::clone(&target);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let connected = target.connect(&name, Vec::new()).await?;
            Ok((connected, started.elapsed()))
        })
    }))
}

/// Connects `names` (in the same order), `CONNECTS_IN_FLIGHT` at a time.
pub(crate) async fn connect_all(
    target: &Arc<Target>,
    names: &[String],
) -> anyhow::Result<Vec<Connected>> {
    let mut connects = connect_tasks(target, names.iter().cloned()).buffered(CONNECTS_IN_FLIGHT);
    let mut sockets = Vec::with_capacity(names.len());
    while let Some(connected) = connects.next().await {
        sockets.push(connected.context("connect task")??.0);
    }
    Ok(sockets)
}

/// The next server frame; an error when the socket ends.
pub(crate) async fn next_frame(ws: &mut Socket) -> anyhow::Result<ServerFrame> {
    decode_server(ws.next_text().await?).context("undecodable server frame")
}

/// Makes sure every user exists on the server (one authenticated call each, 64 at a time), so
/// that others can name them and the timed part of a run does not pay for creating them.
pub(crate) async fn create_users(target: &Target, users: &[String]) -> anyhow::Result<()> {
    for chunk in users.chunks(64) {
        let calls = chunk.iter().map(|name| async move {
            target
                .api(name)?
                .conversations()
                .await
                .context("create user")?;
            anyhow::Ok(())
        });
        futures_util::future::try_join_all(calls).await?;
    }
    Ok(())
}

/// The fields the load scenarios check, read from a server frame without decoding it: with
/// thousands of sockets in the driver, full decoding costs the cores the server also runs on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Quick<'a> {
    /// `ack` with its seq.
    Ack { seq: u64 },
    /// `message` with its seq, sender and body (bench bodies hold no quotes or escapes).
    Message {
        seq: u64,
        sender: &'a str,
        body: &'a str,
    },
    /// `error`: decode it fully to report it.
    Error,
    /// Anything else (welcome, synced, pong…).
    Other,
}

/// Key searchers built once: `str::find` with a string pattern sets up a two-way searcher on
/// every call, which was ~15% of the fan-out driver's CPU (perf).
struct Keys {
    seq: memmem::Finder<'static>,
    sender_id: memmem::Finder<'static>,
    body: memmem::Finder<'static>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    seq: memmem::Finder::new(br#""seq":"#),
    sender_id: memmem::Finder::new(br#""sender_id":""#),
    body: memmem::Finder::new(br#""body":""#),
});

/// Reads a frame's kind and checked fields (see `Quick`).
pub(crate) fn quick(text: &str) -> Quick<'_> {
    let keys = &*KEYS;
    let after = |key: &memmem::Finder<'_>| {
        key.find(text.as_bytes())
            .and_then(|start| text.get(start + key.needle().len()..))
    };
    let number = |key: &memmem::Finder<'_>| leading_number(after(key)?);
    let string = |key: &memmem::Finder<'_>| -> Option<&str> {
        let rest = after(key)?;
        Some(&rest[..memchr::memchr(b'"', rest.as_bytes())?])
    };
    if text.starts_with(r#"{"type":"ack""#) {
        number(&keys.seq).map_or(Quick::Other, |seq| Quick::Ack { seq })
    } else if text.starts_with(r#"{"type":"message""#) {
        match (
            number(&keys.seq),
            string(&keys.sender_id),
            string(&keys.body),
        ) {
            (Some(seq), Some(sender), Some(body)) => Quick::Message { seq, sender, body },
            _ => Quick::Other,
        }
    } else if text.starts_with(r#"{"type":"error""#) {
        Quick::Error
    } else {
        Quick::Other
    }
}

/// The decimal number `text` starts with.
pub(crate) fn leading_number(text: &str) -> Option<u64> {
    let end = text
        .bytes()
        .position(|byte| !byte.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// A user id for bench user `index` of run `run`.
pub(crate) fn user_name(run: &str, index: usize) -> String {
    format!("bench-{run}-{index}")
}

/// A fresh run id, so repeated runs against one server do not collide.
pub(crate) fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Parses a user id the bench made itself.
pub(crate) fn user_id(name: &str) -> anyhow::Result<UserId> {
    UserId::parse(name).map_err(|err| anyhow::anyhow!("{err}"))
}

/// How a bench user confirms what it receives, as the Rust SDK does by itself: with its
/// `ReceiptPacer` (zero interval: after every read), naming the highest seq that arrived.
pub(crate) struct Confirmations {
    pacer: ReceiptPacer,
    waiting: Option<Seq>,
}

impl Confirmations {
    /// In an ordinary conversation, or (`large`) in one `synced` called large.
    pub(crate) fn new(interval: Duration, large: bool) -> Confirmations {
        Confirmations {
            pacer: if large {
                ReceiptPacer::spreading(interval)
            } else {
                ReceiptPacer::new(interval)
            },
            waiting: None,
        }
    }

    /// `seq` arrived.
    pub(crate) fn received(&mut self, seq: Seq) {
        self.waiting = Some(self.waiting.map_or(seq, |waiting| waiting.max(seq)));
    }

    /// When the waiting position may go, if one waits.
    pub(crate) fn due(&self) -> Option<tokio::time::Instant> {
        self.waiting?;
        Some(tokio::time::Instant::from_std(
            self.pacer.due(std::time::Instant::now()),
        ))
    }

    /// The position to confirm now, if one waits and its time has come.
    pub(crate) fn take_due(&mut self) -> Option<Seq> {
        self.waiting?;
        if !self
            .pacer
            .try_send(std::time::Instant::now(), rand::random())
        {
            return None;
        }
        self.waiting.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_reads_checked_fields() {
        let message = r#"{"type":"message","conversation_id":1,"seq":42,"message_id":7,"sender_id":"bob","client_msg_id":"f3","body":"123:xx","server_ts":1}"#;
        assert_eq!(
            quick(message),
            Quick::Message {
                seq: 42,
                sender: "bob",
                body: "123:xx"
            }
        );
        let ack = r#"{"type":"ack","client_msg_id":"1","conversation_id":1,"message_id":9,"seq":5,"server_ts":1}"#;
        assert_eq!(quick(ack), Quick::Ack { seq: 5 });
        assert_eq!(
            quick(r#"{"type":"error","code":"internal","message":"x"}"#),
            Quick::Error
        );
        assert_eq!(quick(r#"{"type":"synced"}"#), Quick::Other);
    }
}
