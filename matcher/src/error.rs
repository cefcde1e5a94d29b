//! The service's one error type and its one mapping to HTTP.
//!
//! Handlers return `Result<_, ApiError>`. `ApiError` becomes a response *without a body* that
//! carries the error in its extensions; the outermost middleware ([`crate::middleware::envelope`])
//! renders every error as `{"code", "message", "request_id"}`. Internal errors are logged with the
//! request id and answered with a generic message: storage paths, FAISS messages and the like
//! never reach the client. No message contains biometric data.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use biomatch_gallery::GalleryError;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a Retry-After header (load shedding).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
        )
    }

    pub fn forbidden(role: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key lacks the '{role}' role"),
        )
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn not_ready() -> Self {
        let mut e =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the gallery is still loading");
        e.retry_after = Some(1);
        e
    }

    pub fn overloaded(retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; retry later",
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took too long and was cancelled",
        )
    }

    /// An internal fault: the detail goes to the log (with the request id), not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
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

impl From<biomatch_core::CoreError> for ApiError {
    fn from(e: biomatch_core::CoreError) -> Self {
        use biomatch_core::CoreError as C;
        let code = match e {
            C::EmptySubjectId | C::SubjectIdTooLong { .. } | C::SubjectIdNotPrintable { .. } => {
                "invalid_subject_id"
            }
            C::BadFingerPosition(_) => "invalid_finger_position",
            C::BadModelId(_) => "unknown_model",
            C::BadRate(_) => "invalid_rate",
            _ => "invalid_template",
        };
        ApiError::invalid(code, e.to_string())
    }
}

impl From<biomatch_models::ExtractError> for ApiError {
    fn from(e: biomatch_models::ExtractError) -> Self {
        use biomatch_models::ExtractError as X;
        let code = match e {
            X::Empty => return ApiError::bad_request(e.to_string()),
            X::TooManyBytes { .. } | X::TooLarge { .. } => "image_too_large",
            X::Undecodable(_) => "undecodable_image",
            X::NoFace => "no_face",
            X::SeveralFaces(_) => "several_faces",
            X::FaceTooSmall { .. } => "face_too_small",
            X::TooSmall { .. } => "image_too_small",
            X::Blank { .. } => "blank_image",
            X::TooFewMinutiae { .. } => "too_few_minutiae",
            X::Runtime(_) => return ApiError::internal(e),
        };
        ApiError::invalid(code, e.to_string())
    }
}

impl From<GalleryError> for ApiError {
    fn from(e: GalleryError) -> Self {
        use GalleryError as G;
        match e {
            G::Invalid(c) => c.into(),
            G::AlreadyEnrolled(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_enrolled", e.to_string())
            }
            G::UnknownSubject(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_subject", e.to_string())
            }
            G::NoTemplate { .. } => ApiError::invalid("no_template_for_modality", e.to_string()),
            G::EmptyEnrollment | G::DuplicateModality(_) | G::DuplicateInBatch(_) => {
                ApiError::bad_request(e.to_string())
            }
            G::ModelMismatch { .. } => ApiError::invalid("model_mismatch", e.to_string()),
            G::WrongDimension { .. } => ApiError::invalid("invalid_template", e.to_string()),
            G::InvalidFinger { .. } | G::MissingFingerPosition { .. } => {
                ApiError::invalid("invalid_template", e.to_string())
            }
            G::BadMaxResults { .. } | G::BadIndexParams(_) => {
                ApiError::invalid("invalid_parameter", e.to_string())
            }
            G::Poisoned => {
                tracing::error!("store refuses writes after an I/O failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is not accepting writes",
                )
            }
            G::OverBudget { .. } => ApiError::invalid("over_memory_budget", e.to_string()),
            G::Corrupt { .. }
            | G::Config(_)
            | G::Io { .. }
            | G::Faiss(_)
            | G::Locked(_)
            | G::ReadOnly => ApiError::internal(e),
        }
    }
}
