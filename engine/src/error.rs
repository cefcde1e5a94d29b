//! The engine's one error type, and the one list of error codes every layer answers with.
//!
//! [`ErrorCode`] is serialised (snake_case) into every error body and listed in the OpenAPI
//! document; the HTTP layer maps each code to a status in exactly one place. User errors (bad
//! input, unknown subject) are kept apart from storage faults ([`EngineError::is_user_error`]).

use biomatch_core::CoreError;
use biomatch_gallery::GalleryError;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Every error code the service answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Request shape and transport.
    BadRequest,
    MalformedJson,
    UnsupportedMediaType,
    BodyTooLarge,
    /// The request body did not arrive in time (total timeout or minimum rate).
    RequestTimeout,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    // Input validation.
    InvalidSubjectId,
    InvalidFingerPosition,
    InvalidRate,
    InvalidParameter,
    InvalidTemplate,
    InvalidMinutiaeRecord,
    FingerPositionMismatch,
    UnknownModel,
    ModelMismatch,
    IdempotencyKeyReused,
    // Images.
    ImageTooLarge,
    ImageTooSmall,
    UndecodableImage,
    BlankImage,
    NoFace,
    SeveralFaces,
    FaceTooSmall,
    /// A face capture outside the quality gate's limits for its use (pose, occlusion, …).
    FaceQuality,
    /// The presentation-attack detector judged a 1:1 probe a photo, screen or mask.
    PresentationAttack,
    TooFewMinutiae,
    ExtractorUnavailable,
    FingerprintsUnavailable,
    // Subjects.
    AlreadyEnrolled,
    /// Enroll-if-unique found enrolled subjects matching the samples: nothing was stored; the
    /// answer lists them (`candidates`) for adjudication.
    Duplicate,
    UnknownSubject,
    NoTemplateForModality,
    // Operations.
    OverMemoryBudget,
    /// A FAISS factory string that cannot build an ID-preserving index of the model.
    InvalidFactory,
    /// The operation (an index build) was cancelled.
    Cancelled,
    /// A new index generation's sampled recall is below the configured floor: refused, the
    /// previous generation keeps serving.
    RecallBelowFloor,
    NoIndex,
    NotReady,
    Overloaded,
    /// This API key sent more requests than its configured rate.
    RateLimited,
    /// The asynchronous job queue holds `jobs.max_pending` jobs: retry later.
    QueueFull,
    Timeout,
    StoreUnavailable,
    /// The store's disk (or quota) is full: nothing of the write was stored.
    InsufficientStorage,
    /// A write may or may not be durable (its fsync failed and could not be undone): a retry
    /// with the same Idempotency-Key resolves it.
    WriteInDoubt,
    /// A backlog deduplication is already running (on this output directory, or in the service).
    DedupRunning,
    /// A deduplication checkpoint was made with other parameters (or exists and was not resumed).
    DedupParametersChanged,
    /// Cluster: no replica of a shard answered (503; nothing partial is answered).
    ShardUnavailable,
    /// Cluster: etcd or the NATS log is unreachable from this node (503).
    ClusterUnavailable,
    /// This endpoint or option is not available in this deployment (501), e.g. on a cluster
    /// node.
    NotSupported,
    Internal,
}

impl ErrorCode {
    /// The code as it appears in error bodies.
    pub fn as_str(self) -> &'static str {
        use ErrorCode as C;
        match self {
            C::BadRequest => "bad_request",
            C::MalformedJson => "malformed_json",
            C::UnsupportedMediaType => "unsupported_media_type",
            C::BodyTooLarge => "body_too_large",
            C::RequestTimeout => "request_timeout",
            C::NotFound => "not_found",
            C::MethodNotAllowed => "method_not_allowed",
            C::Unauthorized => "unauthorized",
            C::Forbidden => "forbidden",
            C::InvalidSubjectId => "invalid_subject_id",
            C::InvalidFingerPosition => "invalid_finger_position",
            C::InvalidRate => "invalid_rate",
            C::InvalidParameter => "invalid_parameter",
            C::InvalidTemplate => "invalid_template",
            C::InvalidMinutiaeRecord => "invalid_minutiae_record",
            C::FingerPositionMismatch => "finger_position_mismatch",
            C::UnknownModel => "unknown_model",
            C::ModelMismatch => "model_mismatch",
            C::IdempotencyKeyReused => "idempotency_key_reused",
            C::ImageTooLarge => "image_too_large",
            C::ImageTooSmall => "image_too_small",
            C::UndecodableImage => "undecodable_image",
            C::BlankImage => "blank_image",
            C::NoFace => "no_face",
            C::SeveralFaces => "several_faces",
            C::FaceTooSmall => "face_too_small",
            C::FaceQuality => "face_quality",
            C::PresentationAttack => "presentation_attack",
            C::TooFewMinutiae => "too_few_minutiae",
            C::ExtractorUnavailable => "extractor_unavailable",
            C::FingerprintsUnavailable => "fingerprints_unavailable",
            C::AlreadyEnrolled => "already_enrolled",
            C::Duplicate => "duplicate",
            C::UnknownSubject => "unknown_subject",
            C::NoTemplateForModality => "no_template_for_modality",
            C::OverMemoryBudget => "over_memory_budget",
            C::InvalidFactory => "invalid_factory",
            C::Cancelled => "cancelled",
            C::RecallBelowFloor => "recall_below_floor",
            C::NoIndex => "no_index",
            C::NotReady => "not_ready",
            C::Overloaded => "overloaded",
            C::RateLimited => "rate_limited",
            C::QueueFull => "queue_full",
            C::Timeout => "timeout",
            C::StoreUnavailable => "store_unavailable",
            C::InsufficientStorage => "insufficient_storage",
            C::WriteInDoubt => "write_in_doubt",
            C::DedupRunning => "dedup_running",
            C::DedupParametersChanged => "dedup_parameters_changed",
            C::ShardUnavailable => "shard_unavailable",
            C::ClusterUnavailable => "cluster_unavailable",
            C::NotSupported => "not_supported",
            C::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an engine call can fail with.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The caller's input breaks a rule the engine checks itself (a code and a message that
    /// carries counts and names, never biometric data).
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Gallery(#[from] GalleryError),
}

impl EngineError {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        EngineError::Invalid { code, message: message.into() }
    }

    /// The code this error is answered with.
    pub fn code(&self) -> ErrorCode {
        use GalleryError as G;
        match self {
            EngineError::Invalid { code, .. } => *code,
            EngineError::Core(c) => core_code(c),
            EngineError::Gallery(g) => match g {
                G::Invalid(c) => core_code(c),
                G::AlreadyEnrolled(_) => ErrorCode::AlreadyEnrolled,
                G::UnknownSubject(_) => ErrorCode::UnknownSubject,
                G::NoTemplate { .. } => ErrorCode::NoTemplateForModality,
                G::EmptyEnrollment | G::DuplicateModality(_) | G::DuplicateInBatch(_) => {
                    ErrorCode::BadRequest
                }
                G::ModelMismatch { .. } => ErrorCode::ModelMismatch,
                G::WrongDimension { .. }
                | G::InvalidFinger { .. }
                | G::MissingFingerPosition { .. } => ErrorCode::InvalidTemplate,
                G::BadMaxResults { .. } | G::BadIndexParams(_) => ErrorCode::InvalidParameter,
                G::OverBudget { .. } => ErrorCode::OverMemoryBudget,
                G::BadFactory(_) => ErrorCode::InvalidFactory,
                G::Cancelled => ErrorCode::Cancelled,
                G::RecallBelowFloor { .. } => ErrorCode::RecallBelowFloor,
                G::Poisoned | G::Journal(_) | G::WriteFailed { .. } => ErrorCode::StoreUnavailable,
                G::NoSpace { .. } => ErrorCode::InsufficientStorage,
                G::InDoubt { .. } => ErrorCode::WriteInDoubt,
                G::Corrupt { .. }
                | G::Config(_)
                | G::Io { .. }
                | G::Faiss(_)
                | G::Locked(_)
                | G::ReadOnly => ErrorCode::Internal,
            },
        }
    }

    /// Whether the same request may well succeed if retried in a moment (a write that failed
    /// with a transient storage error and was undone, or is in doubt): answered with
    /// Retry-After. A full disk needs space freed first; a poisoned store needs a restart.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Gallery(
                GalleryError::WriteFailed { .. }
                    | GalleryError::InDoubt { .. }
                    | GalleryError::Journal(_)
            )
        )
    }

    /// True when the caller's request was at fault.
    pub fn is_user_error(&self) -> bool {
        match self {
            EngineError::Invalid { .. } | EngineError::Core(_) => true,
            EngineError::Gallery(g) => g.is_user_error(),
        }
    }
}

fn core_code(e: &CoreError) -> ErrorCode {
    use biomatch_core::CoreError as C;
    match e {
        C::EmptySubjectId | C::SubjectIdTooLong { .. } | C::SubjectIdNotPrintable { .. } => {
            ErrorCode::InvalidSubjectId
        }
        C::BadFingerPosition(_) => ErrorCode::InvalidFingerPosition,
        C::BadModelId(_) => ErrorCode::UnknownModel,
        C::BadRate(_) => ErrorCode::InvalidRate,
        _ => ErrorCode::InvalidTemplate,
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_their_names() {
        for c in
            [ErrorCode::NoTemplateForModality, ErrorCode::ExtractorUnavailable, ErrorCode::Internal]
        {
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{}\"", c.as_str()));
        }
    }
}
