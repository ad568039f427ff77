//! Validation of client input that needs no store: sizes and formats. Membership is enforced by
//! the store inside the commit transaction (`Store::append_batch`), the one place that cannot race.

use lanes_protocol::{ClientMsgId, ConversationId, ErrorCode, limits};

/// Per-deployment limits (configuration), checked against the protocol maxima at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub message_body_bytes_max: usize,
    /// Most members in a group.
    pub group_members_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            message_body_bytes_max: limits::MESSAGE_BODY_BYTES_DEFAULT,
            group_members_max: limits::GROUP_MEMBERS_DEFAULT,
        }
    }
}

impl Limits {
    /// Why these limits cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.message_body_bytes_max == 0
            || self.message_body_bytes_max > limits::MESSAGE_BODY_BYTES_MAX
        {
            return Err(format!(
                "message_body_bytes_max must be between 1 and {}",
                limits::MESSAGE_BODY_BYTES_MAX
            ));
        }
        if self.group_members_max < 2 {
            return Err("group_members_max must be at least 2".into());
        }
        Ok(())
    }
}

/// A send that passed validation and may go to the committer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSend {
    /// Idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Target conversation (membership still to be checked by the store).
    pub conversation_id: ConversationId,
    /// The text.
    pub body: String,
}

/// Why a request was refused. Nothing has been written when one is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The body is empty or only whitespace.
    BodyEmpty,
    /// The body is longer than the limit.
    BodyTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Rejection {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::BodyEmpty => ErrorCode::InvalidField,
            Rejection::BodyTooLong { .. } => ErrorCode::MessageTooLarge,
        }
    }

    /// The human message.
    pub fn message(&self) -> String {
        match self {
            Rejection::BodyEmpty => "body must not be empty".into(),
            Rejection::BodyTooLong { len, max } => {
                format!("body is {len} bytes, limit {max}")
            }
        }
    }
}

/// `validate::send`: checks a send's body against the limits.
pub fn send(
    client_msg_id: ClientMsgId,
    conversation_id: ConversationId,
    body: String,
    limits: &Limits,
) -> Result<ValidSend, Rejection> {
    if body.len() > limits.message_body_bytes_max {
        return Err(Rejection::BodyTooLong {
            len: body.len(),
            max: limits.message_body_bytes_max,
        });
    }
    if body.trim().is_empty() {
        return Err(Rejection::BodyEmpty);
    }
    Ok(ValidSend {
        client_msg_id,
        conversation_id,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<(), Rejection>) {
        let limits = Limits {
            message_body_bytes_max: 8,
            ..Limits::default()
        };
        let got = send(
            ClientMsgId::parse("m").unwrap(),
            ConversationId(1),
            body.to_owned(),
            &limits,
        )
        .map(|_| ());
        assert_eq!(got, expected, "{body:?}");
    }

    #[test]
    fn bodies() {
        check("hi", Ok(()));
        check("12345678", Ok(()));
        check("123456789", Err(Rejection::BodyTooLong { len: 9, max: 8 }));
        check("", Err(Rejection::BodyEmpty));
        check(" \n\t", Err(Rejection::BodyEmpty));
        // Bytes, not characters, count: 3 × 3-byte characters = 9 bytes.
        check("€€€", Err(Rejection::BodyTooLong { len: 9, max: 8 }));
    }

    #[test]
    fn limits_check() {
        assert!(Limits::default().check().is_ok());
        let too_big = Limits {
            message_body_bytes_max: limits::MESSAGE_BODY_BYTES_MAX + 1,
            ..Limits::default()
        };
        assert!(too_big.check().is_err());
    }
}
