//! The SDK's one error type, and which failures are worth retrying with the same request.

use lanes_protocol::ErrorCode;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a typed error: an HTTP error body, or a WebSocket `error` frame.
    #[error("{message} ({}, status {status})", code.as_str())]
    Api {
        /// The HTTP status, or 0 for a WebSocket `error` frame.
        status: u16,
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation, for humans.
        message: String,
    },
    /// The network failed: connection refused or reset, timeout, or a proxy error page.
    #[error("transport: {0}")]
    Transport(String),
    /// The server sent something this client cannot decode.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The `Client` was closed (or its background task has stopped).
    #[error("the client was closed")]
    Closed,
}

impl ClientError {
    /// True when the outcome is unknown or the failure temporary, so repeating the same request
    /// (for a send: with the same `client_msg_id`) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api { code, .. } => code_is_retryable(*code),
            ClientError::Transport(_) => true,
            ClientError::Protocol(_) | ClientError::Closed => false,
        }
    }
}

/// Codes after which the same request is repeated later instead of failing: the store could not
/// commit, the server hit a bug or is restarting, or it asks us to slow down. Every other code is
/// definite: repeating the request would fail the same way.
pub(crate) fn code_is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::StorageUnavailable
            | ErrorCode::Internal
            | ErrorCode::ShuttingDown
            | ErrorCode::RateLimited
    )
}

/// Renders an error with its chain of sources, which is where `reqwest` and `tungstenite` keep
/// the useful part ("connection refused").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(error: ClientError, retryable: bool) {
        assert_eq!(error.is_retryable(), retryable, "{error}");
    }

    #[test]
    fn retryable_errors() {
        let api = |code| ClientError::Api {
            status: 0,
            code,
            message: String::new(),
        };
        check(api(ErrorCode::StorageUnavailable), true);
        check(api(ErrorCode::Internal), true);
        check(api(ErrorCode::ShuttingDown), true);
        check(api(ErrorCode::RateLimited), true);
        check(api(ErrorCode::NotFound), false);
        check(api(ErrorCode::MessageTooLarge), false);
        check(api(ErrorCode::Unauthorized), false);
        check(ClientError::Transport("reset".into()), true);
        check(ClientError::Protocol("junk".into()), false);
        check(ClientError::Closed, false);
    }
}
