//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong generating a population or reading/writing a vector file.
///
/// Messages name paths, sizes and offsets, never vector contents.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A [`crate::PopulationConfig`] field is out of range.
    #[error("invalid population config: {field} {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// More distinct probes were requested than the population can supply.
    #[error("requested {requested} {kind} probes but only {available} distinct identities are available")]
    TooManyProbes { kind: &'static str, requested: u64, available: u64 },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file does not start with [`crate::format::MAGIC`].
    #[error("{path}: not a biomatch vector file (bad magic)")]
    BadMagic { path: PathBuf },

    #[error("{path}: unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },

    #[error("{path}: unknown flag bits {flags:#x}")]
    UnsupportedFlags { path: PathBuf, flags: u32 },

    /// A header field is out of range (dimension, metadata length, sizes that overflow).
    #[error("{path}: bad header: {reason}")]
    BadHeader { path: PathBuf, reason: String },

    /// The file is shorter than its header says (or than a header).
    #[error("{path}: truncated: header implies {expected} bytes, file has {actual}")]
    Truncated { path: PathBuf, expected: u64, actual: u64 },

    /// The file is longer than its header says.
    #[error("{path}: {actual} bytes but header implies {expected}: trailing data")]
    TrailingData { path: PathBuf, expected: u64, actual: u64 },

    #[error("{path}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch { path: PathBuf, stored: u32, computed: u32 },

    #[error("{path}: metadata is not valid JSON: {source}")]
    BadMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A record handed to the writer has the wrong number of components.
    #[error("record {index}: dimension {got}, file dimension is {expected}")]
    DimensionMismatch { index: u64, expected: usize, got: usize },

    /// A record handed to the writer holds a NaN or an infinity.
    #[error("record {index}: non-finite value at component {component}")]
    NonFinite { index: u64, component: usize },
}

impl DatasetError {
    /// Wrap an I/O error on `path`; the path is copied only when an error occurs.
    pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.to_owned(), source }
    }
}
