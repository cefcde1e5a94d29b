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
use biomatch_gallery::{GalleryError, WriteFault};

/// The HTTP status each error code is answered with.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as C;
    match code {
        C::BadRequest | C::MalformedJson => StatusCode::BAD_REQUEST,
        C::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        C::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        C::Cancelled => StatusCode::CONFLICT,
        C::NotFound | C::UnknownSubject | C::NoIndex => StatusCode::NOT_FOUND,
        C::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        C::Unauthorized => StatusCode::UNAUTHORIZED,
        C::Forbidden => StatusCode::FORBIDDEN,
        C::AlreadyEnrolled | C::Duplicate | C::DedupRunning | C::DedupParametersChanged => {
            StatusCode::CONFLICT
        }
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
        | C::FaceQuality
        | C::PresentationAttack
        | C::TooFewMinutiae
        | C::ExtractorUnavailable
        | C::FingerprintsUnavailable
        | C::NoTemplateForModality
        | C::OverMemoryBudget
        | C::InvalidFactory
        | C::RecallBelowFloor => StatusCode::UNPROCESSABLE_ENTITY,
        C::NotReady
        | C::Overloaded
        | C::StoreUnavailable
        | C::WriteInDoubt
        | C::ShardUnavailable
        | C::ClusterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::NotSupported => StatusCode::NOT_IMPLEMENTED,
        C::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        C::RateLimited | C::QueueFull => StatusCode::TOO_MANY_REQUESTS,
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
    /// `duplicate` only: the enrolled subjects that matched, rendered as `candidates` next to
    /// the code and message.
    pub candidates: Option<Vec<crate::api::CandidateOut>>,
    /// `face_quality` only: the measures outside their limits, rendered as `failures`.
    pub failures: Option<Vec<biomatch_models::face::quality::QualityFailure>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code,
            message: message.into(),
            retry_after: None,
            candidates: None,
            failures: None,
        }
    }

    /// 409 `duplicate`: enroll-if-unique found these enrolled subjects matching; nothing stored.
    pub fn duplicate(candidates: Vec<crate::api::CandidateOut>) -> Self {
        let mut e = Self::new(
            ErrorCode::Duplicate,
            format!(
                "{} enrolled subject(s) match these samples at the target FPIR: nothing was \
                 enrolled",
                candidates.len()
            ),
        );
        e.candidates = Some(candidates);
        e
    }

    /// 422 `face_quality`: the face capture is unfit for `purpose`; `failures` says why.
    pub fn face_quality(
        purpose: biomatch_models::face::quality::CaptureUse,
        failures: Vec<biomatch_models::face::quality::QualityFailure>,
    ) -> Self {
        let names: Vec<&str> = failures.iter().map(|f| f.measure.as_str()).collect();
        let mut e = Self::new(
            ErrorCode::FaceQuality,
            format!(
                "the face capture is not good enough to {}: {}; retake it",
                purpose.as_str(),
                names.join(", ")
            ),
        );
        e.failures = Some(failures);
        e
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

    pub fn rate_limited(retry_after: u64) -> Self {
        let mut e = Self::new(
            ErrorCode::RateLimited,
            "this API key sent more requests than its configured rate; retry later",
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// Readiness while writes cannot be made durable (503 with Retry-After): the disk is full,
    /// or a storage I/O error; it turns ready again once a write or the maintenance probe
    /// succeeds.
    pub fn unwritable(fault: &WriteFault) -> Self {
        let why = match fault {
            WriteFault::NoSpace(_) => "no space left on the store's disk",
            WriteFault::Io(_) => "a storage I/O error",
            WriteFault::Poisoned => "the store needs a restart after a failed checkpoint",
        };
        let mut e =
            Self::new(ErrorCode::StoreUnavailable, format!("writes cannot be made durable: {why}"));
        e.retry_after = Some(1);
        e
    }

    /// 503 `write_in_doubt` with Retry-After: the client cannot be told whether its write is
    /// stored (or, for a stored one, be given its answer); the same request again resolves it.
    pub fn in_doubt(message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorCode::WriteInDoubt, message);
        e.retry_after = Some(1);
        e
    }

    pub fn timeout() -> Self {
        Self::new(ErrorCode::Timeout, "the request took too long and was cancelled")
    }

    /// The request's audit record could not be made durable, so its answer is withheld: 507
    /// when the audit log's disk is full, else 503 with Retry-After.
    pub fn audit_unavailable(e: &crate::audit::AuditError) -> Self {
        if e.is_no_space() {
            return Self::new(
                ErrorCode::InsufficientStorage,
                "the audit log's disk is full: this request was not answered; retry once space \
                 is freed",
            );
        }
        let mut err = Self::new(
            ErrorCode::StoreUnavailable,
            "the audit record of this request could not be made durable; retry later",
        );
        err.retry_after = Some(5);
        err
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
        // A cluster's missing replica or unreachable log is transient (failover, restart).
        let retry = e.is_retryable()
            || matches!(
                e.code(),
                ErrorCode::ShardUnavailable
                    | ErrorCode::ClusterUnavailable
                    | ErrorCode::WriteInDoubt
            );
        let mut api = match e.code() {
            ErrorCode::Internal => ApiError::internal(e),
            ErrorCode::StoreUnavailable => {
                tracing::error!(error = %e, "store refuses writes");
                let message = if retry {
                    "a storage error refused the write and nothing of it was stored; retry"
                } else {
                    "the store is not accepting writes"
                };
                ApiError::new(ErrorCode::StoreUnavailable, message)
            }
            ErrorCode::InsufficientStorage => {
                tracing::error!(error = %e, "write refused: no space");
                ApiError::new(
                    ErrorCode::InsufficientStorage,
                    "the store's disk is full: nothing of the write was stored; retry once space \
                     is freed",
                )
            }
            // A cluster's log holds the write but not every replica confirmed it: its message.
            ErrorCode::WriteInDoubt if matches!(e, EngineError::Invalid { .. }) => {
                tracing::warn!(error = %e, "write in doubt");
                ApiError::new(ErrorCode::WriteInDoubt, e.to_string())
            }
            ErrorCode::WriteInDoubt => {
                tracing::error!(error = %e, "write in doubt");
                ApiError::new(
                    ErrorCode::WriteInDoubt,
                    "a storage error could not be undone: the write may or may not be durable; \
                     retry it with the same Idempotency-Key to resolve it",
                )
            }
            code => ApiError::new(code, e.to_string()),
        };
        if retry {
            api.retry_after = Some(1);
        }
        api
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
    use crate::audit::AuditError;

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

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "injected")
    }

    /// Storage faults: a full disk is 507, a failed and undone write 503 with Retry-After, a
    /// write in doubt 503 `write_in_doubt` with Retry-After; no message names a file.
    #[test]
    fn storage_faults_map_to_507_and_retryable_503s() {
        use std::io::ErrorKind as K;
        let path = std::path::PathBuf::from("/secret/data/wal-000001.log");
        let cases = [
            (
                GalleryError::NoSpace { path: path.clone(), source: io(K::StorageFull) },
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
                None,
            ),
            (
                GalleryError::NoSpace { path: path.clone(), source: io(K::QuotaExceeded) },
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
                None,
            ),
            (
                GalleryError::WriteFailed { path: path.clone(), source: io(K::Other) },
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StoreUnavailable,
                Some(1),
            ),
            (
                GalleryError::InDoubt { path: path.clone(), source: io(K::Other) },
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::WriteInDoubt,
                Some(1),
            ),
            (
                GalleryError::Journal("audit writer stopped".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::StoreUnavailable,
                Some(1),
            ),
        ];
        for (g, status, code, retry_after) in cases {
            let what = g.to_string();
            let e: ApiError = g.into();
            assert_eq!((e.status, e.code, e.retry_after), (status, code, retry_after), "{what}");
            assert!(!e.message.contains("/secret"), "{}", e.message);
        }
    }

    /// The audit log's full disk is 507 whether it is met answering a read (verify) or in the
    /// journal of a write; its other failures stay internal.
    #[test]
    fn a_full_audit_disk_is_507() {
        let full = || AuditError::Io {
            path: "/a/audit-000001.log".into(),
            source: io(std::io::ErrorKind::StorageFull),
        };
        let e = ApiError::audit_unavailable(&full());
        assert_eq!(
            (e.status, e.code),
            (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::InsufficientStorage)
        );
        assert_eq!(
            ApiError::audit_unavailable(&AuditError::Closed).code,
            ErrorCode::StoreUnavailable
        );
    }
}
