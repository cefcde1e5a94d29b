//! biomatch-gallery: the durable template store and exact search, shared by the matcher service
//! and the offline index builder.
//!
//! - [`Store`]: an embedded, crash-safe store (own WAL + immutable memory-mapped fp16 segments,
//!   see `ARCHITECTURE.md` for why not an embedded KV engine). Enroll/delete are acknowledged only
//!   after fsync; open recovers from a crash at any instant.
//! - [`Store::verify`] / [`Store::identify`]: exact 1:1 and 1:N search with a SIMD fp16 kernel.
//! - [`FingerStore`]: the crash-safe store of fingerprint minutiae templates (up to ten fingers
//!   per subject), in its own directory, on the same CRC-framed log format as the WAL.
//!
//! This crate does file I/O and CPU work; it never touches the network or an async runtime.

pub mod ann;
pub mod error;
pub mod finger_gallery;
pub mod finger_store;
mod fsutil;
pub mod gallery;
pub mod kernel;
mod manifest;
pub mod search;
mod segment;
mod state;
pub mod store;
mod wal;

pub use error::{GalleryError, Result};
pub use finger_gallery::{FingerGallery, FingerSearchInfo, FingerSearchParams};
pub use finger_store::{FingerRecovery, FingerStore, FingerStoreOptions, FingerStoreStats};
pub use gallery::{AnnParams, Gallery, SearchMode, SearchPath};
pub use search::{IdentifyOptions, Probe, MAX_RESULTS_LIMIT};
pub use segment::RowMeta;
pub use store::{
    ColumnStats, Enrollment, ModelSpec, Recovery, ScanBatch, ScanSummary, Store, StoreOptions,
    StoreStats, SubjectInfo, TemplateInfo,
};
