//! Validation errors of the domain layer. All of them are the caller's fault (bad input).

use thiserror::Error;

/// A value that does not satisfy a domain invariant. Messages never contain biometric data.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    #[error("subject id is empty")]
    EmptySubjectId,
    #[error("subject id is {len} bytes long; the limit is {max}")]
    SubjectIdTooLong { len: usize, max: usize },
    #[error("subject id contains a non-printable or non-ASCII character at byte {at}")]
    SubjectIdNotPrintable { at: usize },
    #[error("finger position {0} is outside the ISO/ANSI range 1..=10")]
    BadFingerPosition(u8),
    #[error("template has dimension {got}; model {model} expects {expected}")]
    WrongDimension { model: String, expected: usize, got: usize },
    #[error("template has a non-finite value (NaN or infinity) at index {index}")]
    NonFinite { index: usize },
    #[error("template is a zero vector and cannot be normalised")]
    ZeroVector,
    #[error("model id is invalid: {0}")]
    BadModelId(String),
    #[error("false-match rate {0} is outside (0, 1)")]
    BadRate(f64),
    #[error("calibration needs at least {min} impostor scores; got {got}")]
    TooFewImpostors { min: usize, got: usize },
    #[error("calibration table is invalid: {0}")]
    BadCalibration(String),
}
