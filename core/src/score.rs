//! Comparison scores and candidate lists.

use crate::{Modality, SubjectId};
use serde::{Deserialize, Serialize};

/// One modality's contribution to a candidate's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModalityScore {
    pub modality: Modality,
    /// Cosine similarity in [-1, 1] (higher is more similar).
    pub score: f32,
}

/// A gallery subject returned by an identification search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub subject_id: SubjectId,
    /// The (fused) score used for ranking and thresholding.
    pub score: f32,
    /// Per-modality scores that produced `score`.
    pub scores: Vec<ModalityScore>,
}

/// Order candidates best first; ties broken by subject id so results are deterministic.
pub fn rank(candidates: &mut [Candidate]) {
    candidates
        .sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.subject_id.cmp(&b.subject_id)));
}
