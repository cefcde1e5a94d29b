//! The synthetic population: identity centres, samples, probe sets and calibration scores.
//!
//! See the crate documentation for the model and the derivation of its parameters.

use crate::error::DatasetError;
use crate::format::write_vectors;
use crate::rng::{StreamKey, Ziggurat};
use biomatch_core::SubjectId;
use rand::seq::index;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Version of the generation algorithm. Bumped whenever the same config would yield other bits;
/// recorded in file metadata by [`Population::metadata`].
pub const GENERATOR_VERSION: u32 = 1;

/// Enrolled identities are `0..identities` and non-mated probe identities lie in
/// `identities..MAX_IDENTITIES`; both stay below this bound.
pub const MAX_IDENTITIES: u64 = 1 << 40;

/// Calibration identities ([`Population::impostor_scores`]) start here, so they never collide
/// with enrolled or probe identities.
pub const CALIBRATION_BASE: u64 = 1 << 40;

/// Largest supported dimension.
pub const MAX_DIM: usize = 1 << 16;

/// Sample index used for every probe that [`Population::probes`] returns (sample 0 is the
/// enrolment sample).
pub const PROBE_SAMPLE: u32 = 1;

/// Sample index of a planted duplicate ([`Population::planted_duplicates`]): a fresh sample of an
/// enrolled identity, neither the enrolment sample (0) nor the probes' ([`PROBE_SAMPLE`]).
pub const DUPLICATE_SAMPLE: u32 = 2;

/// Prefix of planted duplicates' subject ids: `DUP-` and the duplicate's number, 9 digits.
pub const DUPLICATE_PREFIX: &str = "DUP-";

/// Prefix of synthetic subject ids.
pub const SUBJECT_PREFIX: &str = "SYN-";

/// Minimum number of digits in a synthetic subject id (zero-padded).
pub const SUBJECT_DIGITS: usize = 9;

/// What to generate. Serialised into every file written from a population, so a file says how
/// to regenerate it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopulationConfig {
    /// Number of enrolled identities, `0..identities`.
    pub identities: u64,
    /// Vector dimension.
    pub dim: usize,
    /// Master seed: every vector is a pure function of `(seed, identity, sample)`.
    pub seed: u64,
    /// Expected cosine between two samples of the same identity, in (0, 1).
    pub genuine_mean: f64,
    /// Group identities into families of look-alikes; `None` for independent identities.
    pub clustered: Option<ClusterConfig>,
}

impl Default for PopulationConfig {
    fn default() -> Self {
        Self { identities: 100_000, dim: 128, seed: 0, genuine_mean: 0.70, clustered: None }
    }
}

/// Families of look-alike identities.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Number of families (clusters); identity `i` belongs to family `hash(i) mod families`.
    pub families: u64,
    /// Expected cosine between the centres of two identities of the same family, in (0, 1).
    pub within_family_cosine: f64,
}

impl PopulationConfig {
    /// Check every field; [`Population::new`] calls this.
    pub fn validate(&self) -> Result<(), DatasetError> {
        let bad = |field, reason: String| Err(DatasetError::InvalidConfig { field, reason });
        if self.identities > MAX_IDENTITIES {
            return bad("identities", format!("must be at most 2^40, got {}", self.identities));
        }
        if !(2..=MAX_DIM).contains(&self.dim) {
            return bad("dim", format!("must be in 2..={MAX_DIM}, got {}", self.dim));
        }
        if !(self.genuine_mean > 0.0 && self.genuine_mean < 1.0) {
            return bad("genuine_mean", format!("must be in (0, 1), got {}", self.genuine_mean));
        }
        if let Some(c) = &self.clustered {
            if c.families == 0 {
                return bad("clustered.families", "must be at least 1".into());
            }
            if !(c.within_family_cosine > 0.0 && c.within_family_cosine < 1.0) {
                return bad(
                    "clustered.within_family_cosine",
                    format!("must be in (0, 1), got {}", c.within_family_cosine),
                );
            }
        }
        Ok(())
    }
}

/// Noise scale `s` such that `normalise(c + s·g)`, `|c| = 1`, `g ~ N(0, I/d)`, has expected cosine
/// `target` with `c`'s other perturbations: `1 / (1 + s²) = target`.
fn noise_scale(target: f64) -> f64 {
    (1.0 / target - 1.0).sqrt()
}

/// Derived ChaCha keys, one per purpose, so that no two purposes share a stream.
#[derive(Clone, Debug)]
struct Keys {
    centre: StreamKey,
    family: StreamKey,
    family_of: StreamKey,
    sample: StreamKey,
    probes: StreamKey,
    calibration: StreamKey,
}

impl Keys {
    fn new(seed: u64) -> Self {
        Self {
            centre: StreamKey::new(seed, 1),
            family: StreamKey::new(seed, 2),
            family_of: StreamKey::new(seed, 3),
            sample: StreamKey::new(seed, 4),
            probes: StreamKey::new(seed, 5),
            calibration: StreamKey::new(seed, 6),
        }
    }
}

/// Family centres are cached when they take at most this many `f64`s (32 MiB).
const FAMILY_CACHE_LIMIT: u64 = 1 << 22;

/// A validated population model. Cheap to share across threads; every method is `&self`.
pub struct Population {
    config: PopulationConfig,
    /// `σ / √d`: per-component standard deviation of the sample noise.
    sample_noise: f64,
    /// `τ / √d`: per-component standard deviation of an identity around its family centre.
    family_noise: f64,
    keys: Keys,
    /// `families × dim` unit family centres, when small enough to cache.
    family_cache: Option<Vec<f64>>,
    normal: &'static Ziggurat,
}

impl fmt::Debug for Population {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Population")
            .field("config", &self.config)
            .field("sigma", &self.sigma())
            .field("tau", &self.tau())
            .field("family_cache", &self.family_cache.is_some())
            .finish_non_exhaustive()
    }
}

/// One probe: a sample of an identity, with the ground truth needed to score a search.
#[derive(Clone, PartialEq)]
pub struct Probe {
    pub identity: u64,
    pub sample: u32,
    /// Unit-length vector.
    pub vector: Vec<f32>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("identity", &self.identity)
            .field("sample", &self.sample)
            .field("dim", &self.vector.len())
            .finish()
    }
}

/// Probes for a 1:N evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeSet {
    /// Probes of enrolled identities (a search should return `identity`).
    pub mated: Vec<Probe>,
    /// Probes of identities that are never enrolled (a search should return nothing).
    pub nonmated: Vec<Probe>,
}

impl Population {
    /// Validate `config` and derive the model parameters.
    pub fn new(config: PopulationConfig) -> Result<Self, DatasetError> {
        config.validate()?;
        let sqrt_d = (config.dim as f64).sqrt();
        let sample_noise = noise_scale(config.genuine_mean) / sqrt_d;
        let family_noise =
            config.clustered.map_or(0.0, |c| noise_scale(c.within_family_cosine) / sqrt_d);
        let mut population = Self {
            keys: Keys::new(config.seed),
            config,
            sample_noise,
            family_noise,
            family_cache: None,
            normal: Ziggurat::get(),
        };
        if let Some(c) = population.config.clustered {
            let dim = population.config.dim;
            if c.families.saturating_mul(dim as u64) <= FAMILY_CACHE_LIMIT {
                let mut cache = vec![0.0; c.families as usize * dim];
                cache.par_chunks_mut(dim).enumerate().for_each(|(family, out)| {
                    population.family_centre_f64(family as u64, out);
                });
                population.family_cache = Some(cache);
            }
        }
        Ok(population)
    }

    pub fn config(&self) -> &PopulationConfig {
        &self.config
    }

    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// Number of enrolled identities.
    pub fn identities(&self) -> u64 {
        self.config.identities
    }

    /// The sample noise scale `σ = √(1/genuine_mean − 1)`.
    pub fn sigma(&self) -> f64 {
        noise_scale(self.config.genuine_mean)
    }

    /// The family noise scale `τ = √(1/within_family_cosine − 1)`, or 0 when not clustered.
    pub fn tau(&self) -> f64 {
        self.config.clustered.map_or(0.0, |c| noise_scale(c.within_family_cosine))
    }

    /// The family of `identity`, or `None` when the population is not clustered.
    pub fn family(&self, identity: u64) -> Option<u64> {
        self.config.clustered.map(|c| self.keys.family_of.hash(identity) % c.families)
    }

    /// The unit-length centre of `identity`.
    pub fn centre(&self, identity: u64) -> Vec<f32> {
        let mut buf = vec![0.0; self.dim()];
        self.centre_f64(identity, &mut buf);
        to_f32(&buf)
    }

    /// Sample `sample` of `identity`, unit length. Sample 0 is the enrolment sample; samples
    /// `>= 1` are probes. A pure function of `(seed, identity, sample)`.
    pub fn sample(&self, identity: u64, sample: u32) -> Vec<f32> {
        let mut buf = vec![0.0; self.dim()];
        self.sample_f64(identity, sample, &mut buf);
        to_f32(&buf)
    }

    /// [`Population::sample`] into `out` without allocating the result; `scratch` is resized as
    /// needed and can be reused across calls.
    ///
    /// # Panics
    /// If `out.len() != self.dim()`.
    pub fn sample_into(&self, identity: u64, sample: u32, scratch: &mut Vec<f64>, out: &mut [f32]) {
        assert_eq!(out.len(), self.dim(), "output length must equal the population dimension");
        scratch.resize(self.dim(), 0.0);
        self.sample_f64(identity, sample, scratch);
        for (o, v) in out.iter_mut().zip(scratch.iter()) {
            *o = *v as f32;
        }
    }

    /// Sample 0 of every enrolled identity, in identity order, `batch` identities at a time
    /// (a `batch` of 0 counts as 1). Each batch is generated in parallel on the rayon pool.
    pub fn enrolment_batches(
        &self,
        batch: usize,
    ) -> impl Iterator<Item = Vec<(u64, Vec<f32>)>> + '_ {
        let batch = batch.max(1) as u64;
        let n = self.identities();
        (0..n.div_ceil(batch)).map(move |b| {
            let start = b * batch;
            let len = (batch.min(n - start)) as usize;
            (0..len)
                .into_par_iter()
                .map_init(
                    || vec![0.0; self.dim()],
                    |buf, k| {
                        let identity = start + k as u64;
                        self.sample_f64(identity, 0, buf);
                        (identity, to_f32(buf))
                    },
                )
                .collect()
        })
    }

    /// `mated` probes (sample [`PROBE_SAMPLE`] of distinct enrolled identities chosen uniformly
    /// from `0..identities`) and `nonmated` probes (sample [`PROBE_SAMPLE`] of distinct identities
    /// chosen uniformly from `identities..MAX_IDENTITIES`, never enrolled). Deterministic in
    /// `(seed, probe_seed)`; vectors are generated in parallel.
    pub fn probes(
        &self,
        mated: usize,
        nonmated: usize,
        probe_seed: u64,
    ) -> Result<ProbeSet, DatasetError> {
        let n = self.identities();
        let spare = MAX_IDENTITIES - n;
        if mated as u64 > n {
            return Err(DatasetError::TooManyProbes {
                kind: "mated",
                requested: mated as u64,
                available: n,
            });
        }
        if nonmated as u64 > spare {
            return Err(DatasetError::TooManyProbes {
                kind: "non-mated",
                requested: nonmated as u64,
                available: spare,
            });
        }
        let too_big = |_| DatasetError::InvalidConfig {
            field: "identities",
            reason: "exceeds this platform's address space".into(),
        };
        let mut rng = self.keys.probes.rng(probe_seed, 0);
        let mated_ids: Vec<u64> =
            index::sample(&mut rng, usize::try_from(n).map_err(too_big)?, mated)
                .into_iter()
                .map(|i| i as u64)
                .collect();
        let mut rng = self.keys.probes.rng(probe_seed, 1);
        let nonmated_ids: Vec<u64> =
            index::sample(&mut rng, usize::try_from(spare).map_err(too_big)?, nonmated)
                .into_iter()
                .map(|i| n + i as u64)
                .collect();
        let make = |ids: Vec<u64>| -> Vec<Probe> {
            ids.into_par_iter()
                .map_init(
                    || vec![0.0; self.dim()],
                    |buf, identity| {
                        self.sample_f64(identity, PROBE_SAMPLE, buf);
                        Probe { identity, sample: PROBE_SAMPLE, vector: to_f32(buf) }
                    },
                )
                .collect()
        };
        Ok(ProbeSet { mated: make(mated_ids), nonmated: make(nonmated_ids) })
    }

    /// Planted duplicates for a backlog deduplication: `round(share · identities)` distinct
    /// enrolled identities, chosen uniformly, sorted. Duplicate `k` is enrolled again under
    /// [`duplicate_id`]`(k)` with sample [`DUPLICATE_SAMPLE`] (same identity, fresh sample),
    /// so the pair (`subject_id(identity)`, `duplicate_id(k)`) is the truth. Deterministic in
    /// `(seed, dup_seed)`.
    pub fn planted_duplicates(&self, share: f64, dup_seed: u64) -> Result<Vec<u64>, DatasetError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(DatasetError::InvalidConfig {
                field: "duplicates",
                reason: format!("must be a share in [0, 1], got {share}"),
            });
        }
        let n = usize::try_from(self.identities()).map_err(|_| DatasetError::InvalidConfig {
            field: "identities",
            reason: "exceeds this platform's address space".into(),
        })?;
        let count = ((share * n as f64).round() as usize).min(n);
        let mut rng = self.keys.probes.rng(dup_seed, 2);
        let mut ids: Vec<u64> =
            index::sample(&mut rng, n, count).into_iter().map(|i| i as u64).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// `count` impostor (different-identity) cosine scores for threshold calibration.
    ///
    /// Two disjoint pools of `a ≈ √count` and `b = ⌈count / a⌉` calibration identities are drawn
    /// from `CALIBRATION_BASE..` (an offset chosen by `calib_seed`, disjoint from enrolled and
    /// probe identities) and every pair across the pools is scored with the sample-0 vectors, row
    /// by row, truncated to `count`. Scores sharing a pool vector are correlated, which does not
    /// bias the score distribution. In a clustered population same-family pairs occur at their
    /// natural rate `1 / families`. Deterministic in `(seed, count, calib_seed)`.
    pub fn impostor_scores(&self, count: usize, calib_seed: u64) -> Vec<f32> {
        if count == 0 {
            return Vec::new();
        }
        let mut a = count.isqrt();
        if a * a < count {
            a += 1;
        }
        let b = count.div_ceil(a);
        // An offset below 2^60 keeps base + a + b far from overflow.
        let base = CALIBRATION_BASE + (self.keys.calibration.hash(calib_seed) >> 4);
        let pool_a = self.flat_samples(base, a, 0);
        let pool_b = self.flat_samples(base + a as u64, b, 0);
        let d = self.dim();
        let mut scores = vec![0.0f32; count];
        scores.par_chunks_mut(b).zip(pool_a.par_chunks_exact(d)).for_each(|(row, va)| {
            for (s, vb) in row.iter_mut().zip(pool_b.chunks_exact(d)) {
                *s = dot(va, vb);
            }
        });
        scores
    }

    /// Metadata for a vector file generated from this population: the generator, its version,
    /// the full config and `content` (what the file holds, e.g. `"enrolment"`).
    pub fn metadata(&self, content: &str) -> serde_json::Value {
        serde_json::json!({
            "generator": "biomatch-datasets",
            "generator_version": GENERATOR_VERSION,
            "population": self.config,
            "content": content,
        })
    }

    /// Write sample 0 of every enrolled identity to `path` in the vector file format
    /// (atomically), generating in parallel batches. Returns the number of records.
    pub fn write_enrolment(&self, path: impl AsRef<Path>) -> Result<u64, DatasetError> {
        let records = self
            .enrolment_batches(16_384)
            .flat_map(|batch| batch.into_iter().map(|(identity, v)| (identity, 0u32, v)));
        write_vectors(path, &self.metadata("enrolment"), self.dim(), records)
    }

    /// `len` consecutive identities from `start`, sample `sample`, as one row-major buffer.
    fn flat_samples(&self, start: u64, len: usize, sample: u32) -> Vec<f32> {
        let d = self.dim();
        let mut out = vec![0.0f32; len * d];
        out.par_chunks_mut(d).enumerate().for_each_init(
            || vec![0.0; d],
            |buf, (k, row)| {
                self.sample_f64(start + k as u64, sample, buf);
                for (o, v) in row.iter_mut().zip(buf.iter()) {
                    *o = *v as f32;
                }
            },
        );
        out
    }

    /// `out += scale · z`, `z ~ N(0, I)` from `rng`.
    fn add_gaussian(&self, mut rng: impl rand::RngCore, scale: f64, out: &mut [f64]) {
        for v in out {
            *v += scale * self.normal.sample(&mut rng);
        }
    }

    fn family_centre_f64(&self, family: u64, out: &mut [f64]) {
        if let Some(cache) = &self.family_cache {
            let d = self.dim();
            let at = family as usize * d;
            out.copy_from_slice(&cache[at..at + d]);
            return;
        }
        out.fill(0.0);
        self.add_gaussian(self.keys.family.rng(family, 0), 1.0, out);
        normalise(out);
    }

    fn centre_f64(&self, identity: u64, out: &mut [f64]) {
        match self.family(identity) {
            None => {
                out.fill(0.0);
                self.add_gaussian(self.keys.centre.rng(identity, 0), 1.0, out);
            }
            Some(family) => {
                self.family_centre_f64(family, out);
                self.add_gaussian(self.keys.centre.rng(identity, 0), self.family_noise, out);
            }
        }
        normalise(out);
    }

    fn sample_f64(&self, identity: u64, sample: u32, out: &mut [f64]) {
        self.centre_f64(identity, out);
        let rng = self.keys.sample.rng(identity, u64::from(sample));
        self.add_gaussian(rng, self.sample_noise, out);
        normalise(out);
    }
}

/// The synthetic subject id of `identity`: `SYN-` and at least 9 zero-padded digits,
/// e.g. `SYN-000000042`.
pub fn subject_id(identity: u64) -> SubjectId {
    // Always valid: short printable ASCII.
    SubjectId::new(format!("{SUBJECT_PREFIX}{identity:0SUBJECT_DIGITS$}"))
        .unwrap_or_else(|_| unreachable!("synthetic subject ids are valid"))
}

/// The subject id of planted duplicate `k` ([`Population::planted_duplicates`]): `DUP-` and 9
/// zero-padded digits, never a [`subject_id`].
pub fn duplicate_id(k: u64) -> SubjectId {
    // Always valid: short printable ASCII.
    SubjectId::new(format!("{DUPLICATE_PREFIX}{k:0SUBJECT_DIGITS$}"))
        .unwrap_or_else(|_| unreachable!("duplicate subject ids are valid"))
}

/// Inverse of [`subject_id`]: `None` unless `id` is exactly what [`subject_id`] produces for
/// some identity.
pub fn parse_subject_id(id: &SubjectId) -> Option<u64> {
    let digits = id.as_str().strip_prefix(SUBJECT_PREFIX)?;
    if digits.len() < SUBJECT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let identity: u64 = digits.parse().ok()?;
    // Reject non-canonical padding such as `SYN-0000000042` (10 digits for a small number).
    (digits.len() == SUBJECT_DIGITS.max(identity.to_string().len())).then_some(identity)
}

/// Scale to unit length in place (a zero vector, probability 0, becomes the first basis vector).
fn normalise(v: &mut [f64]) {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = 1.0 / norm;
        v.iter_mut().for_each(|x| *x *= inv);
    } else if let Some(first) = v.first_mut() {
        *first = 1.0;
    }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Dot product with eight fixed accumulators: vectorises, and the summation order (hence the
/// result) is the same on every machine.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn population(identities: u64, seed: u64) -> Population {
        Population::new(PopulationConfig { identities, seed, ..Default::default() }).unwrap()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn mean(xs: impl Iterator<Item = f32>) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for x in xs {
            sum += f64::from(x);
            n += 1;
        }
        sum / n as f64
    }

    #[test]
    fn same_seed_same_bits_other_seed_other_bits() {
        let a = population(1000, 7);
        let b = population(1000, 7);
        let c = population(1000, 8);
        for (id, s) in [(0, 0), (1, 0), (1, 1), (999, 3), (1 << 39, 0)] {
            assert_eq!(bits(&a.sample(id, s)), bits(&b.sample(id, s)));
            assert_eq!(bits(&a.centre(id)), bits(&b.centre(id)));
            assert_ne!(a.sample(id, s), c.sample(id, s));
        }
        assert_ne!(a.sample(1, 0), a.sample(1, 1));
        assert_ne!(a.sample(1, 0), a.sample(2, 0));
        // The population size does not change any vector.
        assert_eq!(bits(&population(5, 7).sample(3, 2)), bits(&a.sample(3, 2)));
    }

    /// Pins the generator's output: if this fails, generated data changed and
    /// GENERATOR_VERSION must be bumped (and this constant updated).
    #[test]
    fn golden_checksum() {
        let p = population(100, 42);
        let mut crc = crc32fast::Hasher::new();
        for id in 0..100 {
            for s in 0..3 {
                for v in p.sample(id, s) {
                    crc.update(&v.to_le_bytes());
                }
            }
        }
        assert_eq!(crc.finalize(), GOLDEN_CRC, "generator output changed");
    }
    const GOLDEN_CRC: u32 = 0xc226_20d3;

    #[test]
    fn vectors_are_unit_length() {
        let p = population(100, 1);
        for id in 0..100 {
            for v in [p.centre(id), p.sample(id, 0), p.sample(id, 5)] {
                assert_eq!(v.len(), 128);
                let n = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
                assert!((n - 1.0).abs() < 1e-6, "norm {n}");
            }
        }
    }

    #[test]
    fn genuine_and_impostor_means() {
        for genuine_mean in [0.5, 0.7, 0.9] {
            let p = Population::new(PopulationConfig {
                identities: 2000,
                seed: 3,
                genuine_mean,
                ..Default::default()
            })
            .unwrap();
            let genuine = mean((0..2000).map(|i| dot(&p.sample(i, 1), &p.sample(i, 2))));
            let impostor = mean((0..2000).map(|i| dot(&p.sample(i, 0), &p.sample(i + 1, 0))));
            assert!((genuine - genuine_mean).abs() < 0.02, "genuine {genuine} vs {genuine_mean}");
            assert!(impostor.abs() < 0.01, "impostor {impostor}");
        }
    }

    #[test]
    fn impostor_spread_matches_dimension() {
        let p = population(0, 4);
        let scores = p.impostor_scores(40_000, 1);
        let m = mean(scores.iter().copied());
        let var = mean(scores.iter().map(|&s| (f64::from(s) - m).powi(2) as f32));
        // Var ≈ 1/d.
        assert!((var * 128.0 - 1.0).abs() < 0.1, "var {var}");
    }

    #[test]
    fn clustered_raises_same_family_scores() {
        let (w, m) = (0.35, 0.7);
        let p = Population::new(PopulationConfig {
            identities: 2000,
            seed: 5,
            genuine_mean: m,
            clustered: Some(ClusterConfig { families: 50, within_family_cosine: w }),
            ..Default::default()
        })
        .unwrap();
        let mut by_family: Vec<Vec<u64>> = vec![Vec::new(); 50];
        for i in 0..2000 {
            by_family[p.family(i).unwrap() as usize].push(i);
        }
        assert!(by_family.iter().all(|f| f.len() > 10), "family hash is unbalanced");
        let pairs: Vec<(u64, u64)> =
            by_family.iter().flat_map(|f| f.windows(2).map(|w| (w[0], w[1]))).collect();
        let centres = mean(pairs.iter().map(|&(a, b)| dot(&p.centre(a), &p.centre(b))));
        assert!((centres - w).abs() < 0.05, "same-family centre cosine {centres}");
        let samples = mean(pairs.iter().map(|&(a, b)| dot(&p.sample(a, 0), &p.sample(b, 1))));
        assert!((samples - w * m).abs() < 0.05, "same-family sample cosine {samples}");
        let other = mean(
            (0..1999)
                .filter(|&i| p.family(i) != p.family(i + 1))
                .map(|i| dot(&p.sample(i, 0), &p.sample(i + 1, 0))),
        );
        assert!(other.abs() < 0.01, "cross-family {other}");
        let genuine = mean((0..2000).map(|i| dot(&p.sample(i, 1), &p.sample(i, 2))));
        assert!((genuine - m).abs() < 0.02, "genuine {genuine}");
    }

    #[test]
    fn family_cache_does_not_change_bits() {
        let config = |families| PopulationConfig {
            identities: 10,
            clustered: Some(ClusterConfig { families, within_family_cosine: 0.4 }),
            ..Default::default()
        };
        // 2^22 / 128 = 32768 families fit in the cache, one more does not.
        let small = Population::new(config(32_768)).unwrap();
        let large = Population::new(config(32_769)).unwrap();
        assert!(small.family_cache.is_some() && large.family_cache.is_none());
        let mut scratch = vec![0.0; 128];
        let (mut a, mut b) = (vec![0.0; 128], vec![0.0; 128]);
        for family in [0, 1, 32_767] {
            small.family_centre_f64(family, &mut a);
            scratch.fill(0.0);
            small.add_gaussian(small.keys.family.rng(family, 0), 1.0, &mut scratch);
            normalise(&mut scratch);
            assert_eq!(a, scratch);
            large.family_centre_f64(family, &mut b);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn enrolment_batches_match_samples() {
        let p = population(103, 9);
        let batches: Vec<_> = p.enrolment_batches(10).collect();
        assert_eq!(batches.len(), 11);
        assert_eq!(batches.last().unwrap().len(), 3);
        let all: Vec<_> = batches.into_iter().flatten().collect();
        assert_eq!(all.len(), 103);
        for (k, (id, v)) in all.iter().enumerate() {
            assert_eq!(*id, k as u64);
            assert_eq!(bits(v), bits(&p.sample(*id, 0)));
        }
        assert_eq!(p.enrolment_batches(0).count(), 103);
        assert_eq!(population(0, 9).enrolment_batches(10).count(), 0);
    }

    #[test]
    fn probes_are_well_formed() {
        let p = population(1000, 11);
        let set = p.probes(200, 300, 1).unwrap();
        assert_eq!((set.mated.len(), set.nonmated.len()), (200, 300));
        let mated: HashSet<u64> = set.mated.iter().map(|q| q.identity).collect();
        assert_eq!(mated.len(), 200, "mated identities are distinct");
        assert!(mated.iter().all(|&i| i < 1000));
        let nonmated: HashSet<u64> = set.nonmated.iter().map(|q| q.identity).collect();
        assert_eq!(nonmated.len(), 300);
        assert!(nonmated.iter().all(|&i| (1000..MAX_IDENTITIES).contains(&i)), "never enrolled");
        for q in set.mated.iter().chain(&set.nonmated) {
            assert_eq!(q.sample, PROBE_SAMPLE);
            assert_eq!(bits(&q.vector), bits(&p.sample(q.identity, PROBE_SAMPLE)));
        }
        assert_eq!(p.probes(200, 300, 1).unwrap(), set, "deterministic");
        assert_ne!(p.probes(200, 300, 2).unwrap().mated, set.mated);
        // Every enrolled identity can be probed once.
        let everyone: HashSet<u64> =
            p.probes(1000, 0, 3).unwrap().mated.iter().map(|q| q.identity).collect();
        assert_eq!(everyone.len(), 1000);
        assert!(matches!(
            p.probes(1001, 0, 1),
            Err(DatasetError::TooManyProbes { kind: "mated", requested: 1001, available: 1000 })
        ));
    }

    #[test]
    fn impostor_scores_shape() {
        let p = population(10, 12);
        assert!(p.impostor_scores(0, 1).is_empty());
        for count in [1, 2, 7, 1000, 12_345] {
            let s = p.impostor_scores(count, 1);
            assert_eq!(s.len(), count);
            assert!(s.iter().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)));
        }
        let a = p.impostor_scores(5000, 1);
        assert_eq!(bits(&a), bits(&p.impostor_scores(5000, 1)));
        assert_ne!(a, p.impostor_scores(5000, 2));
        let m = mean(a.iter().copied());
        assert!(m.abs() < 0.01, "mean impostor {m}");
    }

    #[test]
    fn config_validation() {
        let bad = |c: PopulationConfig| Population::new(c).unwrap_err();
        let d = PopulationConfig::default;
        for genuine_mean in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            assert!(matches!(
                bad(PopulationConfig { genuine_mean, ..d() }),
                DatasetError::InvalidConfig { field: "genuine_mean", .. }
            ));
        }
        assert!(matches!(
            bad(PopulationConfig { dim: 1, ..d() }),
            DatasetError::InvalidConfig { .. }
        ));
        assert!(matches!(
            bad(PopulationConfig { identities: MAX_IDENTITIES + 1, ..d() }),
            DatasetError::InvalidConfig { field: "identities", .. }
        ));
        let cluster = |families, within_family_cosine| PopulationConfig {
            clustered: Some(ClusterConfig { families, within_family_cosine }),
            ..d()
        };
        assert!(Population::new(cluster(0, 0.3)).is_err());
        assert!(Population::new(cluster(10, 1.0)).is_err());
        assert!(Population::new(cluster(10, 0.3)).is_ok());
    }

    #[test]
    fn config_serde_round_trip_and_defaults() {
        let c = PopulationConfig {
            identities: 5,
            clustered: Some(ClusterConfig { families: 3, within_family_cosine: 0.3 }),
            ..Default::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<PopulationConfig>(&json).unwrap(), c);
        let partial: PopulationConfig = serde_json::from_str(r#"{"identities": 9}"#).unwrap();
        assert_eq!(partial, PopulationConfig { identities: 9, ..Default::default() });
        assert!(serde_json::from_str::<PopulationConfig>(r#"{"identites": 9}"#).is_err());
    }

    #[test]
    fn subject_ids_round_trip() {
        for id in [0, 42, 999_999_999, 1_000_000_000, u64::MAX] {
            let s = subject_id(id);
            assert_eq!(parse_subject_id(&s), Some(id), "{s}");
        }
        assert_eq!(subject_id(42).as_str(), "SYN-000000042");
        for bad in ["SYN-42", "SYN-0000000042", "SYN-00000004x", "XYZ-000000042", "SYN-+00000042"] {
            assert_eq!(parse_subject_id(&SubjectId::new(bad).unwrap()), None, "{bad}");
        }
        // u64::MAX + 1 does not parse.
        assert_eq!(parse_subject_id(&SubjectId::new("SYN-18446744073709551616").unwrap()), None);
    }

    #[test]
    fn dot_matches_scalar() {
        for len in [0, 1, 7, 8, 9, 128, 130] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let scalar: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - scalar).abs() < 1e-4);
        }
    }
}
