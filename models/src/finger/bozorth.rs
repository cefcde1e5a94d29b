//! NIST Bozorth3, the open reference minutiae matcher, as the baseline for MCC.
//!
//! Templates go to nbis-rs through its ISO/IEC 19794-2 loader, which reads the minutiae count as a
//! signed byte: at most 127 minutiae (the most reliable) are passed. Bozorth3 keeps its working
//! arrays in C globals, so every comparison holds one process-wide lock: it does not run in
//! parallel, and its per-core rate is what the benchmark reports.

use crate::ExtractError;
use biomatch_core::finger::FingerTemplate;
use biomatch_fingerprint::iso;
use std::sync::Mutex;

/// Most minutiae nbis-rs's ISO loader accepts (its count is read as an `i8`).
pub const MAX_BOZORTH_INPUT: usize = 127;

static BOZORTH: Mutex<()> = Mutex::new(());

/// A template converted once for Bozorth3.
#[derive(Debug, Clone)]
pub struct BozorthTemplate(nbis::Minutiae);

impl BozorthTemplate {
    pub fn new(t: &FingerTemplate) -> Result<Self, ExtractError> {
        let mut t = t.clone();
        if t.minutiae.len() > MAX_BOZORTH_INPUT {
            t.minutiae.sort_by_key(|m| std::cmp::Reverse(m.quality));
            t.minutiae.truncate(MAX_BOZORTH_INPUT);
        }
        let bytes = iso::to_iso(&t);
        nbis::load_iso_19794_2_2005(&bytes)
            .map(Self)
            .map_err(|e| ExtractError::Runtime(format!("bozorth3 input: {e}")))
    }

    /// Bozorth3 score (number of compatible minutia pairs; NIST suggests 40 as a threshold).
    pub fn score(&self, other: &BozorthTemplate) -> i32 {
        let _guard = BOZORTH.lock().unwrap_or_else(|p| p.into_inner());
        self.0.compare(&other.0)
    }
}
