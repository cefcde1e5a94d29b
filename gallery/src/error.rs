//! Errors of the gallery layer. User errors (bad input, unknown subject) are kept apart from
//! storage faults so the service can map them to 4xx and 5xx respectively.

use biomatch_core::{CoreError, Modality, ModelId, SubjectId};
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GalleryError {
    /// The input violates a domain rule (dimension, NaN, id format, …).
    #[error(transparent)]
    Invalid(#[from] CoreError),
    #[error("subject {0} is already enrolled")]
    AlreadyEnrolled(SubjectId),
    #[error("subject {0} is not enrolled")]
    UnknownSubject(SubjectId),
    #[error("subject {subject} has no {modality} template")]
    NoTemplate { subject: SubjectId, modality: Modality },
    #[error("an enrollment needs at least one template")]
    EmptyEnrollment,
    #[error("an enrollment may hold at most one template per modality; {0} appears twice")]
    DuplicateModality(Modality),
    #[error("subject {0} appears twice in one batch")]
    DuplicateInBatch(SubjectId),
    /// A finger template breaks an invariant (image size, minutia outside the image, …).
    #[error("finger template {index} is invalid: {source}")]
    InvalidFinger { index: usize, source: biomatch_core::finger::FingerError },

    #[error(
        "finger template {index} does not say which finger it is (a position 1..=10 is required)"
    )]
    MissingFingerPosition { index: usize },
    #[error("model {got} is not accepted by this gallery{}", gallery_hint(.gallery))]
    ModelMismatch { got: ModelId, gallery: Option<ModelId> },
    #[error("template of model {model} has dimension {got}; the gallery stores {expected}")]
    WrongDimension { model: ModelId, expected: usize, got: usize },
    #[error("max_results must be between 1 and {max}; got {got}")]
    BadMaxResults { got: usize, max: usize },

    #[error("bad index parameters: {0}")]
    BadIndexParams(String),
    /// A FAISS factory string that cannot build an ID-preserving index of this dimension
    /// (refused by [`crate::ann::validate_factory`] before any work).
    #[error("invalid index factory: {0}")]
    BadFactory(String),
    /// An index build was cancelled (`BuildControl::cancel`); nothing was published.
    #[error("the index build was cancelled")]
    Cancelled,

    /// A new index generation's sampled recall against exact search is below the configured
    /// floor: it was not published and the previous generation keeps serving.
    #[error(
        "index generation {generation} refused: sampled recall {recall:.4} (worst shard \
         {worst_shard:.4}, {probes} probes) is below the floor {floor}; the previous generation \
         keeps serving"
    )]
    RecallBelowFloor {
        generation: String,
        recall: f64,
        worst_shard: f64,
        floor: f64,
        probes: usize,
    },
    /// FAISS reported an error (or the wrapper refused a call that would have crashed it).
    #[error(transparent)]
    Faiss(#[from] crate::ann::ffi::FaissError),
    #[error(
        "index generation {generation} needs about {need} bytes of memory; the budget is {budget}"
    )]
    OverBudget { generation: String, need: u64, budget: u64 },
    /// The store's files are damaged in a way that cannot be repaired safely.
    #[error("store file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("store configuration conflicts with the data on disk: {0}")]
    Config(String),
    #[error("this store was opened read-only")]
    ReadOnly,
    #[error("store {0} is open in another process")]
    Locked(PathBuf),
    #[error("the store refuses writes after an I/O failure it could not undo; reopen it")]
    Poisoned,
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A write was refused because the disk (or the quota) is full: ENOSPC or EDQUOT. Nothing
    /// of the write was stored; it can succeed once space is freed.
    #[error("no space left for {path}: {source}; nothing of the write was stored")]
    NoSpace { path: PathBuf, source: std::io::Error },
    /// A write failed with another I/O error (EIO, …) and was undone: nothing of it was stored,
    /// and a retry may succeed.
    #[error("write to {path} failed: {source}; nothing of the write was stored")]
    WriteFailed { path: PathBuf, source: std::io::Error },
    /// A write failed after (part of) it reached the log, and the log could not be cut back: it
    /// may or may not be durable. The store takes no other write until the log is cut back (a
    /// later write or [`crate::Store::probe_writes`] retries that); a retry of the same write then
    /// finds it either absent (and stores it) or stored.
    #[error("write to {path} is in doubt: {source}; it may or may not be durable")]
    InDoubt { path: PathBuf, source: std::io::Error },
    /// The commit hook (the audit journal) could not record a commit group; nothing was stored.
    #[error("the commit journal refused the write: {0}")]
    Journal(String),
}

fn gallery_hint(gallery: &Option<ModelId>) -> String {
    match gallery {
        Some(m) => format!(
            " (the gallery's templates are {m}; a probe must come from the same model version)"
        ),
        None => String::new(),
    }
}

impl GalleryError {
    /// True when the caller's request was at fault (maps to a 4xx); false for storage faults.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            GalleryError::Corrupt { .. }
                | GalleryError::Config(_)
                | GalleryError::Poisoned
                | GalleryError::Locked(_)
                | GalleryError::ReadOnly
                | GalleryError::Io { .. }
                | GalleryError::NoSpace { .. }
                | GalleryError::WriteFailed { .. }
                | GalleryError::InDoubt { .. }
                | GalleryError::Journal(_)
                | GalleryError::Faiss(_)
                | GalleryError::OverBudget { .. }
                | GalleryError::RecallBelowFloor { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> GalleryError {
        let path = path.into();
        move |source| GalleryError::Io { path, source }
    }

    /// A failed write to `path`: [`GalleryError::NoSpace`] for a full disk or quota,
    /// [`GalleryError::WriteFailed`] otherwise (for writes that were undone).
    pub(crate) fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> GalleryError {
        let path = path.into();
        move |source| {
            if is_no_space(&source) {
                GalleryError::NoSpace { path, source }
            } else {
                GalleryError::WriteFailed { path, source }
            }
        }
    }

    /// An [`GalleryError::Io`] whose cause is a full disk becomes [`GalleryError::NoSpace`]
    /// (for writes that leave nothing behind, such as a failed checkpoint); anything else as is.
    pub(crate) fn no_space_typed(self) -> GalleryError {
        match self {
            GalleryError::Io { path, source } if is_no_space(&source) => {
                GalleryError::NoSpace { path, source }
            }
            other => other,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> GalleryError {
        GalleryError::Corrupt { path: path.into(), reason: reason.into() }
    }
}

/// Whether an I/O error means the disk or the quota is full (ENOSPC, EDQUOT).
pub fn is_no_space(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
}

pub type Result<T, E = GalleryError> = std::result::Result<T, E>;
