//! Id and counter newtypes. No bare integer or string crosses a crate boundary as an id.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::limits::{CLIENT_MSG_ID_BYTES_MAX, USER_ID_BYTES_MAX};

/// A conversation (a lane): a direct pair or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct ConversationId(pub u64);

/// A stored message's global id. Unique, but says nothing about order across conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct MessageId(pub u64);

/// Position of a message in its conversation: 1, 2, 3… gap-free. `Seq(0)` means "before the first".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The position before any message.
    pub const ZERO: Seq = Seq(0);

    /// The following position. Saturates: a client's cursor may be `u64::MAX`, and no stored
    /// seq ever follows it.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

/// Milliseconds since the Unix epoch, as the server's clock saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

/// Identity of a store: changes when the store is replaced, so cursors from another store are
/// recognised instead of silently skipping messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(value_type = String))]
#[serde(transparent)]
pub struct StoreEpoch(pub String);

/// A user: for password accounts the username, for JWT users the token's `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// The pattern restates `UserId::parse`.
#[cfg_attr(
    feature = "openapi",
    schema(value_type = String, pattern = r"^[A-Za-z0-9_.@-]{1,64}$")
)]
// Serialized as the plain string it wraps (a newtype), without a copy; checked when read.
#[serde(try_from = "String")]
pub struct UserId(String);

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId(pub &'static str);

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidId {}

impl UserId {
    /// Checks the id: 1 to 64 bytes of ASCII letters, digits, `_`, `-`, `.` and `@`.
    pub fn parse(value: &str) -> Result<UserId, InvalidId> {
        Self::check(value)?;
        Ok(UserId(value.to_owned()))
    }

    fn check(value: &str) -> Result<(), InvalidId> {
        if value.is_empty() || value.len() > USER_ID_BYTES_MAX {
            return Err(InvalidId("user id must be 1 to 64 bytes"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
        {
            return Err(InvalidId(
                "user id may contain only ASCII letters, digits, '_', '-', '.' and '@'",
            ));
        }
        Ok(())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        UserId::check(&value)?;
        Ok(UserId(value))
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> String {
        value.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-generated id that makes a send idempotent: one message per (sender, id), forever.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// The pattern restates `ClientMsgId::parse`: printable ASCII, 0x21 to 0x7E.
#[cfg_attr(
    feature = "openapi",
    schema(value_type = String, pattern = r"^[!-~]{1,64}$")
)]
// Serialized as the plain string it wraps (a newtype), without a copy; checked when read.
#[serde(try_from = "String")]
pub struct ClientMsgId(String);

impl ClientMsgId {
    /// Checks the id: 1 to 64 bytes of printable ASCII.
    pub fn parse(value: &str) -> Result<ClientMsgId, InvalidId> {
        Self::check(value)?;
        Ok(ClientMsgId(value.to_owned()))
    }

    fn check(value: &str) -> Result<(), InvalidId> {
        if value.is_empty() || value.len() > CLIENT_MSG_ID_BYTES_MAX {
            return Err(InvalidId("client_msg_id must be 1 to 64 bytes"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidId("client_msg_id must be printable ASCII"));
        }
        Ok(())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientMsgId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ClientMsgId::check(&value)?;
        Ok(ClientMsgId(value))
    }
}

impl From<ClientMsgId> for String {
    fn from(value: ClientMsgId) -> String {
        value.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_after_the_largest_cursor_does_not_overflow() {
        assert_eq!(Seq(7).next(), Seq(8));
        assert_eq!(Seq(u64::MAX).next(), Seq(u64::MAX));
    }

    fn check_user(input: &str, ok: bool) {
        assert_eq!(UserId::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn user_ids() {
        check_user("alice", true);
        check_user("a.b-c_d@example.com", true);
        check_user("", false);
        check_user("has space", false);
        check_user("ünïcode", false);
        check_user(&"x".repeat(64), true);
        check_user(&"x".repeat(65), false);
    }

    #[test]
    fn client_msg_ids() {
        assert!(ClientMsgId::parse("m-1").is_ok());
        assert!(ClientMsgId::parse("").is_err());
        assert!(ClientMsgId::parse("a b").is_err());
        assert!(ClientMsgId::parse(&"x".repeat(65)).is_err());
        let decoded: Result<ClientMsgId, _> = serde_json::from_str("\"\"");
        assert!(decoded.is_err());
    }

    /// In JSON both ids are plain strings, and reading one checks it like `parse`.
    #[test]
    fn ids_are_json_strings_checked_when_read() -> Result<(), serde_json::Error> {
        let user = UserId::parse("a.b-c_d@example.com").map_err(serde::de::Error::custom)?;
        let id = ClientMsgId::parse("m-1/\\x").map_err(serde::de::Error::custom)?;
        let text = serde_json::to_string(&(&user, &id))?;
        assert_eq!(text, r#"["a.b-c_d@example.com","m-1/\\x"]"#);
        assert_eq!(
            serde_json::from_str::<(UserId, ClientMsgId)>(&text)?,
            (user, id)
        );
        assert!(serde_json::from_str::<UserId>("\"has space\"").is_err());
        assert!(serde_json::from_str::<UserId>("\"\"").is_err());
        assert!(serde_json::from_str::<ClientMsgId>("\"a b\"").is_err());
        Ok(())
    }

    /// The schemas' patterns are written out by hand: they must keep saying what `parse` checks.
    #[cfg(feature = "openapi")]
    #[test]
    fn schema_patterns_restate_the_limits() {
        fn pattern<T: utoipa::PartialSchema>() -> String {
            let schema = serde_json::to_value(T::schema()).unwrap();
            schema["pattern"].as_str().unwrap().to_owned()
        }
        assert!(pattern::<UserId>().ends_with(&format!("{{1,{USER_ID_BYTES_MAX}}}$")));
        assert!(pattern::<ClientMsgId>().ends_with(&format!("{{1,{CLIENT_MSG_ID_BYTES_MAX}}}$")));
    }
}
