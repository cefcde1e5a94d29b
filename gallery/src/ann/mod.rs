//! Approximate search: a sharded FAISS index over the store's columns.

pub mod factory;
pub mod ffi;
pub mod generation;
pub mod recall;

pub use factory::validate_factory;
pub use generation::{
    build, build_with, default_factory, default_nprobe, finger_code_factory, load, BuildControl,
    BuildParams, BuildReport, BuildStage, IndexManifest, LoadOptions, ShardedIndex,
};
pub use recall::{RecallParams, RecallSample, ShardRecall};
