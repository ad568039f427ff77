//! The HTTP API (`/v1/...`) as typed async calls. JSON in and out; error bodies become
//! [`ClientError::Api`]. No retries here: callers decide with [`ClientError::is_retryable`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lanes_protocol::http::{
    AddMember, Conversation, ConversationList, CreateDirect, CreateGroup, Credentials,
    DeleteMessage, EditMessage, ErrorBody, EventsPage, History, MemberPage, PollRequest, Position,
    PresenceList, React, ReceiptList, Role, SendMessage, Session, SetPresence, SetTyping, Settings,
};
use lanes_protocol::{
    AckFrame, ClientMsgId, Content, ConversationId, PresenceState, Receipt, Seq, TypingState,
    UserId, UserPresence,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{ClientError, error_chain};

/// Longest wait for one HTTP request, connect to last byte.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A handle to a Lanes server's HTTP API. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct HttpApi {
    http: reqwest::Client,
    /// Without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base_url: Arc<str>,
    token: Option<Arc<str>>,
}

impl fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApi")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl HttpApi {
    /// An unauthenticated handle for `base_url`, like `http://127.0.0.1:8080`.
    pub fn new(base_url: &str) -> HttpApi {
        // Building fails only when no TLS backend can start; this build has none to start.
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .unwrap_or_default();
        HttpApi {
            http,
            base_url: Arc::from(base_url.trim_end_matches('/')),
            token: None,
        }
    }

    /// The same server, authenticated with `token` (a session token or an application JWT).
    pub fn with_token(&self, token: &str) -> HttpApi {
        HttpApi {
            token: Some(Arc::from(token)),
            ..self.clone()
        }
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /v1/register`: creates a password account and logs it in.
    pub async fn register(&self, username: &str, password: &str) -> Result<Session, ClientError> {
        let credentials = Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let request = self
            .request(Method::POST, "/v1/register")
            .json(&credentials);
        decode(&self.execute(request).await?)
    }

    /// `POST /v1/login`: a new session for a password account.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session, ClientError> {
        let credentials = Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let request = self.request(Method::POST, "/v1/login").json(&credentials);
        decode(&self.execute(request).await?)
    }

    /// `POST /v1/logout`: revokes this handle's token.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.execute(self.request(Method::POST, "/v1/logout"))
            .await
            .map(drop)
    }

    /// `GET /v1/conversations`: the caller's conversations, newest activity first.
    pub async fn conversations(&self) -> Result<Vec<Conversation>, ClientError> {
        let request = self.request(Method::GET, "/v1/conversations");
        let list: ConversationList = decode(&self.execute(request).await?)?;
        Ok(list.conversations)
    }

    /// `GET /v1/conversations?limit=N&after=…`: up to `limit` of them, newest activity first,
    /// from where the page that answered with `next` ended (`after`; `None`: the first page).
    pub async fn conversations_page(
        &self,
        limit: usize,
        after: Option<&str>,
    ) -> Result<ConversationList, ClientError> {
        let mut request = self
            .request(Method::GET, "/v1/conversations")
            .query(&[("limit", limit)]);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        decode(&self.execute(request).await?)
    }

    /// `GET /v1/conversations/{id}`: at most 100 members named (the caller first; all counted
    /// in `member_count`); `members` pages through everyone.
    pub async fn conversation(&self, id: ConversationId) -> Result<Conversation, ClientError> {
        let request = self.request(Method::GET, &format!("/v1/conversations/{id}"));
        decode(&self.execute(request).await?)
    }

    /// `GET /v1/conversations/{id}/members?after=U&limit=N`: up to `limit` members with user ids
    /// after `after` (from the first without), by user id; for the next page pass the last
    /// user id while `has_more`.
    pub async fn members(
        &self,
        id: ConversationId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<MemberPage, ClientError> {
        let mut request = self
            .request(Method::GET, &format!("/v1/conversations/{id}/members"))
            .query(&[("limit", limit)]);
        if let Some(after) = after {
            request = request.query(&[("after", after.as_str())]);
        }
        decode(&self.execute(request).await?)
    }

    /// `POST /v1/conversations/direct`: the direct conversation with `other`, created if new.
    pub async fn create_direct(&self, other: &UserId) -> Result<Conversation, ClientError> {
        let body = CreateDirect {
            user_id: other.clone(),
        };
        let request = self
            .request(Method::POST, "/v1/conversations/direct")
            .json(&body);
        decode(&self.execute(request).await?)
    }

    /// `POST /v1/conversations/group`: a new group owned by the caller.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[UserId],
    ) -> Result<Conversation, ClientError> {
        let body = CreateGroup {
            name: name.to_owned(),
            members: members.to_vec(),
        };
        let request = self
            .request(Method::POST, "/v1/conversations/group")
            .json(&body);
        decode(&self.execute(request).await?)
    }

    /// `POST /v1/conversations/{id}/members`: adds `user` (as `member` when `role` is `None`).
    pub async fn add_member(
        &self,
        id: ConversationId,
        user: &UserId,
        role: Option<Role>,
    ) -> Result<(), ClientError> {
        let body = AddMember {
            user_id: user.clone(),
            role,
        };
        let request = self
            .request(Method::POST, &format!("/v1/conversations/{id}/members"))
            .json(&body);
        self.execute(request).await.map(drop)
    }

    /// `DELETE /v1/conversations/{id}/members/{user_id}`.
    pub async fn remove_member(
        &self,
        id: ConversationId,
        user: &UserId,
    ) -> Result<(), ClientError> {
        // User ids are letters, digits and `_-.@`, all valid in a path segment as they are.
        let path = format!("/v1/conversations/{id}/members/{user}");
        self.execute(self.request(Method::DELETE, &path))
            .await
            .map(drop)
    }

    /// `POST /v1/conversations/{id}/leave`.
    pub async fn leave(&self, id: ConversationId) -> Result<(), ClientError> {
        let path = format!("/v1/conversations/{id}/leave");
        self.execute(self.request(Method::POST, &path))
            .await
            .map(drop)
    }

    /// `GET /v1/conversations/{id}/messages?after=S&limit=N`: up to `limit` messages with seq
    /// greater than `after`, ascending.
    pub async fn history_after(
        &self,
        id: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<History, ClientError> {
        let path = format!("/v1/conversations/{id}/messages?after={after}&limit={limit}");
        decode(&self.execute(self.request(Method::GET, &path)).await?)
    }

    /// `GET /v1/conversations/{id}/messages?before=S&limit=N`: the `limit` messages before
    /// `before`, ascending.
    pub async fn history_before(
        &self,
        id: ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<History, ClientError> {
        let path = format!("/v1/conversations/{id}/messages?before={before}&limit={limit}");
        decode(&self.execute(self.request(Method::GET, &path)).await?)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// A lane event over HTTP (`POST /v1/conversations/{id}/messages…`): answered with its ack
    /// after the commit, like over the WebSocket. The admin API's system content is refused.
    pub async fn append(
        &self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        content: Content,
    ) -> Result<AckFrame, ClientError> {
        let base = format!("/v1/conversations/{conversation_id}/messages");
        let request = match content {
            Content::Message { body, reply_to } => {
                self.request(Method::POST, &base).json(&SendMessage {
                    client_msg_id,
                    body,
                    reply_to,
                })
            }
            Content::Edit { target_seq, body } => self
                .request(Method::POST, &format!("{base}/{target_seq}/edit"))
                .json(&EditMessage {
                    client_msg_id,
                    body,
                }),
            Content::Delete { target_seq } => self
                .request(Method::POST, &format!("{base}/{target_seq}/delete"))
                .json(&DeleteMessage { client_msg_id }),
            Content::Reaction {
                target_seq,
                emoji,
                add,
            } => self
                .request(Method::POST, &format!("{base}/{target_seq}/reactions"))
                .json(&React {
                    client_msg_id,
                    emoji,
                    remove: !add,
                }),
            Content::System { .. } => {
                return Err(ClientError::Api {
                    status: 0,
                    code: lanes_protocol::ErrorCode::InvalidField,
                    message: "system messages are posted with the admin API".into(),
                });
            }
        };
        decode(&self.execute(request).await?)
    }

    /// `POST /v1/conversations/{id}/received` or `/read`.
    pub async fn mark(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
        read: bool,
    ) -> Result<(), ClientError> {
        let which = if read { "read" } else { "received" };
        let request = self
            .request(
                Method::POST,
                &format!("/v1/conversations/{conversation_id}/{which}"),
            )
            .json(&Position { seq });
        self.execute(request).await.map(drop)
    }

    /// `GET /v1/conversations/{id}/receipts`.
    pub async fn receipts(
        &self,
        conversation_id: ConversationId,
    ) -> Result<Vec<Receipt>, ClientError> {
        let request = self.request(
            Method::GET,
            &format!("/v1/conversations/{conversation_id}/receipts"),
        );
        Ok(decode::<ReceiptList>(&self.execute(request).await?)?.receipts)
    }

    /// `POST /v1/conversations/{id}/typing`.
    pub async fn set_typing(
        &self,
        conversation_id: ConversationId,
        state: TypingState,
    ) -> Result<(), ClientError> {
        let request = self
            .request(
                Method::POST,
                &format!("/v1/conversations/{conversation_id}/typing"),
            )
            .json(&SetTyping { state });
        self.execute(request).await.map(drop)
    }

    /// `POST /v1/presence`.
    pub async fn set_presence(&self, state: PresenceState) -> Result<(), ClientError> {
        let request = self
            .request(Method::POST, "/v1/presence")
            .json(&SetPresence { state });
        self.execute(request).await.map(drop)
    }

    /// `GET /v1/presence`: those of `user_ids` who share a conversation with us.
    pub async fn presence(&self, user_ids: &[UserId]) -> Result<Vec<UserPresence>, ClientError> {
        let ids: Vec<&str> = user_ids.iter().map(UserId::as_str).collect();
        let request = self
            .request(Method::GET, "/v1/presence")
            .query(&[("user_ids", ids.join(","))]);
        Ok(decode::<PresenceList>(&self.execute(request).await?)?.users)
    }

    /// `GET /v1/me/settings`.
    pub async fn settings(&self) -> Result<Settings, ClientError> {
        let request = self.request(Method::GET, "/v1/me/settings");
        decode(&self.execute(request).await?)
    }

    /// `PUT /v1/me/settings`.
    pub async fn set_settings(&self, settings: &Settings) -> Result<Settings, ClientError> {
        let request = self.request(Method::PUT, "/v1/me/settings").json(settings);
        decode(&self.execute(request).await?)
    }

    /// `POST /v1/events`: one long poll. Waits up to the request's timeout (plus slack for the
    /// network) for the server's answer.
    pub async fn poll(&self, poll: &PollRequest) -> Result<EventsPage, ClientError> {
        let wait = Duration::from_millis(poll.timeout_ms.unwrap_or(25_000));
        let request = self
            .request(Method::POST, "/v1/events")
            .timeout(wait + HTTP_TIMEOUT)
            .json(poll);
        decode(&self.execute(request).await?)
    }

    /// Sends the request and returns the body of a success, or the error it maps to.
    async fn execute(&self, request: RequestBuilder) -> Result<Vec<u8>, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|err| ClientError::Transport(error_chain(&err)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| ClientError::Transport(error_chain(&err)))?;
        if status.is_success() {
            Ok(body.to_vec())
        } else {
            Err(error_from_response(status, &body))
        }
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|err| ClientError::Protocol(format!("unexpected response body: {err}")))
}

/// Maps a non-success response. A Lanes error body gives a typed error; anything else came from
/// something in between (a proxy's error page) or a server that does not speak the protocol.
fn error_from_response(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => ClientError::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        },
        Err(_) if matches!(status.as_u16(), 502..=504) => {
            ClientError::Transport(format!("HTTP {status} from a gateway"))
        }
        Err(_) => ClientError::Protocol(format!("HTTP {status} without a Lanes error body")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_protocol::ErrorCode;

    /// `expected` is the Debug form of the error, which names the variant and every field.
    fn check(status: u16, body: &str, expected: &str) {
        let status = StatusCode::from_u16(status).unwrap();
        let error = error_from_response(status, body.as_bytes());
        assert_eq!(format!("{error:?}"), expected, "{status} {body}");
    }

    #[test]
    fn maps_error_responses() {
        check(
            404,
            r#"{"code":"not_found","message":"no such conversation"}"#,
            &format!(
                "{:?}",
                ClientError::Api {
                    status: 404,
                    code: ErrorCode::NotFound,
                    message: "no such conversation".into()
                }
            ),
        );
        check(
            503,
            r#"{"code":"storage_unavailable","message":"disk"}"#,
            r#"Api { status: 503, code: StorageUnavailable, message: "disk" }"#,
        );
        check(
            502,
            "<html>bad gateway</html>",
            r#"Transport("HTTP 502 Bad Gateway from a gateway")"#,
        );
        check(
            500,
            "oops",
            r#"Protocol("HTTP 500 Internal Server Error without a Lanes error body")"#,
        );
        check(
            400,
            r#"{"code":"a_new_code","message":"x"}"#,
            r#"Protocol("HTTP 400 Bad Request without a Lanes error body")"#,
        );
    }

    #[test]
    fn trims_base_url_and_redacts_token() {
        let api = HttpApi::new("http://localhost:8080/").with_token("secret");
        assert_eq!(api.base_url(), "http://localhost:8080");
        assert!(!format!("{api:?}").contains("secret"));
    }
}
