//! 1:N fingerprint pre-selection: a locality-sensitive hash index over per-finger sets of binary
//! vectors, after Cappelli, Ferrara and Maltoni, "Fingerprint Indexing Based on Minutia
//! Cylinder-Code", IEEE TPAMI 33(5), 2011.
//!
//! Why it exists: comparing a probe with every gallery finger is linear in the gallery; this index
//! returns a short, ranked candidate list (a few per cent of the gallery) for the matcher to
//! verify. It only sees raw bit vectors (bit-based MCC cylinders, `bits_per_vector` bits packed
//! little-endian into `u64` words, bit `i` in word `i / 64` at position `i % 64`), so it does not
//! depend on the MCC parameters or code. Pure data structure: no I/O, no threads of its own.
//!
//! Scheme:
//! - `L` hash functions (`hash_functions`); function `i` projects a vector onto `p` bit positions
//!   (`bits_per_hash`, at most 32) drawn at random, reproducibly from `seed`, giving a `p`-bit key.
//!   Two vectors at Hamming distance `d` collide in one function with probability `(1 − d/n)^p`.
//! - One table per function maps a key to the fingers owning a vector with that key (one posting
//!   per inserted vector; at search time a finger counts once per table and probe vector).
//! - Search: every probe vector `v` looks up its key in each of the `L` tables; a gallery finger
//!   `T` found in table `t` (through any of its vectors) earns the key's weight
//!   `w = ln(1 + F / df)`, `F` the indexed fingers and `df` the postings under that key (inverse
//!   document frequency), at most once per table and probe vector. The finger's score is
//!   `Σ_v Σ_t w / (√n_Q · n_T)`, with `n_Q`, `n_T` the vector counts of probe and gallery finger:
//!   a finger's chance collisions grow linearly with its vector count (measured: dividing by
//!   `n_T^0.5 / ^0.75 / ^1 / ^1.25` gave 95.4 / 96.7 / 97.7 / 97.7 % at 5 % penetration, `^1` best
//!   at low penetration). Keys held by more than half of a gallery of ≥ 256 fingers are skipped:
//!   they weigh < ln 3 and cost most of the time (skipping above 1/4, 1/2, 2/3, 0.9 of the
//!   gallery: 97.7, 98.6, 98.4, 98.0 %; 7, 12, 16, 22 ms per probe at 10 000 fingers; chosen on
//!   probes 0–999, then 96.9 % on held-out probes 5 000–6 999).
//!   Why weights and not the paper's collision-count estimate `(c/L)^(1/p)` per finger: on real
//!   mindtct cylinders most cells are empty, so low-popcount keys collide with nearly every finger,
//!   the per-finger collision count saturates at `L` for all of them and the ranking was no better
//!   than chance (hit rate 8.9 % at 5 % penetration on 10 000 synthetic fingers); with the weights
//!   it is 97–99 % (README, "Fingerprints"). Only fingers with at least one collision are scored (a
//!   dense per-finger accumulator plus a list of the touched ones; nothing scans the gallery).
//! - Keys whose `p` projected bits are all zero are skipped by default
//!   ([`IndexParams::skip_all_zero_keys`]): in bit-based MCC a zero cell means "no neighbour
//!   contributed" or "invalid", so an all-zero key matches every empty region and would make one
//!   huge, uninformative posting list. Callers should clear invalid (masked) cells to zero.
//!
//! Choosing `L` and `p`: with `a` the bit agreement of unrelated vectors and `s` that of mated
//! ones, a lookup meets about `N_vectors · a^p` chance postings and a mated vector collides
//! `L · s^p` times on average. Raise `p` until chance postings per lookup are a handful for the
//! gallery size, then raise `L` until `L · s^p` is about 1 or more; memory and search time grow
//! with `L`. On the synthetic vectors of the tests (35 % ones, so `a ≈ 0.55`; 10–15 % of bits
//! flipped, `s ≈ 0.85–0.9`) the defaults `L = 32, p = 20` put every mate first in a 10 000-finger
//! gallery; on real cylinders they were measured with `benches/examples/finger_eval.rs`.
//!
//! Layout: each table has a frozen, compact part — entries sorted by (key, finger), the key split
//! into a prefix (directory of offsets) and a 16-bit residual, about 6 bytes per posting — and a
//! small hash-map delta that receives inserts. The delta is merged into the frozen part when it
//! grows past half of it (so inserts are amortised), or on [`FingerIndex::compact`].
//! Removal is a tombstone (the finger stops being scored at once); its postings are purged at the
//! next merge, and re-inserting a removed id merges first.
//!
//! Search takes `&self` and is thread-safe: scratch buffers come from a mutex-guarded pool and go
//! back after each search (a fresh allocation per search costs a zeroed `6 bytes × fingers`).
//!
//! The index holds binary cylinders, which are biometric data: they never appear in errors or in
//! the `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest number of hash functions (bounds memory and search time; each is one table).
pub const MAX_HASH_FUNCTIONS: usize = 1024;
/// Largest number of projected bits per hash function (keys are `u32`).
pub const MAX_BITS_PER_HASH: usize = 32;

/// Configuration of a [`FingerIndex`]. Two indexes with equal parameters hash identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Length `n` of every vector in bits; vectors are `ceil(n / 64)` words long.
    pub bits_per_vector: usize,
    /// Number `L` of hash functions (and tables).
    pub hash_functions: usize,
    /// Number `p` of bits each hash function projects onto, 1..=32.
    pub bits_per_hash: usize,
    /// Seed of the bit positions drawn for the hash functions.
    pub seed: u64,
    /// Do not index nor look up keys whose projected bits are all zero.
    pub skip_all_zero_keys: bool,
}

impl IndexParams {
    /// Defaults for vectors of `bits_per_vector` bits: `L = 32`, `p = 20`, a fixed seed, zero keys
    /// skipped. See the module docs for what `L` and `p` trade.
    pub fn new(bits_per_vector: usize) -> Self {
        IndexParams {
            bits_per_vector,
            hash_functions: 32,
            bits_per_hash: 20,
            seed: 0x4d43_435f_4c53_4801,
            skip_all_zero_keys: true,
        }
    }

    /// Number of `u64` words per vector.
    pub fn words_per_vector(&self) -> usize {
        self.bits_per_vector.div_ceil(64)
    }

    fn validate(&self) -> Result<(), IndexError> {
        let bad = |reason: String| Err(IndexError::BadParams(reason));
        if self.bits_per_vector == 0 || self.bits_per_vector > u32::MAX as usize {
            return bad(format!("bits_per_vector {} is outside 1..=2^32-1", self.bits_per_vector));
        }
        if self.hash_functions == 0 || self.hash_functions > MAX_HASH_FUNCTIONS {
            return bad(format!(
                "hash_functions {} is outside 1..={MAX_HASH_FUNCTIONS}",
                self.hash_functions
            ));
        }
        let max_p = MAX_BITS_PER_HASH.min(self.bits_per_vector);
        if self.bits_per_hash == 0 || self.bits_per_hash > max_p {
            return bad(format!("bits_per_hash {} is outside 1..={max_p}", self.bits_per_hash));
        }
        Ok(())
    }
}

/// What [`FingerIndex`] rejects. All are caller errors; messages carry sizes and ids only.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IndexError {
    #[error("invalid index parameters: {0}")]
    BadParams(String),
    #[error("vector {index} has {got} words; the index expects {expected}")]
    WrongVectorLength { index: usize, expected: usize, got: usize },
    #[error("finger {0} is already in the index (remove it first)")]
    DuplicateFinger(u32),
    #[error("finger {0} has no vectors")]
    EmptyFinger(u32),
    #[error("finger {finger} has {got} vectors; the limit is {max}")]
    TooManyVectors { finger: u32, got: usize, max: usize },
}

/// A 1:N candidate pre-selection index over fingers represented as sets of bit vectors.
pub struct FingerIndex {
    params: IndexParams,
    words: usize,
    /// `L × p` bit positions, function after function.
    positions: Vec<u32>,
    tables: Vec<Table>,
    /// Vector count per finger id; 0 = absent or removed.
    nvec: Vec<u32>,
    /// Removed fingers whose postings are still stored.
    stale: Vec<bool>,
    live: usize,
    frozen_postings: usize,
    delta_postings: usize,
    stale_postings: usize,
    pool: Mutex<Vec<Scratch>>,
}

impl fmt::Debug for FingerIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerIndex")
            .field("params", &self.params)
            .field("fingers", &self.live)
            .field("frozen_postings", &self.frozen_postings)
            .field("delta_postings", &self.delta_postings)
            .field("memory_bytes", &self.memory_bytes())
            .finish_non_exhaustive()
    }
}

impl FingerIndex {
    /// An empty index; draws the hash functions from `params.seed`.
    pub fn new(params: IndexParams) -> Result<Self, IndexError> {
        params.validate()?;
        let (n, l, p) = (params.bits_per_vector, params.hash_functions, params.bits_per_hash);
        let mut rng = SplitMix64(params.seed);
        let mut positions = Vec::with_capacity(l * p);
        let mut all: Vec<u32> = Vec::with_capacity(n);
        for _ in 0..l {
            all.clear();
            all.extend(0..n as u32);
            // Partial Fisher–Yates: p distinct positions per function.
            for j in 0..p {
                let k = j + rng.below(n - j);
                all.swap(j, k);
            }
            positions.extend_from_slice(&all[..p]);
        }
        Ok(FingerIndex {
            words: params.words_per_vector(),
            tables: (0..l).map(|_| Table::default()).collect(),
            positions,
            params,
            nvec: Vec::new(),
            stale: Vec::new(),
            live: 0,
            frozen_postings: 0,
            delta_postings: 0,
            stale_postings: 0,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The parameters the index was built with.
    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    /// Adds finger `finger` (a dense id chosen by the caller: memory grows with the largest id)
    /// with its vectors. Fails without changing the index if a vector has the wrong length, the
    /// set is empty, or the finger is already present.
    pub fn insert(&mut self, finger: u32, vectors: &[&[u64]]) -> Result<(), IndexError> {
        self.check_lengths(vectors)?;
        if vectors.is_empty() {
            return Err(IndexError::EmptyFinger(finger));
        }
        if vectors.len() > u32::MAX as usize {
            return Err(IndexError::TooManyVectors {
                finger,
                got: vectors.len(),
                max: u32::MAX as usize,
            });
        }
        let f = finger as usize;
        if self.nvec.get(f).is_some_and(|&n| n > 0) {
            return Err(IndexError::DuplicateFinger(finger));
        }
        if self.stale.get(f).copied().unwrap_or(false) {
            // Its old postings must not be credited to the new vectors.
            self.compact();
        }
        if self.nvec.len() <= f {
            self.nvec.resize(f + 1, 0);
            self.stale.resize(f + 1, false);
        }
        let mut keys = Vec::with_capacity(self.tables.len());
        for v in vectors {
            self.keys_into(v, &mut keys);
            for (table, &key) in self.tables.iter_mut().zip(&keys) {
                if key == 0 && self.params.skip_all_zero_keys {
                    continue;
                }
                table.push_delta(key, finger);
                self.delta_postings += 1;
            }
        }
        self.nvec[f] = vectors.len() as u32;
        self.live += 1;
        if self.delta_postings + self.stale_postings > (self.frozen_postings / 2).max(1 << 16) {
            self.merge(false);
        }
        Ok(())
    }

    /// Removes finger `finger` if present (a no-op otherwise). It stops being a candidate at once;
    /// its postings stay allocated (tombstoned) until the next merge.
    pub fn remove(&mut self, finger: u32) {
        let f = finger as usize;
        if let Some(n) = self.nvec.get_mut(f).filter(|n| **n > 0) {
            self.stale_postings += *n as usize * self.tables.len();
            *n = 0;
            self.stale[f] = true;
            self.live -= 1;
        }
    }

    /// Merges the insert buffers into the compact tables and drops the postings of removed
    /// fingers. Runs by itself as the buffers grow; call it after a bulk load to reach the
    /// smallest memory and the fastest search.
    pub fn compact(&mut self) {
        self.merge(true);
    }

    /// Merges the buffers; `release` also frees their capacity (kept when merging during inserts,
    /// as the buffers will fill again).
    fn merge(&mut self, release: bool) {
        let p = self.params.bits_per_hash as u32;
        let mut total = 0;
        for table in &mut self.tables {
            table.compact(p, &self.nvec, release);
            total += table.entries.len();
        }
        self.frozen_postings = total;
        self.delta_postings = 0;
        self.stale_postings = 0;
        self.stale.iter_mut().for_each(|s| *s = false);
    }

    /// Number of fingers in the index (removed ones excluded).
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no finger is indexed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Up to `max_candidates` fingers that share at least one hash key with the probe, best first
    /// (ties by ascending id), with their score (see the module docs; higher is more similar).
    /// An empty probe or index gives an empty list; a vector of the wrong length is an error.
    pub fn search(
        &self,
        probe: &[&[u64]],
        max_candidates: usize,
    ) -> Result<Vec<(u32, f32)>, IndexError> {
        self.check_lengths(probe)?;
        if probe.is_empty() || max_candidates == 0 || self.live == 0 {
            return Ok(Vec::new());
        }
        let mut scratch =
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        let out = self.search_with(&mut scratch, probe, max_candidates);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(scratch);
        Ok(out)
    }

    /// Bytes held by the index structures (tables, insert buffers, per-finger counts, hash
    /// functions); excludes the pooled search scratch (`6 × fingers` bytes per concurrent search).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let tables: usize = self.tables.iter().map(Table::memory_bytes).sum();
        tables
            + self.positions.capacity() * size_of::<u32>()
            + self.nvec.capacity() * size_of::<u32>()
            + self.stale.capacity()
            + size_of::<Self>()
    }

    fn check_lengths(&self, vectors: &[&[u64]]) -> Result<(), IndexError> {
        match vectors.iter().position(|v| v.len() != self.words) {
            Some(index) => Err(IndexError::WrongVectorLength {
                index,
                expected: self.words,
                got: vectors[index].len(),
            }),
            None => Ok(()),
        }
    }

    /// The `L` keys of one vector.
    fn keys_into(&self, v: &[u64], keys: &mut Vec<u32>) {
        keys.clear();
        for function in self.positions.chunks_exact(self.params.bits_per_hash) {
            let mut key = 0u32;
            for (j, &pos) in function.iter().enumerate() {
                key |= (((v[(pos >> 6) as usize] >> (pos & 63)) & 1) as u32) << j;
            }
            keys.push(key);
        }
    }

    fn search_with(
        &self,
        s: &mut Scratch,
        probe: &[&[u64]],
        max_candidates: usize,
    ) -> Vec<(u32, f32)> {
        let p = self.params.bits_per_hash as u32;
        s.ensure(self.nvec.len());
        let Scratch { coll, score, touched_v, touched_all, keys } = s;
        // Rare keys are evidence, common ones are not: on real MCC cylinders most cells are
        // empty, so low-popcount keys collide with nearly every finger. A collision on key `k`
        // counts ln(1 + F / df(k)) (inverse document frequency over the F indexed fingers), and
        // a finger counts once per table even when several of its vectors share the key.
        let fingers = self.live.max(1) as f32;
        for v in probe {
            self.keys_into(v, keys);
            for (table, &key) in self.tables.iter().zip(keys.iter()) {
                if key == 0 && self.params.skip_all_zero_keys {
                    continue;
                }
                let frozen = table.frozen(key, p);
                let mut delta = Vec::new();
                if !table.nodes.is_empty() {
                    if let Some(&head) = table.heads.get(&key) {
                        let mut node = head;
                        while node != NIL {
                            let [_, f, next] = table.nodes[node as usize];
                            delta.push(f);
                            node = next;
                        }
                    }
                }
                let df = (frozen.len() + delta.len()).max(1) as f32;
                // Keys shared by more than half of the gallery carry almost no evidence
                // (weight < ln 3) and cost most of the time: skipped.
                if df * 2.0 > fingers && fingers >= 256.0 {
                    continue;
                }
                let w = (1.0 + fingers / df).ln();
                let ids = frozen
                    .iter()
                    .map(|&[_, lo, hi]| u32::from(lo) | u32::from(hi) << 16)
                    .chain(delta.iter().copied());
                for f in ids {
                    let i = f as usize;
                    if self.nvec[i] == 0 || coll[i] != 0 {
                        continue;
                    }
                    coll[i] = 1;
                    touched_v.push(f);
                    if score[i] == 0.0 {
                        touched_all.push(f);
                    }
                    score[i] += w;
                }
                for &f in touched_v.iter() {
                    coll[f as usize] = 0;
                }
                touched_v.clear();
            }
        }
        let nq = probe.len() as f32;
        let mut out: Vec<(u32, f32)> = touched_all
            .iter()
            .map(|&f| {
                let i = f as usize;
                let total = std::mem::take(&mut score[i]);
                (f, total / (nq.sqrt() * self.nvec[i] as f32))
            })
            .collect();
        touched_all.clear();
        let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if out.len() > max_candidates {
            out.select_nth_unstable_by(max_candidates - 1, better);
            out.truncate(max_candidates);
        }
        out.sort_unstable_by(better);
        out
    }

    /// Search with a freshly allocated scratch instead of the pool (for measuring the pool).
    #[cfg(test)]
    fn search_unpooled(&self, probe: &[&[u64]], max_candidates: usize) -> Vec<(u32, f32)> {
        self.search_with(&mut Scratch::default(), probe, max_candidates)
    }
}

/// Per-search buffers. Invariant between searches: `coll` and `score` are all zero and the lists
/// are empty.
#[derive(Debug, Default)]
struct Scratch {
    /// Marks the fingers already credited in the current table for the current probe vector.
    coll: Vec<u16>,
    /// Accumulated similarity per finger.
    score: Vec<f32>,
    touched_v: Vec<u32>,
    touched_all: Vec<u32>,
    keys: Vec<u32>,
}

impl Scratch {
    fn ensure(&mut self, fingers: usize) {
        if self.coll.len() < fingers {
            self.coll.resize(fingers, 0);
            self.score.resize(fingers, 0.0);
        }
    }
}

const NIL: u32 = u32::MAX;

/// One hash table: a frozen sorted part and a delta for recent inserts.
#[derive(Debug, Default)]
struct Table {
    /// Key prefix (top `dir_bits` bits of the `p`-bit key) → start of its entries; one extra end.
    dir: Vec<u32>,
    dir_bits: u32,
    /// Postings sorted by (key, finger), each `[residual, finger low half, finger high half]`:
    /// the residual is the key's low `p − dir_bits` (≤ 16) bits. One array, so a lookup touches
    /// two places (directory, postings), 6 bytes per posting.
    entries: Vec<[u16; 3]>,
    /// Delta: key → first node; nodes are `[key, finger, next]`, linked per key.
    heads: HashMap<u32, u32, MixState>,
    nodes: Vec<[u32; 3]>,
}

impl Table {
    fn push_delta(&mut self, key: u32, finger: u32) {
        let node = self.nodes.len() as u32;
        let head = self.heads.entry(key).or_insert(NIL);
        self.nodes.push([key, finger, *head]);
        *head = node;
    }

    fn frozen(&self, key: u32, p: u32) -> &[[u16; 3]] {
        if self.entries.is_empty() {
            return &[];
        }
        let low = p - self.dir_bits;
        let prefix = (u64::from(key) >> low) as usize;
        let r = (u64::from(key) & ((1u64 << low) - 1)) as u16;
        let (a, b) = (self.dir[prefix] as usize, self.dir[prefix + 1] as usize);
        let es = &self.entries[a..b];
        let lo = es.partition_point(|e| e[0] < r);
        let hi = lo + es[lo..].partition_point(|e| e[0] == r);
        &es[lo..hi]
    }

    /// Rebuilds the frozen part from itself and the delta, dropping fingers with `nvec == 0`.
    fn compact(&mut self, p: u32, nvec: &[u32], release: bool) {
        let live = |f: u32| nvec[f as usize] > 0;
        let mut delta: Vec<u64> = self
            .nodes
            .iter()
            .filter(|&&[_, f, _]| live(f))
            .map(|&[key, f, _]| u64::from(key) << 32 | u64::from(f))
            .collect();
        delta.sort_unstable();
        // Merge the (already sorted) frozen entries with the sorted delta.
        let mut merged: Vec<u64> = Vec::with_capacity(self.entries.len() + delta.len());
        let low = p - self.dir_bits;
        let mut d = delta.iter().copied().peekable();
        if !self.entries.is_empty() {
            for prefix in 0..self.dir.len() - 1 {
                for i in self.dir[prefix] as usize..self.dir[prefix + 1] as usize {
                    let [r, f_lo, f_hi] = self.entries[i];
                    let f = u32::from(f_lo) | u32::from(f_hi) << 16;
                    if !live(f) {
                        continue;
                    }
                    let e = ((prefix as u64) << low | u64::from(r)) << 32 | u64::from(f);
                    while let Some(x) = d.next_if(|&x| x < e) {
                        merged.push(x);
                    }
                    merged.push(e);
                }
            }
        }
        merged.extend(d);
        if release {
            self.heads = HashMap::default();
            self.nodes = Vec::new();
        } else {
            self.heads.clear();
            self.nodes.clear();
        }
        self.build(p, &merged);
    }

    fn build(&mut self, p: u32, entries: &[u64]) {
        let n = entries.len();
        // About 4 entries per directory slot; the residual must fit in 16 bits; cap the directory.
        let wanted = if n < 8 { 0 } else { n.ilog2() - 2 };
        let dir_bits = wanted.min(20).max(p.saturating_sub(16)).min(p);
        let low = p - dir_bits;
        let mut dir = vec![0u32; (1usize << dir_bits) + 1];
        let mut postings = Vec::with_capacity(n);
        for &e in entries {
            let key = e >> 32;
            dir[(key >> low) as usize + 1] += 1;
            postings.push([(key & ((1u64 << low) - 1)) as u16, e as u16, (e >> 16) as u16]);
        }
        for i in 1..dir.len() {
            dir[i] += dir[i - 1];
        }
        self.dir = dir;
        self.dir_bits = dir_bits;
        self.entries = postings;
    }

    fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: key + value per bucket plus one control byte.
        let map = self.heads.capacity() * (2 * size_of::<u32>() + 1);
        self.dir.capacity() * 4 + self.entries.capacity() * 6 + map + self.nodes.capacity() * 12
    }
}

/// Hasher for the delta maps: keys are projections of random bits, so a splitmix finaliser is
/// enough and much cheaper than SipHash.
#[derive(Clone, Copy, Debug, Default)]
struct MixState;

impl BuildHasher for MixState {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0)
    }
}

#[derive(Debug)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).rotate_left(5) ^ self.0;
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = u64::from(i);
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64: the reproducible source of the hash functions' bit positions. Library code, so not
/// the test kit's generator (a dev-dependency); its multiply-shift `below` fixes which bits each
/// hash function reads for a given seed, so changing it changes every index (and the measured hit
/// rates). The tests below draw their data from it too.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform-enough integer in `0..m` (`m > 0`).
    fn below(&mut self, m: usize) -> usize {
        ((u128::from(self.next_u64()) * m as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const BITS: usize = 384;
    const WORDS: usize = BITS / 64;

    type Vector = Vec<u64>;

    /// A word whose bits are 1 with probability `t / 256`.
    fn biased_word(rng: &mut SplitMix64, t: u64) -> u64 {
        let mut w = 0u64;
        for chunk in 0..8 {
            let r = rng.next_u64();
            for b in 0..8 {
                if (r >> (8 * b)) & 0xff < t {
                    w |= 1 << (chunk * 8 + b);
                }
            }
        }
        w
    }

    /// A random vector with about 35 % ones.
    fn random_vector(rng: &mut SplitMix64) -> Vector {
        (0..WORDS).map(|_| biased_word(rng, 90)).collect()
    }

    /// A gallery finger: 30..=50 random vectors.
    fn finger(rng: &mut SplitMix64) -> Vec<Vector> {
        let n = 30 + rng.below(21);
        (0..n).map(|_| random_vector(rng)).collect()
    }

    /// A genuine impression: 70–80 % of the finger's vectors, each with 10–15 % of its bits
    /// flipped, plus 10–20 % unrelated vectors, shuffled.
    fn impression(rng: &mut SplitMix64, finger: &[Vector]) -> Vec<Vector> {
        impression_with(rng, finger, 70, 26)
    }

    /// `keep_pc..keep_pc + 10` % of the vectors kept, each with `flip_256..=flip_256 + 12` of 256
    /// bits flipped.
    fn impression_with(
        rng: &mut SplitMix64,
        finger: &[Vector],
        keep_pc: usize,
        flip_256: u64,
    ) -> Vec<Vector> {
        let mut idx: Vec<usize> = (0..finger.len()).collect();
        for j in (1..idx.len()).rev() {
            idx.swap(j, rng.below(j + 1));
        }
        let keep = finger.len() * (keep_pc + rng.below(11)) / 100;
        let mut out: Vec<Vector> = idx[..keep]
            .iter()
            .map(|&i| {
                let flip = flip_256 + rng.below(13) as u64;
                finger[i].iter().map(|&w| w ^ biased_word(rng, flip)).collect()
            })
            .collect();
        let extra = (keep * (10 + rng.below(11))).div_ceil(100);
        out.extend((0..extra).map(|_| random_vector(rng)));
        for j in (1..out.len()).rev() {
            out.swap(j, rng.below(j + 1));
        }
        out
    }

    fn refs(v: &[Vector]) -> Vec<&[u64]> {
        v.iter().map(Vec::as_slice).collect()
    }

    fn params(l: usize, p: usize, seed: u64) -> IndexParams {
        IndexParams { hash_functions: l, bits_per_hash: p, seed, ..IndexParams::new(BITS) }
    }

    fn gallery(rng: &mut SplitMix64, n: usize) -> Vec<Vec<Vector>> {
        (0..n).map(|_| finger(rng)).collect()
    }

    fn build(params: IndexParams, gallery: &[Vec<Vector>]) -> FingerIndex {
        let mut index = FingerIndex::new(params).unwrap();
        for (id, f) in gallery.iter().enumerate() {
            index.insert(id as u32, &refs(f)).unwrap();
        }
        index.compact();
        index
    }

    /// Rank (0-based) of the true finger for each probe, or `None` when it is not returned.
    fn ranks(
        index: &FingerIndex,
        gallery: &[Vec<Vector>],
        probes: usize,
        seed: u64,
    ) -> Vec<Option<usize>> {
        let mut rng = SplitMix64(seed);
        (0..probes)
            .map(|_| {
                let truth = rng.below(gallery.len());
                let probe = impression(&mut rng, &gallery[truth]);
                let list = index.search(&refs(&probe), gallery.len()).unwrap();
                list.iter().position(|&(f, _)| f as usize == truth)
            })
            .collect()
    }

    fn hit_rate(ranks: &[Option<usize>], top: usize) -> f64 {
        ranks.iter().filter(|r| r.is_some_and(|r| r < top)).count() as f64 / ranks.len() as f64
    }

    #[test]
    fn rejects_bad_params() {
        for bad in [
            IndexParams { bits_per_vector: 0, ..IndexParams::new(BITS) },
            params(0, 20, 1),
            params(MAX_HASH_FUNCTIONS + 1, 20, 1),
            params(8, 0, 1),
            params(8, 33, 1),
            IndexParams { bits_per_hash: 17, ..IndexParams::new(16) },
        ] {
            assert!(matches!(FingerIndex::new(bad), Err(IndexError::BadParams(_))));
        }
        assert!(FingerIndex::new(IndexParams { bits_per_hash: 16, ..IndexParams::new(16) }).is_ok());
    }

    #[test]
    fn wrong_vector_length_is_a_typed_error() {
        let mut rng = SplitMix64(7);
        let mut index = FingerIndex::new(IndexParams::new(BITS)).unwrap();
        let good = random_vector(&mut rng);
        let short = vec![0u64; WORDS - 1];
        assert_eq!(
            index.insert(3, &[&good, &short]),
            Err(IndexError::WrongVectorLength { index: 1, expected: WORDS, got: WORDS - 1 })
        );
        assert_eq!(index.len(), 0, "a rejected insert leaves the index unchanged");
        index.insert(3, &[&good]).unwrap();
        let long = vec![0u64; WORDS + 1];
        assert_eq!(
            index.search(&[&long], 10),
            Err(IndexError::WrongVectorLength { index: 0, expected: WORDS, got: WORDS + 1 })
        );
        // A vector length that is not a multiple of 64 bits still needs whole words.
        let odd = FingerIndex::new(IndexParams::new(300)).unwrap();
        assert_eq!(odd.params().words_per_vector(), 5);
        assert!(odd.search(&[&[0u64; 5]], 1).unwrap().is_empty());
    }

    #[test]
    fn empty_index_and_empty_probe_return_nothing() {
        let mut rng = SplitMix64(11);
        let f = finger(&mut rng);
        let mut index = FingerIndex::new(IndexParams::new(BITS)).unwrap();
        assert!(index.is_empty());
        assert!(index.search(&refs(&f), 10).unwrap().is_empty());
        index.insert(0, &refs(&f)).unwrap();
        assert!(index.search(&[], 10).unwrap().is_empty());
        assert!(index.search(&refs(&f), 0).unwrap().is_empty());
        assert_eq!(index.search(&refs(&f), 10).unwrap()[0].0, 0);
        assert_eq!(index.insert(1, &[]), Err(IndexError::EmptyFinger(1)));
        assert_eq!(index.insert(0, &refs(&f)), Err(IndexError::DuplicateFinger(0)));
        assert_eq!(index.len(), 1);
    }

    /// The paper's claim on synthetic cylinders: the mate is in the top 5 % for ≥ 99 % of probes.
    #[test]
    fn genuine_impressions_rank_in_top_five_percent() {
        let seed = 0x5eed_0001;
        println!("gallery seed {seed:#x}");
        let mut rng = SplitMix64(seed);
        let gallery = gallery(&mut rng, 5_000);
        let index = build(IndexParams::new(BITS), &gallery);
        let ranks = ranks(&index, &gallery, 200, seed ^ 1);
        let (top5pc, top1) = (hit_rate(&ranks, 250), hit_rate(&ranks, 1));
        println!("hit rate: top-1 {top1:.3}, top-250 (5 %) {top5pc:.3}");
        assert!(top5pc >= 0.99, "top-5 % hit rate {top5pc}");
        assert!(top1 >= 0.95, "top-1 hit rate {top1}");
    }

    #[test]
    fn same_seed_same_results_and_seed_matters() {
        let mut rng = SplitMix64(21);
        let gallery = gallery(&mut rng, 300);
        let a = build(params(16, 16, 5), &gallery);
        let b = build(params(16, 16, 5), &gallery);
        let c = build(params(16, 16, 6), &gallery);
        assert_eq!(a.positions, b.positions);
        assert_ne!(a.positions, c.positions);
        let mut differ = false;
        for i in 0..20 {
            let probe = impression(&mut rng, &gallery[i * 7]);
            let (ra, rb) =
                (a.search(&refs(&probe), 50).unwrap(), b.search(&refs(&probe), 50).unwrap());
            assert_eq!(ra, rb);
            assert_eq!(ra[0].0 as usize, i * 7);
            differ |= ra != c.search(&refs(&probe), 50).unwrap();
        }
        assert!(differ, "another seed draws other hash functions");
    }

    #[test]
    fn buffered_inserts_search_like_compacted_ones() {
        let mut rng = SplitMix64(31);
        let gallery = gallery(&mut rng, 200);
        let mut buffered = FingerIndex::new(params(24, 14, 9)).unwrap();
        // Half compacted, half still in the insert buffers.
        for (id, f) in gallery.iter().enumerate() {
            buffered.insert(id as u32, &refs(f)).unwrap();
            if id == 99 {
                buffered.compact();
            }
        }
        assert!(buffered.delta_postings > 0 && buffered.frozen_postings > 0);
        let compacted = build(params(24, 14, 9), &gallery);
        for i in [0, 50, 99, 100, 150, 199] {
            let probe = impression(&mut rng, &gallery[i]);
            let r = buffered.search(&refs(&probe), 200).unwrap();
            assert_eq!(r, compacted.search(&refs(&probe), 200).unwrap());
            assert_eq!(r[0].0 as usize, i);
        }
        assert!(compacted.memory_bytes() < buffered.memory_bytes());
    }

    #[test]
    fn remove_hides_a_finger_and_reinsert_replaces_it() {
        let mut rng = SplitMix64(41);
        let gallery = gallery(&mut rng, 100);
        let mut index = build(params(32, 16, 3), &gallery);
        let probe = impression(&mut rng, &gallery[42]);
        assert_eq!(index.search(&refs(&probe), 5).unwrap()[0].0, 42);
        index.remove(42);
        index.remove(42);
        index.remove(1_000); // absent: no-op
        assert_eq!(index.len(), 99);
        assert!(index.search(&refs(&probe), 100).unwrap().iter().all(|&(f, _)| f != 42));
        // Re-use the id for another finger: the old vectors must not vote for it any more.
        let other = finger(&mut rng);
        index.insert(42, &refs(&other)).unwrap();
        assert_eq!(index.len(), 100);
        assert!(index.search(&refs(&probe), 100).unwrap().iter().all(|&(f, _)| f != 42));
        let probe2 = impression(&mut rng, &other);
        assert_eq!(index.search(&refs(&probe2), 5).unwrap()[0].0, 42);
        index.compact();
        assert!(index.tables.iter().all(|t| t.nodes.is_empty() && t.heads.is_empty()));
        let postings: usize = index.tables.iter().map(|t| t.entries.len()).sum();
        let live_vectors: usize =
            gallery.iter().enumerate().filter(|(i, _)| *i != 42).map(|(_, f)| f.len()).sum();
        assert!(postings <= (live_vectors + other.len()) * 32, "removed postings were purged");
        assert!(postings >= (live_vectors + other.len()) * 31);
    }

    #[test]
    fn fingers_with_many_vectors_are_not_favoured() {
        let mut rng = SplitMix64(51);
        let core: Vec<Vector> = (0..12).map(|_| random_vector(&mut rng)).collect();
        let mut big = core.clone();
        big.extend((0..120).map(|_| random_vector(&mut rng)));
        let mut index = FingerIndex::new(params(32, 16, 1)).unwrap();
        index.insert(0, &refs(&big)).unwrap();
        index.insert(1, &refs(&core)).unwrap();
        // Both hold the probe's vectors; the small finger explains the probe better.
        let r = index.search(&refs(&core), 2).unwrap();
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 0]);
        // Same evidence, normalised by √(n_probe · n_finger): 12 vs 132 vectors → √11 ≈ 3.3×.
        assert!(r[0].1 > 2.0 * r[1].1, "{r:?}");
    }

    #[test]
    fn all_zero_keys_are_skipped() {
        let zero = vec![0u64; WORDS];
        let mut index = FingerIndex::new(IndexParams::new(BITS)).unwrap();
        index.insert(0, &[&zero]).unwrap();
        index.insert(1, &[&zero]).unwrap();
        assert!(index.search(&[&zero], 10).unwrap().is_empty());
        let mut keep =
            FingerIndex::new(IndexParams { skip_all_zero_keys: false, ..IndexParams::new(BITS) })
                .unwrap();
        keep.insert(0, &[&zero]).unwrap();
        let r = keep.search(&[&zero], 10).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 0);
        assert!(r[0].1 > 0.0, "{r:?}");
    }

    #[test]
    fn concurrent_searches_agree_with_sequential_ones() {
        let mut rng = SplitMix64(61);
        let gallery = gallery(&mut rng, 300);
        let index = build(params(16, 16, 2), &gallery);
        let probes: Vec<Vec<Vector>> =
            (0..16).map(|i| impression(&mut rng, &gallery[i * 11])).collect();
        let expected: Vec<_> = probes.iter().map(|p| index.search(&refs(p), 20).unwrap()).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        probes
                            .iter()
                            .map(|p| index.search(&refs(p), 20).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), expected);
            }
        });
        for (p, e) in probes.iter().zip(&expected) {
            assert_eq!(&index.search_unpooled(&refs(p), 20), e);
        }
    }

    /// `cargo test --release -p biomatch-fingerprint index -- --ignored --nocapture`
    #[test]
    #[ignore = "timing and parameter sweep; run in release"]
    fn index_speed_and_sweep() {
        let seed = 0x5eed_0002;
        let mut rng = SplitMix64(seed);
        let fingers = 10_000;
        let gallery: Vec<Vec<Vector>> =
            (0..fingers).map(|_| (0..40).map(|_| random_vector(&mut rng)).collect()).collect();
        println!("seed {seed:#x}: {fingers} fingers x 40 vectors of {BITS} bits");
        // The brief's impressions, then harder ones (50–60 % kept, 20–25 % of bits flipped).
        let mut probe_set = |keep_pc, flip_256| -> Vec<(usize, Vec<Vector>)> {
            (0..500)
                .map(|_| {
                    let truth = rng.below(fingers);
                    (truth, impression_with(&mut rng, &gallery[truth], keep_pc, flip_256))
                })
                .collect()
        };
        let sets = [("brief", probe_set(70, 26)), ("hard", probe_set(50, 51))];
        for (l, p) in [(32, 20), (16, 20), (32, 24), (32, 16), (64, 16), (8, 20)] {
            let mut index = FingerIndex::new(params(l, p, 1)).unwrap();
            let t = Instant::now();
            let mut keys = Vec::new();
            let mut sink = 0u32;
            for v in gallery.iter().flatten() {
                index.keys_into(v, &mut keys);
                sink ^= keys.iter().fold(0, |a, k| a ^ k);
            }
            std::hint::black_box(sink);
            let hashing = t.elapsed();
            let t = Instant::now();
            for (id, f) in gallery.iter().enumerate() {
                index.insert(id as u32, &refs(f)).unwrap();
            }
            let insert = t.elapsed();
            let before = index.memory_bytes();
            index.compact();
            let compact = t.elapsed() - insert;
            let mem = index.memory_bytes();
            println!(
                "L={l:2} p={p:2}: insert {insert:?} (hashing alone {hashing:?}) + compact {compact:?}; \
                 memory {:.1} MiB = {:.0} B/finger ({:.1} MiB before compact)",
                mem as f64 / (1 << 20) as f64,
                mem as f64 / fingers as f64,
                before as f64 / (1 << 20) as f64,
            );
            for (name, probes) in &sets {
                let probe_refs: Vec<Vec<&[u64]>> = probes.iter().map(|(_, p)| refs(p)).collect();
                let t = Instant::now();
                let results: Vec<_> =
                    probe_refs.iter().map(|p| index.search(p, 500).unwrap()).collect();
                let pooled = t.elapsed() / probes.len() as u32;
                let t = Instant::now();
                for p in &probe_refs {
                    std::hint::black_box(index.search_unpooled(p, 500));
                }
                let fresh = t.elapsed() / probes.len() as u32;
                let ranks: Vec<Option<usize>> = results
                    .iter()
                    .zip(probes)
                    .map(|(r, (truth, _))| r.iter().position(|&(f, _)| f as usize == *truth))
                    .collect();
                let voted =
                    results.iter().map(Vec::len).sum::<usize>() as f64 / results.len() as f64;
                println!(
                    "    {name:5}: search {pooled:?} pooled / {fresh:?} fresh scratch; hit top-1 {:.3} \
                     top-10 {:.3} top-1% {:.3} top-5% {:.3}; mean returned (cap 500) {voted:.0}",
                    hit_rate(&ranks, 1),
                    hit_rate(&ranks, 10),
                    hit_rate(&ranks, fingers / 100),
                    hit_rate(&ranks, fingers / 20),
                );
            }
        }
    }
}
