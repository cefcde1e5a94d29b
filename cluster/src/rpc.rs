//! What nodes ask each other over NATS request/reply (`bm.<cluster>.node.<id>`), as JSON.

use crate::log::WireSamples;
use biomatch_core::SubjectId;
use biomatch_engine::{EngineError, ErrorCode, IdentifyParams, SubjectView};
use serde::{Deserialize, Serialize};

/// A request to a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answer once the replica of `shard` has applied the log through `seq`, with the outcome of
    /// the write at `seq` when it is known.
    Wait { shard: u32, seq: u64 },
    /// 1:1 against a subject of `shard`, once the replica has applied the log through `min_seq`.
    Verify { shard: u32, min_seq: u64, subject: SubjectId, samples: WireSamples, target_fmr: f64 },
    /// 1:N over the node's replicas of `shards`, uncut (the coordinator cuts at the cluster's N).
    Identify { shards: Vec<u32>, min_seq: u64, samples: WireSamples, params: IdentifyParams },
    /// What is enrolled for a subject of `shard`.
    Subject { shard: u32, min_seq: u64, subject: SubjectId },
    /// List the files of this node's replica of `shard` for a copy, and hold its checkpoints
    /// until `SnapshotDone` (or [`crate::snapshot::HOLD`] without a chunk request).
    SnapshotList { shard: u32 },
    /// Up to `len` bytes (at most [`crate::snapshot::CHUNK`]) of a listed file, base64.
    SnapshotChunk { shard: u32, path: String, offset: u64, len: u64 },
    /// The copy is done: checkpoints may run again.
    SnapshotDone { shard: u32 },
}

/// An error answered by a node: the engine's code and message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl From<&EngineError> for RemoteError {
    fn from(e: &EngineError) -> Self {
        RemoteError { code: e.code(), message: e.to_string() }
    }
}

impl From<RemoteError> for EngineError {
    fn from(e: RemoteError) -> Self {
        EngineError::invalid(e.code, e.message)
    }
}

/// A reply: the answer or the error.
pub type Reply<T> = Result<T, RemoteError>;

/// The outcome of applying one log message, the same on every replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Enrolled { view: SubjectView, created: bool },
    Deleted,
    Failed { code: ErrorCode, message: String },
}
