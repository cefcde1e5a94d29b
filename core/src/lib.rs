//! biomatch-core: the pure domain of biometric matching.
//!
//! Everything here is plain data and arithmetic — no files, no threads, no async runtime — so the
//! service, the offline builder, the benches and the evaluation tools all agree on one definition of
//! a subject id, a template, a score and a decision.

pub mod calibration;
pub mod error;
pub mod finger;
pub mod fusion;
pub mod id;
pub mod metrics;
pub mod modality;
pub mod score;
pub mod template;

pub use calibration::{CalibrationTable, Decision, FmrPoint};
pub use error::CoreError;
pub use id::SubjectId;
pub use modality::{FingerPosition, Modality};
pub use score::{Candidate, ModalityScore};
pub use template::{ModelId, Template};
