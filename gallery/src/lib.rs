//! biomatch-gallery: the durable template store and exact search, shared by the matcher service
//! and the offline index builder.
//!
//! - [`Store`]: an embedded, crash-safe store (own WAL + immutable memory-mapped fp16 segments,
//!   see `ARCHITECTURE.md` for why not an embedded KV engine). Enroll/delete are acknowledged only
//!   after fsync; open recovers from a crash at any instant.
//! - [`Store::verify`] / [`Store::identify`]: exact 1:1 and 1:N search with a SIMD fp16 kernel.
//!   A subject's vector templates and minutiae fingers are one record (one WAL frame, one
//!   sequence number, one fsync); concurrent writers share fsyncs (group commit).
//! - [`FingerGallery`]: MCC 1:1 and pre-selected 1:N search over the store's fingers.
//!
//! This crate does file I/O and CPU work; it never touches the network or an async runtime.

pub mod ann;
pub mod error;
pub mod finger_gallery;
pub mod finger_mcc;
mod finger_segment;
mod fsutil;
pub mod gallery;
pub mod kernel;
pub mod legacy;
mod manifest;
mod minutiae;
pub mod search;
mod segment;
mod state;
pub mod store;
mod subjects;
mod wal;

pub use error::{is_no_space, GalleryError, Result};
pub use finger_gallery::{
    finger_code_spec, FingerGallery, FingerScore, FingerSearchInfo, FingerSearchParams,
    PreparedFinger, ShortlistInfo, SubjectFingerScores,
};
pub use fsutil::{atomic_write, check_crc, push_crc, sync_dir, try_lock_exclusive};
pub use gallery::{AnnParams, Gallery, SearchMode, SearchPath};
pub use minutiae::MAX_FINGERS;
pub use search::{IdentifyOptions, Probe, MAX_RESULTS_LIMIT, MAX_SHORTLIST};
pub use segment::RowMeta;
pub use store::{
    ColumnStats, CommitHook, Committed, Enrollment, FingerStats, ModelSpec, Note, Recovery,
    ScanBatch, ScanSummary, Store, StoreOptions, StoreStats, SubjectInfo, TemplateInfo, WriteFault,
    WriteOp,
};
