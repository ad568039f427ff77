//! The HTTP API (`/v1/...`) as typed async calls. JSON in and out; error bodies become
//! [`ClientError::Api`]. No retries here: callers decide with [`ClientError::is_retryable`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lanes_protocol::http::{
    AddMember, Conversation, ConversationList, CreateDirect, CreateGroup, Credentials, ErrorBody,
    History, Role, Session,
};
use lanes_protocol::{ConversationId, Seq, UserId};
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

    /// `GET /v1/conversations/{id}`.
    pub async fn conversation(&self, id: ConversationId) -> Result<Conversation, ClientError> {
        let request = self.request(Method::GET, &format!("/v1/conversations/{id}"));
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
