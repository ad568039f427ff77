//! Validation of client input that needs no store: sizes and formats. Membership is enforced by
//! the store inside the commit transaction (`Store::append_batch`), the one place that cannot race.

use lanes_protocol::{ClientMsgId, Content, ConversationId, ErrorCode, Seq, limits};

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

/// A lane event (send, edit, delete, reaction) that passed validation and may go to the
/// committer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSend {
    /// Idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Target conversation (membership and referenced messages still to be checked by the store).
    pub conversation_id: ConversationId,
    /// What to append.
    pub content: Content,
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
    /// A seq field is 0 (seqs start at 1).
    SeqZero(&'static str),
    /// The reaction is not one emoji.
    NotAnEmoji,
}

impl Rejection {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::BodyTooLong { .. } => ErrorCode::MessageTooLarge,
            Rejection::BodyEmpty | Rejection::SeqZero(_) | Rejection::NotAnEmoji => {
                ErrorCode::InvalidField
            }
        }
    }

    /// The human message.
    pub fn message(&self) -> String {
        match self {
            Rejection::BodyEmpty => "body must not be empty".into(),
            Rejection::BodyTooLong { len, max } => {
                format!("body is {len} bytes, limit {max}")
            }
            Rejection::SeqZero(field) => format!("{field} must be at least 1"),
            Rejection::NotAnEmoji => "emoji must be exactly one Unicode emoji".into(),
        }
    }
}

fn body(body: &str, limits: &Limits) -> Result<(), Rejection> {
    if body.len() > limits.message_body_bytes_max {
        return Err(Rejection::BodyTooLong {
            len: body.len(),
            max: limits.message_body_bytes_max,
        });
    }
    if body.trim().is_empty() {
        return Err(Rejection::BodyEmpty);
    }
    Ok(())
}

fn seq(seq: Seq, field: &'static str) -> Result<(), Rejection> {
    if seq == Seq::ZERO {
        return Err(Rejection::SeqZero(field));
    }
    Ok(())
}

/// One emoji as Unicode defines them (including skin tones and ZWJ sequences), nothing else.
fn emoji(emoji: &str) -> Result<(), Rejection> {
    if emoji.len() > limits::EMOJI_BYTES_MAX || emojis::get(emoji).is_none() {
        return Err(Rejection::NotAnEmoji);
    }
    Ok(())
}

/// `validate::send`: checks a lane event's fields against the limits.
pub fn send(
    client_msg_id: ClientMsgId,
    conversation_id: ConversationId,
    content: Content,
    limits: &Limits,
) -> Result<ValidSend, Rejection> {
    match &content {
        Content::System { body: text } => body(text, limits)?,
        Content::Message {
            body: text,
            reply_to,
        } => {
            body(text, limits)?;
            if let Some(reply_to) = reply_to {
                seq(*reply_to, "reply_to")?;
            }
        }
        Content::Edit {
            target_seq,
            body: text,
        } => {
            seq(*target_seq, "target_seq")?;
            body(text, limits)?;
        }
        Content::Delete { target_seq } => seq(*target_seq, "target_seq")?,
        Content::Reaction {
            target_seq,
            emoji: text,
            ..
        } => {
            seq(*target_seq, "target_seq")?;
            emoji(text)?;
        }
    }
    Ok(ValidSend {
        client_msg_id,
        conversation_id,
        content,
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
            Content::Message {
                body: body.to_owned(),
                reply_to: None,
            },
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

    fn reaction(emoji: &str) -> Result<ValidSend, Rejection> {
        send(
            ClientMsgId::parse("m").unwrap(),
            ConversationId(1),
            Content::Reaction {
                target_seq: Seq(1),
                emoji: emoji.into(),
                add: true,
            },
            &Limits::default(),
        )
    }

    #[test]
    fn emojis() {
        for good in ["👍", "👍🏽", "❤️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "😀"]
        {
            assert!(reaction(good).is_ok(), "{good}");
        }
        for bad in ["", "a", ":+1:", "👍👍", "👍 ", "<script>", "1"] {
            assert_eq!(reaction(bad).unwrap_err(), Rejection::NotAnEmoji, "{bad:?}");
        }
    }

    #[test]
    fn seqs_start_at_one() {
        let delete = send(
            ClientMsgId::parse("m").unwrap(),
            ConversationId(1),
            Content::Delete {
                target_seq: Seq::ZERO,
            },
            &Limits::default(),
        );
        assert_eq!(delete.unwrap_err(), Rejection::SeqZero("target_seq"));
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
