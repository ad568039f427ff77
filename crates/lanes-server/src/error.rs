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
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError::new(ErrorCode::NotFound, "conversation not found")
    }
}

impl From<lanes_protocol::ErrorFrame> for ApiError {
    fn from(error: lanes_protocol::ErrorFrame) -> ApiError {
        ApiError::new(error.code, error.message)
    }
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
        };
        (status, Json(body)).into_response()
    }
}
