//! `ApiError`: how every HTTP failure becomes a status and a `{code, message}` body, and how
//! store faults and extractor rejections map onto it without ever turning into a panic.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanes_protocol::ErrorCode;
use lanes_protocol::http::ErrorBody;
use lanes_store::StoreError;

/// A typed HTTP error.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// With `rate_limited`: when to try again.
    pub(crate) retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `rate_limited`, to be retried after `wait`.
    pub(crate) fn rate_limited(what: &str, wait: std::time::Duration) -> ApiError {
        ApiError {
            code: ErrorCode::RateLimited,
            message: format!("too many {what}; retry later"),
            retry_after: Some(wait),
        }
    }

    /// The same error as a WebSocket `error` frame answering `request_id`.
    pub(crate) fn into_frame(self, request_id: Option<String>) -> lanes_protocol::ErrorFrame {
        lanes_protocol::ErrorFrame {
            code: self.code,
            message: self.message,
            request_id,
            retry_after_ms: self.retry_after.map(millis),
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError::new(ErrorCode::NotFound, "conversation not found")
    }
}

impl From<lanes_protocol::ErrorFrame> for ApiError {
    fn from(error: lanes_protocol::ErrorFrame) -> ApiError {
        ApiError {
            code: error.code,
            message: error.message,
            retry_after: error.retry_after_ms.map(std::time::Duration::from_millis),
        }
    }
}

fn millis(wait: std::time::Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        tracing::error!("store failed: {err}");
        ApiError::new(
            ErrorCode::StorageUnavailable,
            "storage is unavailable; retry later",
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::PayloadTooLarge
        } else {
            ErrorCode::BadFrame
        };
        ApiError::new(code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::new(ErrorCode::InvalidField, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(ErrorCode::InvalidField, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            retry_after_ms: self.retry_after.map(millis),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            );
        }
        response
    }
}
