//! The bench's WebSocket client: the handshake, masked text frames out, server frames in.
//!
//! Thousands of the bench's users share two cores with the server they measure, so what each
//! delivery costs the driver shows in the server's figures. Through tokio-tungstenite a member
//! spent more user time reading a message than the server spent delivering it
//! (docs/BENCHMARKS.md, eleventh session): the codec zeroed the free part of its read buffer before every read, split every
//! frame off a `BytesMut`, and registered the task's waker with two proxies on every poll. Here
//! a connection reads into one buffer it keeps (spare capacity, never zeroed) and hands out text
//! frames as slices of it; frame headers are parsed and written by tungstenite's `FrameHeader`,
//! the handshake's response by `httparse`.

use std::io::Cursor;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Room made in the read buffer before a read, at least.
const READ_CHUNK_BYTES: usize = 4096;
/// The largest handshake response accepted.
const RESPONSE_BYTES_MAX: usize = 16 * 1024;

pub(crate) struct Socket {
    stream: TcpStream,
    /// Bytes read and not yet handed out or skipped, from `start`.
    input: Vec<u8>,
    start: usize,
    /// Frames waiting for the next `flush`, of which `written` bytes are written.
    out: Vec<u8>,
    written: usize,
}

impl Socket {
    /// Opens a WebSocket on `stream` with a GET of `path` on `host`.
    pub(crate) async fn handshake(
        mut stream: TcpStream,
        host: &str,
        path: &str,
    ) -> anyhow::Result<Socket> {
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut input = Vec::with_capacity(READ_CHUNK_BYTES);
        loop {
            if stream.read_buf(&mut input).await? == 0 {
                bail!("the server closed the connection during the handshake");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(length) =
                response.parse(&input).context("bad handshake response")?
            else {
                anyhow::ensure!(
                    input.len() < RESPONSE_BYTES_MAX,
                    "handshake response too long"
                );
                continue;
            };
            anyhow::ensure!(
                response.code == Some(101),
                "handshake refused: {:?} {:?}",
                response.code,
                response.reason
            );
            let accept = response
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("sec-websocket-accept"))
                .map(|header| header.value);
            anyhow::ensure!(
                accept == Some(derive_accept_key(key.as_bytes()).as_bytes()),
                "handshake response without the right Sec-WebSocket-Accept"
            );
            return Ok(Socket {
                stream,
                input,
                start: length,
                out: Vec::new(),
                written: 0,
            });
        }
    }

    /// Queues a text frame for the next `flush`.
    pub(crate) fn feed_text(&mut self, text: &str) {
        self.feed(OpCode::Data(Data::Text), text.as_bytes());
    }

    /// Writes what was queued. Cancel-safe: what a cancelled flush did not write, the next one
    /// writes.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        while self.written < self.out.len() {
            let written = self.stream.write(&self.out[self.written..]).await?;
            anyhow::ensure!(written > 0, "connection closed");
            self.written += written;
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Writes a text frame.
    pub(crate) async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.feed_text(text);
        self.flush().await
    }

    /// The next text message, skipping binary messages and pongs and answering pings; an error
    /// when the connection ends. The text is valid until the next call. Cancel-safe.
    pub(crate) async fn next_text(&mut self) -> anyhow::Result<&str> {
        loop {
            let mut cursor = Cursor::new(&self.input[self.start..]);
            if let Some((header, length)) =
                FrameHeader::parse(&mut cursor).context("bad frame header")?
            {
                let begin = self.start + cursor.position() as usize;
                let end = usize::try_from(length)
                    .ok()
                    .and_then(|length| begin.checked_add(length))
                    .context("frame too long")?;
                if end <= self.input.len() {
                    anyhow::ensure!(header.mask.is_none(), "a masked server frame");
                    anyhow::ensure!(header.is_final, "a fragmented server message");
                    self.start = end;
                    match header.opcode {
                        OpCode::Data(Data::Text) => {
                            return std::str::from_utf8(&self.input[begin..end])
                                .context("a text frame that is not UTF-8");
                        }
                        OpCode::Control(Control::Ping) => {
                            let payload = self.input[begin..end].to_vec();
                            self.feed(OpCode::Control(Control::Pong), &payload);
                            self.flush().await?;
                        }
                        OpCode::Control(Control::Close) => bail!("connection closed"),
                        _ => {}
                    }
                    continue;
                }
            }
            self.read_more().await?;
        }
    }

    /// Reads at least one more byte, first dropping what was handed out.
    async fn read_more(&mut self) -> anyhow::Result<()> {
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        self.input.reserve(READ_CHUNK_BYTES);
        if self.stream.read_buf(&mut self.input).await? == 0 {
            bail!("connection closed");
        }
        Ok(())
    }

    /// Queues a frame, masked as a client's must be (RFC 6455 §5.3).
    fn feed(&mut self, opcode: OpCode, payload: &[u8]) {
        let mask: [u8; 4] = rand::random();
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(mask),
        };
        // Writing into a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut self.out);
        self.out.extend(
            payload
                .iter()
                .zip(mask.iter().cycle())
                .map(|(byte, mask)| byte ^ mask),
        );
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;

    /// Against tokio-tungstenite's server side: frames of every length class both ways, a ping
    /// answered, binary skipped, the close reported.
    #[tokio::test]
    async fn talks_to_another_implementation() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let texts: Vec<String> = [0, 1, 125, 126, 65_535, 65_536, 200_000]
            .into_iter()
            .map(|length| "é".repeat(length / 2) + &"x".repeat(length % 2))
            .collect();
        let sent = texts.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            let mut ws = tokio_tungstenite::accept_async(stream).await?;
            for text in &sent {
                ws.send(Message::binary(vec![1, 2, 3])).await?;
                ws.send(Message::Ping(b"are you there".to_vec().into()))
                    .await?;
                ws.send(Message::text(text.clone())).await?;
            }
            let mut echoed = Vec::new();
            let mut pongs = 0;
            while echoed.len() < sent.len() {
                match ws.next().await.context("closed early")?? {
                    Message::Text(text) => echoed.push(text.as_str().to_owned()),
                    Message::Pong(payload) => {
                        assert_eq!(&payload[..], b"are you there");
                        pongs += 1;
                    }
                    other => anyhow::bail!("unexpected {other:?}"),
                }
            }
            ws.close(None).await?;
            anyhow::Ok((echoed, pongs))
        });
        let stream = TcpStream::connect(addr).await?;
        let mut socket = Socket::handshake(stream, &addr.to_string(), "/").await?;
        for text in &texts {
            let received = socket.next_text().await?.to_owned();
            assert_eq!(&received, text);
            socket.send_text(&received).await?;
        }
        let closed = socket.next_text().await.map(str::to_owned);
        assert!(closed.is_err(), "{closed:?}");
        let (echoed, pongs) = server.await??;
        assert_eq!(echoed, texts);
        assert_eq!(pongs, texts.len());
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_upgrade_is_an_error() -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await?;
            let mut request = vec![0; 1024];
            let _ = stream.read(&mut request).await?;
            stream
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await?;
            anyhow::Ok(())
        });
        let stream = TcpStream::connect(addr).await?;
        let refused = Socket::handshake(stream, &addr.to_string(), "/").await;
        let error = refused.err().context("accepted")?;
        assert!(error.to_string().contains("404"), "{error}");
        Ok(())
    }
}
