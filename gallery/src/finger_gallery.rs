//! Fingerprint 1:1 and 1:N search over the minutiae fingers of the [`Store`]: MCC templates of
//! every enrolled finger held in memory, and a pre-selection index (MCC-cylinder LSH,
//! `biomatch_fingerprint::index`) per finger position so that a 1:N search runs the MCC matcher only on a
//! short candidate list.
//!
//! Search path: a probe finger with a known position is compared with gallery fingers of the same
//! position only. Below `exhaustive_below` fingers of that position (or for a subject subset) every
//! finger is compared; above it, the index returns the best `max(min_candidates, penetration · n)`
//! fingers and only those are compared. Scores are MCC similarities in [0, 1]; a subject's score is
//! its best finger of that position (one per position, so that is its only one).
//!
//! This is a search structure only: the fingers are durable in the [`Store`]. It is built from the
//! store at start ([`FingerGallery::build`]) and follows its commits: the store's commit hook
//! calls [`FingerGallery::insert`] / [`FingerGallery::remove`] in sequence order, after a group
//! is durable and before its writers are answered, so a search that starts after an enrollment
//! was acknowledged sees it. Probes and new fingers are prepared ([`PreparedFinger`]: the MCC
//! template) once, outside any lock, and compared many times.

use crate::error::{GalleryError, Result};
use crate::store::Store;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, Modality, SubjectId};
use biomatch_fingerprint::index::{FingerIndex, IndexParams};
use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate, BITS_PER_CYLINDER};
use parking_lot::RwLock;
use rayon::prelude::*;
use std::collections::HashMap;

/// How 1:N finger searches choose their candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct FingerSearchParams {
    /// Share of a position's fingers the index hands to the matcher.
    pub penetration: f64,
    /// At least this many candidates (small galleries).
    pub min_candidates: usize,
    /// Compare every finger when a position holds fewer than this.
    pub exhaustive_below: usize,
}

impl Default for FingerSearchParams {
    fn default() -> Self {
        Self { penetration: 0.05, min_candidates: 200, exhaustive_below: 2000 }
    }
}

/// How a finger search was run (for the response and for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FingerSearchInfo {
    /// Gallery fingers of the probe's position.
    pub gallery_fingers: usize,
    /// Fingers the MCC matcher compared.
    pub compared: usize,
    /// Whether the pre-selection index chose them.
    pub preselected: bool,
}

/// A finger ready to be compared: its position and MCC template, built once.
#[derive(Debug, Clone)]
pub struct PreparedFinger {
    pub position: FingerPosition,
    mcc: MccTemplate,
}

/// Bytes of one cylinder: its bits, its validity mask and its minutia.
const CYLINDER_BYTES: usize = 8 * (biomatch_fingerprint::mcc::WORDS_PER_CYLINDER + 1) + 16;

#[derive(Debug)]
struct Entry {
    subject: SubjectId,
    finger: PreparedFinger,
}

#[derive(Debug)]
struct Inner {
    /// Dense finger id → entry; `None` once deleted (ids are not reused until a rebuild).
    fingers: Vec<Option<Entry>>,
    by_subject: HashMap<SubjectId, Vec<u32>>,
    /// One index per finger position (index 0 = position 1).
    indexes: Vec<FingerIndex>,
    /// Live fingers per position.
    live: [usize; 10],
}

/// Finger search over the store's minutiae fingers. `Send + Sync`.
#[derive(Debug)]
pub struct FingerGallery {
    mcc: MccParams,
    search: FingerSearchParams,
    inner: RwLock<Inner>,
}

fn position_of(t: &FingerTemplate, index: usize) -> Result<FingerPosition> {
    t.position.ok_or(GalleryError::MissingFingerPosition { index })
}

impl FingerGallery {
    /// An empty finger search.
    pub fn new(mcc: MccParams, search: FingerSearchParams) -> Result<Self> {
        let inner = Inner {
            fingers: Vec::new(),
            by_subject: HashMap::new(),
            indexes: (0..10)
                .map(|_| FingerIndex::new(IndexParams::new(BITS_PER_CYLINDER)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| GalleryError::BadIndexParams(e.to_string()))?,
            live: [0; 10],
        };
        Ok(Self { mcc, search, inner: RwLock::new(inner) })
    }

    /// Build the search structures from the store's fingers (MCC templates in parallel).
    pub fn build(store: &Store, mcc: MccParams, search: FingerSearchParams) -> Result<Self> {
        let g = Self::new(mcc, search)?;
        let mut all = Vec::new();
        store.for_each_fingers(|s, _, f| all.push((s.clone(), f)))?;
        let prepared: Vec<(SubjectId, Vec<PreparedFinger>)> =
            all.into_par_iter().map(|(s, f)| (s, g.prepare_all(&f))).collect();
        let mut inner = g.inner.write();
        for (s, fingers) in prepared {
            for f in fingers {
                inner.add(Entry { subject: s.clone(), finger: f })?;
            }
        }
        for ix in &mut inner.indexes {
            ix.compact();
        }
        drop(inner);
        Ok(g)
    }

    pub fn mcc_params(&self) -> &MccParams {
        &self.mcc
    }

    /// The comparable form of one finger (its position must be set).
    pub fn prepare(&self, t: &FingerTemplate) -> Result<PreparedFinger> {
        Ok(PreparedFinger { position: position_of(t, 0)?, mcc: MccTemplate::new(t, &self.mcc) })
    }

    /// The comparable form of a subject's checked fingers (each with its position; fingers
    /// without one are skipped: the store refuses them).
    pub fn prepare_all(&self, fingers: &[FingerTemplate]) -> Vec<PreparedFinger> {
        fingers.iter().filter_map(|t| self.prepare(t).ok()).collect()
    }

    /// Subjects holding fingers.
    pub fn len(&self) -> usize {
        self.inner.read().by_subject.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live fingers of every position together.
    pub fn fingers(&self) -> usize {
        self.inner.read().live.iter().sum()
    }

    /// Heap bytes of the search structures (MCC templates, pre-selection postings), estimated
    /// from their sizes.
    pub fn resident_bytes(&self) -> u64 {
        let inner = self.inner.read();
        let mcc: usize = inner
            .fingers
            .iter()
            .flatten()
            .map(|e| e.finger.mcc.cylinder_count() * CYLINDER_BYTES + 64)
            .sum();
        let index: usize = inner.indexes.iter().map(|i| i.memory_bytes()).sum();
        (mcc + index + inner.fingers.capacity() * std::mem::size_of::<Option<Entry>>()) as u64
    }

    pub fn contains(&self, subject: &SubjectId) -> bool {
        self.inner.read().by_subject.contains_key(subject)
    }

    /// Make a subject's (durably stored) fingers searchable.
    pub fn insert(&self, subject: &SubjectId, fingers: Vec<PreparedFinger>) -> Result<()> {
        let mut inner = self.inner.write();
        for f in fingers {
            inner.add(Entry { subject: subject.clone(), finger: f })?;
        }
        Ok(())
    }

    /// Forget a subject's fingers (after its delete is durable).
    pub fn remove(&self, subject: &SubjectId) {
        let mut inner = self.inner.write();
        if let Some(ids) = inner.by_subject.remove(subject) {
            for id in ids {
                if let Some(e) = inner.fingers[id as usize].take() {
                    let p = usize::from(e.finger.position.code() - 1);
                    inner.indexes[p].remove(id);
                    inner.live[p] -= 1;
                }
            }
        }
    }

    /// MCC similarity of a prepared probe with the subject's finger of the same position.
    pub fn verify(&self, subject: &SubjectId, probe: &PreparedFinger) -> Result<f32> {
        let inner = self.inner.read();
        let ids = inner
            .by_subject
            .get(subject)
            .ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?;
        let e = ids
            .iter()
            .filter_map(|&i| inner.entry(i))
            .find(|e| e.finger.position == probe.position)
            .ok_or_else(|| GalleryError::NoTemplate {
                subject: subject.clone(),
                modality: Modality::Finger(probe.position),
            })?;
        Ok(Matcher::new(&self.mcc).similarity(&probe.mcc, &e.finger.mcc))
    }

    /// The best `max_results` subjects for a prepared probe (same finger position), best first,
    /// with scores at or above `threshold`; optionally only among `subset`.
    pub fn identify(
        &self,
        probe: &PreparedFinger,
        max_results: usize,
        threshold: Option<f32>,
        subset: Option<&[SubjectId]>,
    ) -> Result<(Vec<(SubjectId, f32)>, FingerSearchInfo)> {
        if max_results == 0 || max_results > crate::MAX_RESULTS_LIMIT {
            return Err(GalleryError::BadMaxResults {
                got: max_results,
                max: crate::MAX_RESULTS_LIMIT,
            });
        }
        let (position, p) = (probe.position, &probe.mcc);
        let inner = self.inner.read();
        let pi = usize::from(position.code() - 1);
        let n = inner.live[pi];
        let (ids, preselected): (Vec<u32>, bool) = match subset {
            Some(s) => (
                s.iter().filter_map(|s| inner.by_subject.get(s)).flatten().copied().collect(),
                false,
            ),
            None if n < self.search.exhaustive_below || p.cylinder_count() == 0 => {
                ((0..inner.fingers.len() as u32).collect(), false)
            }
            None => {
                let k = ((self.search.penetration * n as f64).ceil() as usize)
                    .max(self.search.min_candidates);
                let hits = inner.indexes[pi]
                    .search(&p.cylinder_vectors(), k)
                    .map_err(|e| GalleryError::BadIndexParams(e.to_string()))?;
                (hits.into_iter().map(|(id, _)| id).collect(), true)
            }
        };
        let mut scored: Vec<(u32, f32)> = ids
            .par_iter()
            .filter(|&&id| inner.entry(id).is_some_and(|e| e.finger.position == position))
            .map_init(
                || Matcher::new(&self.mcc),
                |m, &id| (id, m.similarity(p, &inner.entry(id).expect("filtered").finger.mcc)),
            )
            .collect();
        let compared = scored.len();
        if let Some(t) = threshold {
            scored.retain(|s| s.1 >= t);
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(max_results);
        let out = scored
            .into_iter()
            .map(|(id, s)| (inner.entry(id).expect("live").subject.clone(), s))
            .collect();
        Ok((out, FingerSearchInfo { gallery_fingers: n, compared, preselected }))
    }
}

impl Inner {
    fn entry(&self, id: u32) -> Option<&Entry> {
        self.fingers.get(id as usize).and_then(Option::as_ref)
    }

    fn add(&mut self, e: Entry) -> Result<()> {
        let id = u32::try_from(self.fingers.len())
            .map_err(|_| GalleryError::Config("more than 2^32 fingers in one gallery".into()))?;
        let p = usize::from(e.finger.position.code() - 1);
        if e.finger.mcc.cylinder_count() > 0 {
            self.indexes[p]
                .insert(id, &e.finger.mcc.cylinder_vectors())
                .map_err(|err| GalleryError::BadIndexParams(err.to_string()))?;
        }
        self.by_subject.entry(e.subject.clone()).or_default().push(id);
        self.live[p] += 1;
        self.fingers.push(Some(e));
        Ok(())
    }
}
