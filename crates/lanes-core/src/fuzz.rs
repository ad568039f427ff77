//! Entry points shared by the fuzz targets (`fuzz/`), the replay of their corpus and the
//! property tests (`tests/parsers.rs`): each takes arbitrary bytes the way the server receives
//! them from a client and checks what must hold for every input. A panic is a finding.

use lanes_protocol::codec::{decode_client, encode_client};
use lanes_protocol::http::{
    AddMember, AdminCreateConversation, AdminCreateUser, AdminPost, CreateDirect, CreateGroup,
    Credentials, DeleteMessage, EditMessage, PollRequest, Position, React, SendMessage,
    SetPresence, SetTyping, Settings,
};
use lanes_protocol::{ClientFrame, ClientMsgId, ConversationId, UserId};
use serde::de::DeserializeOwned;

use crate::connection::{Connection, ConnectionConfig};
use crate::validate::{self, Limits};

/// A WebSocket text frame: decoding never panics, a decoded frame survives an encode/decode
/// round trip unchanged, and the connection state machine takes it (before and after `hello`)
/// without panicking.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = decode_client(text) else {
        return;
    };
    let again = decode_client(&encode_client(&frame));
    assert_eq!(again.as_ref().ok(), Some(&frame), "round trip of {text:?}");
    let now = std::time::Instant::now();
    let config = std::sync::Arc::new(ConnectionConfig::new(lanes_protocol::StoreEpoch(
        "fuzz".into(),
    )));
    // Before `hello`, and on a live connection.
    let mut fresh = Connection::new(now, std::sync::Arc::clone(&config));
    fresh.handle_frame(now, frame.clone());
    while fresh.poll_output().is_some() {}
    let mut live = Connection::new(now, config);
    live.handle_frame(
        now,
        ClientFrame::Hello {
            token: "t".into(),
            cursors: Vec::new(),
            epoch: None,
        },
    );
    let user_id = UserId::parse("fuzz").unwrap_or_else(|_| unreachable!("a constant valid id"));
    live.handle_authenticated(user_id);
    live.handle_synced(Vec::new());
    while live.poll_output().is_some() {}
    live.handle_frame(now, frame);
    while live.poll_output().is_some() {}
}

fn body<T: DeserializeOwned>(data: &[u8]) {
    let _ = serde_json::from_slice::<T>(data);
}

/// An HTTP request body, as every route's type.
pub fn http_body(data: &[u8]) {
    body::<Credentials>(data);
    body::<CreateDirect>(data);
    body::<CreateGroup>(data);
    body::<AddMember>(data);
    body::<SendMessage>(data);
    body::<EditMessage>(data);
    body::<DeleteMessage>(data);
    body::<React>(data);
    body::<Position>(data);
    body::<SetTyping>(data);
    body::<SetPresence>(data);
    body::<Settings>(data);
    body::<PollRequest>(data);
    body::<AdminCreateUser>(data);
    body::<AdminCreateConversation>(data);
    body::<AdminPost>(data);
}

/// Ids and lane-event fields: parsing and validation never panic, and what parses is what it
/// says (ids keep their text; a valid event keeps its content).
pub fn fields(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(user_id) = UserId::parse(&text) {
        assert_eq!(user_id.as_str(), text);
    }
    if let Ok(client_msg_id) = ClientMsgId::parse(&text) {
        assert_eq!(client_msg_id.as_str(), text);
        for content in [
            lanes_protocol::Content::Message {
                body: text.to_string(),
                reply_to: None,
            },
            lanes_protocol::Content::Reaction {
                target_seq: lanes_protocol::Seq(1),
                emoji: text.to_string(),
                add: true,
            },
        ] {
            if let Ok(valid) = validate::send(
                client_msg_id.clone(),
                ConversationId(1),
                content.clone(),
                &Limits::default(),
            ) {
                assert_eq!(valid.content, content);
            }
        }
    }
}
