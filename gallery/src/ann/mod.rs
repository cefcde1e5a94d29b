//! Approximate search: a sharded FAISS index over the store's columns.

pub mod ffi;
pub mod generation;

pub use generation::{
    build, default_factory, load, BuildParams, BuildReport, IndexManifest, LoadOptions,
    ShardedIndex,
};
