//! What nodes ask each other over NATS request/reply (`bm.<cluster>.node.<id>`), as JSON.

use crate::log::WireSamples;
use biomatch_core::{Modality, ModelId, SubjectId};
use biomatch_engine::{
    EngineError, ErrorCode, IdentifyParams, ModalityScore, SearchKind, SubjectView, Verification,
};
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
    Identify { shards: Vec<u32>, min_seq: u64, samples: WireSamples, params: ParamsDto },
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
    Enrolled { view: ViewDto, created: bool },
    Deleted,
    Failed { code: ErrorCode, message: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewDto {
    pub subject: SubjectId,
    pub seq: u64,
    pub templates: Vec<(Modality, ModelId)>,
}

impl From<SubjectView> for ViewDto {
    fn from(v: SubjectView) -> Self {
        ViewDto { subject: v.subject, seq: v.seq, templates: v.templates }
    }
}

impl From<ViewDto> for SubjectView {
    fn from(v: ViewDto) -> Self {
        SubjectView { subject: v.subject, seq: v.seq, templates: v.templates }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreDto {
    pub modality: Modality,
    pub score: f32,
    pub fmr: f64,
    pub threshold: Option<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerificationDto {
    pub subject: SubjectId,
    pub is_match: bool,
    pub fmr: f64,
    pub target_fmr: f64,
    pub scores: Vec<ScoreDto>,
}

impl From<Verification> for VerificationDto {
    fn from(v: Verification) -> Self {
        VerificationDto {
            subject: v.subject,
            is_match: v.is_match,
            fmr: v.fmr,
            target_fmr: v.target_fmr,
            scores: v
                .scores
                .into_iter()
                .map(|s| ScoreDto {
                    modality: s.modality,
                    score: s.score,
                    fmr: s.fmr,
                    threshold: s.threshold,
                })
                .collect(),
        }
    }
}

impl From<VerificationDto> for Verification {
    fn from(v: VerificationDto) -> Self {
        Verification {
            subject: v.subject,
            is_match: v.is_match,
            fmr: v.fmr,
            target_fmr: v.target_fmr,
            scores: v
                .scores
                .into_iter()
                .map(|s| ModalityScore {
                    modality: s.modality,
                    score: s.score,
                    fmr: s.fmr,
                    threshold: s.threshold,
                })
                .collect(),
        }
    }
}

/// [`IdentifyParams`] on the wire (no shortlist copies between nodes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParamsDto {
    pub max_results: usize,
    pub threshold: Option<f32>,
    pub target_fpir: Option<f64>,
    pub subset: Option<Vec<SubjectId>>,
    /// `auto`, `exact` or `index`.
    pub mode: String,
}

impl From<&IdentifyParams> for ParamsDto {
    fn from(p: &IdentifyParams) -> Self {
        ParamsDto {
            max_results: p.max_results,
            threshold: p.threshold,
            target_fpir: p.target_fpir,
            subset: p.subset.clone(),
            mode: match p.mode {
                SearchKind::Auto => "auto",
                SearchKind::Exact => "exact",
                SearchKind::Index => "index",
            }
            .into(),
        }
    }
}

impl From<&ParamsDto> for IdentifyParams {
    fn from(p: &ParamsDto) -> Self {
        IdentifyParams {
            max_results: p.max_results,
            threshold: p.threshold,
            target_fpir: p.target_fpir,
            subset: p.subset.clone(),
            mode: match p.mode.as_str() {
                "exact" => SearchKind::Exact,
                "index" => SearchKind::Index,
                _ => SearchKind::Auto,
            },
            keep_shortlist: false,
        }
    }
}
