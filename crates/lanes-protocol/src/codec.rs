//! Encoding and decoding of frames. A decode failure keeps whatever request id can be salvaged
//! from the input, so the error frame can echo it.

use crate::frames::{ClientFrame, ServerFrame};

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was wrong, for humans.
    pub message: String,
    /// `client_msg_id` or `request_id` found in the input, if any.
    pub request_id: Option<String>,
}

/// Decodes a client frame from JSON text.
pub fn decode_client(text: &str) -> Result<ClientFrame, DecodeError> {
    serde_json::from_str(text).map_err(|err| DecodeError {
        message: format!("invalid frame: {err}"),
        request_id: salvage_request_id(text),
    })
}

/// Encodes a server frame as JSON text.
pub fn encode_server(frame: &ServerFrame) -> String {
    // Serialising these types cannot fail: all map keys are strings and no Serialize impl errors.
    serde_json::to_string(frame).unwrap_or_else(|err| {
        unreachable!("server frames always serialise: {err}");
    })
}

/// Encodes a client frame as JSON text.
pub fn encode_client(frame: &ClientFrame) -> String {
    serde_json::to_string(frame).unwrap_or_else(|err| {
        unreachable!("client frames always serialise: {err}");
    })
}

/// Decodes a server frame from JSON text (used by clients).
pub fn decode_server(text: &str) -> Result<ServerFrame, serde_json::Error> {
    serde_json::from_str(text)
}

fn salvage_request_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    ["client_msg_id", "request_id"]
        .iter()
        .find_map(|key| object.get(*key)?.as_str())
        .filter(|id| id.len() <= 64)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::{ErrorCode, ErrorFrame};
    use crate::ids::{ClientMsgId, ConversationId};

    fn check(input: &str, expected: Result<ClientFrame, Option<&str>>) {
        match (decode_client(input), expected) {
            (Ok(frame), Ok(want)) => assert_eq!(frame, want, "{input}"),
            (Err(err), Err(request_id)) => {
                assert_eq!(err.request_id.as_deref(), request_id, "{input}")
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn decodes_and_rejects() {
        let send = ClientFrame::Send {
            client_msg_id: ClientMsgId::parse("m1").unwrap(),
            conversation_id: ConversationId(7),
            body: "hi".into(),
            reply_to: None,
        };
        check(
            r#"{"type":"send","client_msg_id":"m1","conversation_id":7,"body":"hi"}"#,
            Ok(send),
        );
        check(
            r#"{"type":"ping"}"#,
            Ok(ClientFrame::Ping { request_id: None }),
        );
        check("not json", Err(None));
        check(r#"{"type":"launch"}"#, Err(None));
        check(
            r#"{"type":"send","client_msg_id":"m2","body":"x"}"#,
            Err(Some("m2")),
        );
        check(
            r#"{"type":"ping","request_id":"r1","extra":1}"#,
            Err(Some("r1")),
        );
        check(
            r#"{"type":"send","client_msg_id":"","conversation_id":1,"body":""}"#,
            Err(Some("")),
        );
        check(r#"[1,2]"#, Err(None));
    }

    #[test]
    fn error_frame_shape() {
        let text = encode_server(&ServerFrame::Error(ErrorFrame {
            code: ErrorCode::MessageTooLarge,
            message: "too big".into(),
            request_id: Some("m1".into()),
            retry_after_ms: None,
        }));
        assert_eq!(
            text,
            r#"{"type":"error","code":"message_too_large","message":"too big","request_id":"m1"}"#
        );
        assert_eq!(ErrorCode::MessageTooLarge.as_str(), "message_too_large");
    }
}
