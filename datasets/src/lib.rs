//! biomatch-datasets: seeded synthetic populations of face-like templates, and the binary vector
//! file every tool and bench shares.
//!
//! It exists so that 1:1 and 1:N search (exact today, approximate later) can be evaluated and
//! benchmarked on 100k–1M+ identities reproducibly, without biometric data. It depends only on
//! `biomatch-core` (for [`SubjectId`](biomatch_core::SubjectId)) and touches the file system only in
//! [`format`](mod@format). Never a dependency of the service binary.
//!
//! # The model
//!
//! Let `d` be the dimension and `g ~ N(0, I/d)` a Gaussian vector with `E|g|² = 1`.
//!
//! * **Identity centre** `c_i`: uniform on the unit sphere (a normalised standard normal vector).
//! * **Sample** `s` of identity `i`: `normalise(c_i + σ·g)`, fresh `g` per sample. Sample 0 is by
//!   convention the enrolment sample, samples ≥ 1 are probes.
//!
//! *Genuine score.* For two samples `a = c + σg₁`, `b = c + σg₂`: `a·b = 1 + σ(c·g₁ + c·g₂) + σ²g₁·g₂`
//! where every term after the 1 has mean 0 and standard deviation `O(1/√d)`, and
//! `|a|² = 1 + 2σ c·g₁ + σ²|g₁|² ≈ 1 + σ²`. Hence `cos(a, b) ≈ 1 / (1 + σ²)` up to `O(1/d)`, and
//! for a wanted mean genuine cosine `m` ∈ (0, 1): **`σ² = 1/m − 1`** (m = 0.70 → σ ≈ 0.655).
//!
//! *Impostor score.* Centres of distinct identities are independent uniform directions, so their
//! cosine — and that of their samples — is ≈ `N(0, 1/d)`: 0 ± 0.088 at `d = 128`, like a real
//! face model.
//!
//! *Clustered mode* ([`ClusterConfig`]) models families and look-alikes: family centres `f_j` are
//! uniform on the sphere, identity `i` belongs to family `hash(i) mod families`, and
//! `c_i = normalise(f_j + τ·g)`. By the same argument two centres of one family have cosine
//! ≈ `1/(1 + τ²)`, so for a wanted within-family centre cosine `w`: **`τ² = 1/w − 1`**. Two
//! samples of *different* identities of the same family then score ≈ `w·m` (the centres' cosine
//! shrunk by the sample noise), samples of one identity still ≈ `m`.
//!
//! # Determinism
//!
//! Every vector is a pure function of `(seed, identity, sample)`: a ChaCha8 stream keyed by
//! splitmix64-mixing those values feeds a portable ziggurat Gaussian sampler, all arithmetic is
//! IEEE-754 in a fixed order, and `exp`/`ln` come from the pure-Rust `libm`. Any identity can be
//! generated alone, in any order, on any thread, and the same call gives the same bits on any
//! machine. Parallel helpers (rayon) only decide *where* a vector is computed, never its value.
//! [`GENERATOR_VERSION`] changes whenever that would no longer hold for an existing config.
//!
//! # Identity ranges
//!
//! Enrolled identities are `0..identities`; non-mated probes come from `identities..2^40`;
//! calibration identities ([`Population::impostor_scores`]) from `2^40..`. They never collide.

pub mod det_plot;
pub mod error;
pub mod finger;
pub mod format;
mod population;
mod rng;

pub use error::DatasetError;
pub use format::{read_vectors, write_vectors, VectorFile};
pub use population::{
    duplicate_id, parse_subject_id, subject_id, ClusterConfig, Population, PopulationConfig, Probe,
    ProbeSet, CALIBRATION_BASE, DUPLICATE_PREFIX, DUPLICATE_SAMPLE, GENERATOR_VERSION, MAX_DIM,
    MAX_IDENTITIES, PROBE_SAMPLE, SUBJECT_DIGITS, SUBJECT_PREFIX,
};
