//! The service's one error type and its one mapping to HTTP.
//!
//! Handlers return `Result<_, ApiError>`. Every error carries an [`ErrorCode`] (the engine's one
//! list of codes, serialised in error bodies and listed in the OpenAPI document); [`status_of`]
//! is the only place a code becomes an HTTP status. `ApiError` becomes a response *without a
//! body* that carries the error in its extensions; the outermost middleware
//! ([`crate::middleware::envelope`]) renders every error as `{"code", "message", "request_id"}`.
//! Internal errors are logged with the request id and answered with a generic message: storage
//! paths, FAISS messages and the like never reach the client. No message contains biometric data.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use biomatch_engine::EngineError;
pub use biomatch_engine::ErrorCode;
use biomatch_gallery::GalleryError;

/// The HTTP status each error code is answered with.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::BadRequest | C::MalformedJson => StatusCode::BAD_REQUEST,
        C::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        C::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::NotFound | C::UnknownSubject | C::NoIndex => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::Forbidden => StatusCode::FORBIDDEN,
        C::AlreadyEnrolled => StatusCode::CONFLICT,
        C::InvalidSubjectId
        | C::InvalidFingerPosition
        | C::InvalidRate
        | C::InvalidParameter
        | C::InvalidTemplate
        | C::InvalidMinutiaeRecord
        | C::FingerPositionMismatch
        | C::UnknownModel
        | C::ModelMismatch
        | C::IdempotencyKeyReused
        | C::ImageTooLarge
        | C::ImageTooSmall
        | C::UndecodableImage
        | C::BlankImage
        | C::NoFace
        | C::SeveralFaces
        | C::FaceTooSmall
        | C::TooFewMinutiae
        | C::ExtractorUnavailable
        | C::FingerprintsUnavailable
        | C::NoTemplateForModality
        | C::OverMemoryBudget => StatusCode::UNPROCESSABLE_ENTITY,
        C::NotReady | C::Overloaded | C::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::Timeout => StatusCode::GATEWAY_TIMEOUT,
        C::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a Retry-After header (load shedding).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status: status_of(code), code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "a valid API key is required (Authorization: Bearer <key>)",
        )
    }

    pub fn forbidden(role: &str) -> Self {
        Self::new(ErrorCode::Forbidden, format!("this API key lacks the '{role}' role"))
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such route")
    }

    pub fn not_ready() -> Self {
        let mut e = Self::new(ErrorCode::NotReady, "the gallery is still loading");
        e.retry_after = Some(1);
        e
    }

    pub fn overloaded(retry_after: u64) -> Self {
        let mut e = Self::new(ErrorCode::Overloaded, "too many requests in flight; retry later");
        e.retry_after = Some(retry_after);
        e
    }

    pub fn timeout() -> Self {
        Self::new(ErrorCode::Timeout, "the request took too long and was cancelled")
    }

    /// An internal fault: the detail goes to the log (with the request id), not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = self.status.into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r.extensions_mut().insert(self);
        r
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e.code() {
            ErrorCode::Internal => ApiError::internal(e),
            ErrorCode::StoreUnavailable => {
                tracing::error!(error = %e, "store refuses writes");
                ApiError::new(ErrorCode::StoreUnavailable, "the store is not accepting writes")
            }
            code => ApiError::new(code, e.to_string()),
        }
    }
}

impl From<GalleryError> for ApiError {
    fn from(e: GalleryError) -> Self {
        EngineError::from(e).into()
    }
}

impl From<biomatch_core::CoreError> for ApiError {
    fn from(e: biomatch_core::CoreError) -> Self {
        EngineError::from(e).into()
    }
}

impl From<biomatch_models::ExtractError> for ApiError {
    fn from(e: biomatch_models::ExtractError) -> Self {
        use biomatch_models::ExtractError as X;
        let code = match e {
            X::Empty => ErrorCode::BadRequest,
            X::TooManyBytes { .. } | X::TooLarge { .. } | X::TooManyPixels { .. } => {
                ErrorCode::ImageTooLarge
            }
            X::Undecodable(_) => ErrorCode::UndecodableImage,
            X::NoFace => ErrorCode::NoFace,
            X::SeveralFaces(_) => ErrorCode::SeveralFaces,
            X::FaceTooSmall { .. } => ErrorCode::FaceTooSmall,
            X::TooSmall { .. } => ErrorCode::ImageTooSmall,
            X::Blank { .. } => ErrorCode::BlankImage,
            X::TooFewMinutiae { .. } => ErrorCode::TooFewMinutiae,
            X::Runtime(_) => return ApiError::internal(e),
        };
        ApiError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_of_its_class() {
        assert_eq!(status_of(ErrorCode::AlreadyEnrolled), StatusCode::CONFLICT);
        assert_eq!(status_of(ErrorCode::Internal), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status_of(ErrorCode::ExtractorUnavailable), StatusCode::UNPROCESSABLE_ENTITY);
        let e: ApiError = GalleryError::Poisoned.into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
        );
    }
}
