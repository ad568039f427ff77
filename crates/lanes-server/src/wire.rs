//! WebSocket framing (RFC 6455, server side) on the raw upgraded stream, holding no buffers
//! while the connection is idle.
//!
//! tungstenite keeps a read buffer and a write buffer for a connection's whole life; with
//! thousands of idle connections they were about half of each one's memory
//! (docs/BENCHMARKS.md). Here bytes are read into a buffer on the stack of the poll that reads
//! them; only the rest of an incomplete frame and the fragments of an unfinished message stay on
//! the heap, and the write buffer is released after every flush. Frame headers are parsed and
//! written by tungstenite's `FrameHeader`; the rules of the protocol are checked here.

use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// Bytes read per `read` call (on the stack of the poll, not kept).
const READ_CHUNK_BYTES: usize = 4096;
/// The first allocation of the write buffer after a flush released it.
const WRITE_CHUNK_BYTES: usize = 512;
/// Control frames carry at most this much (RFC 6455 §5.5).
const CONTROL_PAYLOAD_MAX: usize = 125;

/// A complete message (or control frame) from the peer.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    Text(String),
    Binary,
    /// Answered with a pong already (written with the next flush).
    Ping,
    Pong,
    Close,
}

/// Why reading failed. After any of these nothing more can be read from the stream.
#[derive(Debug, PartialEq)]
pub(crate) enum WireError {
    /// A frame or message larger than the limit.
    TooLarge,
    /// Broken framing: reserved bits or opcodes, an unmasked frame, a bad control frame, a
    /// continuation without a start or a new message inside a fragmented one.
    Protocol,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// The peer closed the stream, or reading it failed.
    Gone,
}

pub(crate) struct Wire<S> {
    io: S,
    /// Received bytes not yet parsed: empty (and unallocated) between frames.
    unparsed: Vec<u8>,
    /// The fragments of an unfinished message so far, and whether it is text (boxed: rare).
    fragmented: Option<Box<(bool, Vec<u8>)>>,
    /// Frames waiting to be written: unallocated after every flush.
    out: Vec<u8>,
    message_bytes_max: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// `read` holds bytes that arrived with the upgrade request, if any.
    pub(crate) fn new(io: S, read: &[u8], message_bytes_max: usize) -> Wire<S> {
        Wire {
            io,
            unparsed: read.to_vec(),
            fragmented: None,
            out: Vec::new(),
            message_bytes_max,
        }
    }

    /// The next message from the peer. Cancel-safe: whatever was read stays in `self`.
    pub(crate) fn next(&mut self) -> impl Future<Output = Result<Incoming, WireError>> + '_ {
        std::future::poll_fn(move |cx| self.poll_next(cx))
    }

    /// `next` as a poll.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, WireError>> {
        loop {
            if let Some(incoming) = self.parse()? {
                return Poll::Ready(Ok(incoming));
            }
            // Uninitialised: zeroing 4 KiB on every poll showed in profiles (`memset`).
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK_BYTES];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => self.unparsed.extend_from_slice(buf.filled()),
                _ => return Poll::Ready(Err(WireError::Gone)),
            }
        }
    }

    /// The next complete message in `unparsed`, if there is one. Control frames come out as
    /// they arrive, also between the fragments of a message.
    fn parse(&mut self) -> Result<Option<Incoming>, WireError> {
        loop {
            let mut cursor = Cursor::new(self.unparsed.as_slice());
            let Some((header, length)) =
                FrameHeader::parse(&mut cursor).map_err(|_| WireError::Protocol)?
            else {
                return Ok(None);
            };
            let length = usize::try_from(length)
                .ok()
                .filter(|length| *length <= self.message_bytes_max)
                .ok_or(WireError::TooLarge)?;
            // Clients must mask (§5.1) and no extension was negotiated (§5.2).
            let Some(mask) = header.mask else {
                return Err(WireError::Protocol);
            };
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(WireError::Protocol);
            }
            let start = usize::try_from(cursor.position()).map_err(|_| WireError::Protocol)?;
            let end = start + length;
            if self.unparsed.len() < end {
                return Ok(None);
            }
            let mut payload = if end == self.unparsed.len() {
                let mut all = std::mem::take(&mut self.unparsed);
                all.drain(..start);
                all
            } else {
                let payload = self.unparsed[start..end].to_vec();
                self.unparsed.drain(..end);
                payload
            };
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(control) => {
                    if !header.is_final || payload.len() > CONTROL_PAYLOAD_MAX {
                        return Err(WireError::Protocol);
                    }
                    return match control {
                        Control::Ping => {
                            self.feed(OpCode::Control(Control::Pong), &payload);
                            Ok(Some(Incoming::Ping))
                        }
                        Control::Pong => Ok(Some(Incoming::Pong)),
                        Control::Close if valid_close(&payload) => Ok(Some(Incoming::Close)),
                        Control::Close => Err(WireError::Protocol),
                        Control::Reserved(_) => Err(WireError::Protocol),
                    };
                }
                OpCode::Data(Data::Continue) => {
                    let Some(fragmented) = self.fragmented.take() else {
                        return Err(WireError::Protocol);
                    };
                    let (text, mut message) = *fragmented;
                    if message.len() + payload.len() > self.message_bytes_max {
                        return Err(WireError::TooLarge);
                    }
                    message.extend_from_slice(&payload);
                    if header.is_final {
                        return complete(text, message).map(Some);
                    }
                    self.fragmented = Some(Box::new((text, message)));
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    if self.fragmented.is_some() {
                        return Err(WireError::Protocol);
                    }
                    let text = data == Data::Text;
                    if header.is_final {
                        return complete(text, payload).map(Some);
                    }
                    self.fragmented = Some(Box::new((text, payload)));
                }
                OpCode::Data(Data::Reserved(_)) => return Err(WireError::Protocol),
            }
        }
    }

    /// Queues a text frame (written by the next `flush`).
    pub(crate) fn feed_text(&mut self, payload: &[u8]) {
        self.feed(OpCode::Data(Data::Text), payload);
    }

    pub(crate) fn feed_ping(&mut self) {
        self.feed(OpCode::Control(Control::Ping), &[]);
    }

    pub(crate) fn feed_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        let reason = reason.as_bytes();
        payload.extend_from_slice(&reason[..reason.len().min(CONTROL_PAYLOAD_MAX - 2)]);
        self.feed(OpCode::Control(Control::Close), &payload);
    }

    fn feed(&mut self, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
        };
        let length = payload.len() as u64;
        let needed = header.len(length) + payload.len();
        if self.out.capacity() == 0 {
            self.out.reserve(needed.max(WRITE_CHUNK_BYTES));
        }
        // Writing into a Vec cannot fail.
        let _ = header.format(length, &mut self.out);
        self.out.extend_from_slice(payload);
    }

    /// Bytes queued and not yet written.
    pub(crate) fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Writes what the socket takes now, without waiting; `true` once nothing is left queued.
    /// Almost every flush ends here, so the connection's future needs no room for a waiting
    /// write (a `Pending` leaves a no-op waker registered, replaced by the next real poll).
    pub(crate) fn try_flush(&mut self) -> std::io::Result<bool> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_flush_out(&mut cx) {
            Poll::Ready(result) => result.map(|()| true),
            Poll::Pending => Ok(false),
        }
    }

    /// Writes everything queued, then releases the write buffer.
    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush_out(cx)).await
    }

    /// Writes the queue until it is empty (its buffer released) and the socket flushed.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(written)) if written == self.out.len() => self.out = Vec::new(),
                Poll::Ready(Ok(written)) => {
                    self.out.drain(..written);
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// A close payload is empty, or a code a peer may send (RFC 6455 §7.4) and a UTF-8 reason.
fn valid_close(payload: &[u8]) -> bool {
    match payload {
        [] => true,
        [high, low, reason @ ..] => {
            let code = CloseCode::from(u16::from_be_bytes([*high, *low]));
            code.is_allowed() && std::str::from_utf8(reason).is_ok()
        }
        [_] => false,
    }
}

fn complete(text: bool, payload: Vec<u8>) -> Result<Incoming, WireError> {
    if !text {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload)
        .map(Incoming::Text)
        .map_err(|_| WireError::InvalidUtf8)
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MAX: usize = 1000;

    /// A client frame: `first` is FIN/RSV/opcode, the payload is masked unless `masked` is false.
    fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            len @ 0..=125 => out.push(mask_bit | len as u8),
            len @ 126..=65535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// Feeds `bytes` to a fresh wire in pieces of `step` bytes and collects what it reads.
    async fn read_all(bytes: &[u8], step: usize) -> (Vec<Incoming>, Option<WireError>, Vec<u8>) {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut wire = Wire::new(server, &[], MAX);
        let bytes = bytes.to_vec();
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(step.max(1)) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        let error = loop {
            match wire.next().await {
                Ok(incoming) => got.push(incoming),
                Err(WireError::Gone) => break None,
                Err(err) => break Some(err),
            }
        };
        wire.flush().await.unwrap();
        drop(wire);
        let mut client = writer.await.unwrap();
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        (got, error, written)
    }

    #[tokio::test]
    async fn messages_split_anywhere_arrive_whole_and_pings_are_answered() {
        let mut bytes = frame(0x81, br#"{"type":"hello"}"#, true);
        bytes.extend(frame(0x01, b"frag", true));
        bytes.extend(frame(0x89, b"p1", true)); // a ping between fragments
        bytes.extend(frame(0x00, b"men", true));
        bytes.extend(frame(0x80, b"ted", true));
        bytes.extend(frame(0x82, &[1, 2, 3], true));
        bytes.extend(frame(0x8A, b"", true));
        bytes.extend(frame(0x81, &[b'x'; 300], true)); // a 16-bit length
        bytes.extend(frame(0x88, &1000u16.to_be_bytes(), true));
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            let (got, error, written) = read_all(&bytes, step).await;
            assert_eq!(error, None, "step {step}");
            assert_eq!(
                got,
                vec![
                    Incoming::Text(r#"{"type":"hello"}"#.into()),
                    Incoming::Ping,
                    Incoming::Text("fragmented".into()),
                    Incoming::Binary,
                    Incoming::Pong,
                    Incoming::Text("x".repeat(300)),
                    Incoming::Close,
                ],
                "step {step}"
            );
            // The pong echoes the ping's payload, unmasked.
            assert_eq!(written, [0x8A, 2, b'p', b'1'], "step {step}");
        }
    }

    #[tokio::test]
    async fn broken_framing_is_refused_with_its_reason() {
        let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
            ("unmasked", frame(0x81, b"{}", false), WireError::Protocol),
            (
                "reserved bit",
                frame(0xC1, b"{}", true),
                WireError::Protocol,
            ),
            (
                "reserved opcode",
                frame(0x83, b"{}", true),
                WireError::Protocol,
            ),
            (
                "reserved control",
                frame(0x8B, b"", true),
                WireError::Protocol,
            ),
            (
                "lone continuation",
                frame(0x80, b"x", true),
                WireError::Protocol,
            ),
            (
                "fragmented ping",
                frame(0x09, b"", true),
                WireError::Protocol,
            ),
            (
                "long ping",
                frame(0x89, &[0; 126], true),
                WireError::Protocol,
            ),
            (
                "one-byte close",
                frame(0x88, &[3], true),
                WireError::Protocol,
            ),
            (
                "close with a reserved code",
                frame(0x88, &1005u16.to_be_bytes(), true),
                WireError::Protocol,
            ),
            (
                "close with a reason that is not UTF-8",
                frame(0x88, &[0x03, 0xE8, 0xff], true),
                WireError::Protocol,
            ),
            (
                "not utf-8",
                frame(0x81, &[0xff, 0xfe], true),
                WireError::InvalidUtf8,
            ),
            (
                "too large",
                frame(0x81, &vec![b'a'; MAX + 1], true),
                WireError::TooLarge,
            ),
            (
                "new message inside a fragmented one",
                [frame(0x01, b"a", true), frame(0x81, b"b", true)].concat(),
                WireError::Protocol,
            ),
            (
                "fragments over the limit",
                [
                    frame(0x01, &[b'a'; 600], true),
                    frame(0x80, &[b'a'; 600], true),
                ]
                .concat(),
                WireError::TooLarge,
            ),
            (
                "utf-8 split across fragments, broken",
                [frame(0x01, &[0xe2, 0x82], true), frame(0x80, b"x", true)].concat(),
                WireError::InvalidUtf8,
            ),
        ];
        for (name, bytes, expected) in cases {
            let (_, error, _) = read_all(&bytes, bytes.len()).await;
            assert_eq!(error, Some(expected), "{name}");
        }
        // A character split across fragments is fine once whole.
        let bytes = [frame(0x01, &[0xe2, 0x82], true), frame(0x80, &[0xac], true)].concat();
        let (got, error, _) = read_all(&bytes, 1).await;
        assert_eq!((got, error), (vec![Incoming::Text("€".into())], None));
    }

    #[tokio::test]
    async fn written_frames_are_unmasked_and_the_buffer_is_released() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut wire = Wire::new(server, &[], MAX);
        wire.feed_text(b"hi");
        wire.feed_text(&[b'y'; 200]);
        wire.feed_ping();
        wire.feed_close(1009, "frame too large");
        assert!(wire.buffered() > 200);
        wire.flush().await.unwrap();
        assert_eq!((wire.buffered(), wire.out.capacity()), (0, 0));
        drop(wire);
        let mut written = Vec::new();
        client.read_to_end(&mut written).await.unwrap();
        let mut expected = vec![0x81, 2, b'h', b'i', 0x81, 126, 0, 200];
        expected.extend_from_slice(&[b'y'; 200]);
        expected.extend_from_slice(&[0x89, 0, 0x88, 17, 0x03, 0xF1]);
        expected.extend_from_slice(b"frame too large");
        assert_eq!(written, expected);
    }

    #[tokio::test]
    async fn a_flush_without_waiting_writes_what_fits_and_the_rest_follows_in_order() {
        let (server, mut client) = tokio::io::duplex(16);
        let mut wire = Wire::new(server, &[], MAX);
        let payload: Vec<u8> = (0..100u8).collect();
        wire.feed_text(&payload);
        assert!(!wire.try_flush().unwrap(), "only 16 bytes fit");
        assert_eq!(wire.buffered(), 102 - 16);
        let reader = tokio::spawn(async move {
            let mut got = vec![0; 102];
            client.read_exact(&mut got).await.unwrap();
            (got, client)
        });
        wire.flush().await.unwrap();
        let mut expected = vec![0x81, 100];
        expected.extend_from_slice(&payload);
        let (got, _client) = reader.await.unwrap();
        assert_eq!(got, expected);
        wire.feed_text(b"x");
        assert!(wire.try_flush().unwrap());
        assert_eq!((wire.buffered(), wire.out.capacity()), (0, 0));
    }

    /// Feeds `bytes` in pieces of the given sizes, parsing after each; what came out, and the
    /// error that stopped it.
    fn parse_in_pieces(bytes: &[u8], sizes: &[usize]) -> (Vec<Incoming>, Option<WireError>) {
        let mut wire = Wire::new(tokio::io::empty(), &[], MAX);
        let mut got = Vec::new();
        let (mut at, mut sizes) = (0, sizes.iter().cycle());
        while at < bytes.len() {
            let end = (at + sizes.next().copied().unwrap_or(1).max(1)).min(bytes.len());
            wire.unparsed.extend_from_slice(&bytes[at..end]);
            at = end;
            loop {
                match wire.parse() {
                    Ok(Some(incoming)) => got.push(incoming),
                    Ok(None) => break,
                    Err(err) => return (got, Some(err)),
                }
            }
        }
        (got, None)
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_any_pieces_end_in_messages_or_a_refusal(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            sizes in proptest::collection::vec(1usize..64, 1..8),
        ) {
            // No panic and no endless loop: every call consumes a frame, waits or refuses.
            let (got, _) = parse_in_pieces(&bytes, &sizes);
            proptest::prop_assert!(got.len() <= bytes.len() / 2);
        }

        #[test]
        fn messages_fragmented_and_split_anywhere_arrive_whole_and_in_order(
            messages in proptest::collection::vec(
                (0u8..3, "[a-zé€ ]{0,40}", 1usize..4, proptest::array::uniform4(proptest::num::u8::ANY)),
                1..6,
            ),
            sizes in proptest::collection::vec(1usize..40, 1..6),
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (kind, text, fragments, mask) in &messages {
                let payload = text.as_bytes();
                match kind {
                    0 | 1 => {
                        // Fragments of roughly equal size; a ping between the first two.
                        let step = payload.len().div_ceil(*fragments).max(1);
                        let pieces: Vec<&[u8]> = if payload.is_empty() {
                            vec![&[]]
                        } else {
                            payload.chunks(step).collect()
                        };
                        for (i, piece) in pieces.iter().enumerate() {
                            let opcode = if i == 0 { if *kind == 0 { 1 } else { 2 } } else { 0 };
                            let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
                            bytes.extend(masked(fin | opcode, piece, *mask));
                            if i == 0 && pieces.len() > 1 {
                                bytes.extend(masked(0x89, b"p", *mask));
                                expected.push(Incoming::Ping);
                            }
                        }
                        expected.push(if *kind == 0 {
                            Incoming::Text(text.clone())
                        } else {
                            Incoming::Binary
                        });
                    }
                    _ => {
                        bytes.extend(masked(0x8A, &payload[..payload.len().min(125)], *mask));
                        expected.push(Incoming::Pong);
                    }
                }
            }
            let (got, error) = parse_in_pieces(&bytes, &sizes);
            proptest::prop_assert_eq!(error, None);
            proptest::prop_assert_eq!(got, expected);
        }
    }

    /// A client frame of at most 125 bytes masked with `mask`.
    fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[tokio::test]
    async fn bytes_read_with_the_upgrade_come_first_and_nothing_is_kept_between_frames() {
        let (server, mut client) = tokio::io::duplex(1024);
        let hello = frame(0x81, b"first", true);
        let mut wire = Wire::new(server, &hello[..3], MAX);
        client.write_all(&hello[3..]).await.unwrap();
        assert_eq!(wire.next().await, Ok(Incoming::Text("first".into())));
        assert_eq!(wire.unparsed.capacity(), 0);
    }
}
