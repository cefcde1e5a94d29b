//! Fingerprint 1:1 and 1:N search over the [`FingerStore`]: MCC templates of every enrolled finger
//! held in memory, and a pre-selection index (MCC-cylinder LSH, `core::finger::index`) per finger
//! position so that a 1:N search runs the MCC matcher only on a short candidate list.
//!
//! Search path: a probe finger with a known position is compared with gallery fingers of the same
//! position only. Below `exhaustive_below` fingers of that position (or for a subject subset) every
//! finger is compared; above it, the index returns the best `max(min_candidates, penetration · n)`
//! fingers and only those are compared. Scores are MCC similarities in [0, 1]; a subject's score is
//! its best finger of that position (one per position, so that is its only one).
//!
//! Writes go to the store first (durable, fsynced), then into memory, under one writer mutex: a
//! search that starts after an enrollment was acknowledged sees it.

use crate::error::{GalleryError, Result};
use crate::finger_store::FingerStore;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{FingerPosition, Modality, SubjectId};
use biomatch_fingerprint::index::{FingerIndex, IndexParams};
use biomatch_fingerprint::mcc::{Matcher, MccParams, MccTemplate, BITS_PER_CYLINDER};
use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

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

#[derive(Debug)]
struct Entry {
    subject: SubjectId,
    position: FingerPosition,
    mcc: MccTemplate,
}

impl Entry {
    /// The searchable form of a finger; `None` without a position (the store refuses those).
    fn new(subject: &SubjectId, t: &FingerTemplate, mcc: &MccParams) -> Option<Entry> {
        Some(Entry {
            subject: subject.clone(),
            position: t.position?,
            mcc: MccTemplate::new(t, mcc),
        })
    }
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

/// Finger search over a [`FingerStore`]. `Send + Sync`.
#[derive(Debug)]
pub struct FingerGallery {
    store: Arc<FingerStore>,
    mcc: MccParams,
    search: FingerSearchParams,
    inner: RwLock<Inner>,
    writer: Mutex<()>,
}

fn position_of(t: &FingerTemplate, index: usize) -> Result<FingerPosition> {
    t.position.ok_or(GalleryError::MissingFingerPosition { index })
}

impl FingerGallery {
    /// Build the in-memory search structures from the store's current content (MCC templates in
    /// parallel).
    pub fn open(
        store: Arc<FingerStore>,
        mcc: MccParams,
        search: FingerSearchParams,
    ) -> Result<Self> {
        let snapshot = store.snapshot();
        let entries: Vec<Entry> = snapshot
            .par_iter()
            .flat_map_iter(|(subject, fingers)| {
                fingers.iter().filter_map(|t| Entry::new(subject, t, &mcc))
            })
            .collect();
        let mut inner = Inner {
            fingers: Vec::with_capacity(entries.len()),
            by_subject: HashMap::with_capacity(snapshot.len()),
            indexes: (0..10)
                .map(|_| FingerIndex::new(IndexParams::new(BITS_PER_CYLINDER)))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| GalleryError::BadIndexParams(e.to_string()))?,
            live: [0; 10],
        };
        for e in entries {
            inner.add(e)?;
        }
        for ix in &mut inner.indexes {
            ix.compact();
        }
        Ok(Self { store, mcc, search, inner: RwLock::new(inner), writer: Mutex::new(()) })
    }

    pub fn store(&self) -> &Arc<FingerStore> {
        &self.store
    }

    pub fn mcc_params(&self) -> &MccParams {
        &self.mcc
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

    pub fn contains(&self, subject: &SubjectId) -> bool {
        self.inner.read().by_subject.contains_key(subject)
    }

    /// Finger positions a subject holds.
    pub fn positions(&self, subject: &SubjectId) -> Vec<FingerPosition> {
        let inner = self.inner.read();
        let mut p: Vec<FingerPosition> = inner
            .by_subject
            .get(subject)
            .map(|ids| ids.iter().filter_map(|&i| inner.entry(i).map(|e| e.position)).collect())
            .unwrap_or_default();
        p.sort();
        p
    }

    /// Durably enroll a subject's fingers (1..=10, distinct positions), then make them searchable.
    pub fn enroll(&self, subject: &SubjectId, fingers: &[FingerTemplate]) -> Result<u64> {
        for (i, t) in fingers.iter().enumerate() {
            position_of(t, i)?;
        }
        let prepared: Vec<Entry> = fingers
            .iter()
            .map(|t| Entry::new(subject, t, &self.mcc).expect("position checked"))
            .collect();
        let _w = self.writer.lock();
        let seq = self.store.enroll(subject, fingers)?;
        let mut inner = self.inner.write();
        for e in prepared {
            inner.add(e)?;
        }
        Ok(seq)
    }

    /// Durably delete a subject's fingers.
    pub fn delete(&self, subject: &SubjectId) -> Result<u64> {
        let _w = self.writer.lock();
        let seq = self.store.delete(subject)?;
        let mut inner = self.inner.write();
        if let Some(ids) = inner.by_subject.remove(subject) {
            for id in ids {
                if let Some(e) = inner.fingers[id as usize].take() {
                    let p = usize::from(e.position.code() - 1);
                    inner.indexes[p].remove(id);
                    inner.live[p] -= 1;
                }
            }
        }
        Ok(seq)
    }

    /// MCC similarity of `probe` with the subject's finger of the same position.
    pub fn verify(&self, subject: &SubjectId, probe: &FingerTemplate) -> Result<f32> {
        let position = position_of(probe, 0)?;
        let p = MccTemplate::new(probe, &self.mcc);
        let inner = self.inner.read();
        let ids = inner
            .by_subject
            .get(subject)
            .ok_or_else(|| GalleryError::UnknownSubject(subject.clone()))?;
        let e = ids
            .iter()
            .filter_map(|&i| inner.entry(i))
            .find(|e| e.position == position)
            .ok_or_else(|| GalleryError::NoTemplate {
                subject: subject.clone(),
                modality: Modality::Finger(position),
            })?;
        Ok(Matcher::new(&self.mcc).similarity(&p, &e.mcc))
    }

    /// The best `max_results` subjects for `probe` (same finger position), best first, with scores
    /// at or above `threshold`; optionally only among `subset`.
    pub fn identify(
        &self,
        probe: &FingerTemplate,
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
        let position = position_of(probe, 0)?;
        let p = MccTemplate::new(probe, &self.mcc);
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
            .filter(|&&id| inner.entry(id).is_some_and(|e| e.position == position))
            .map_init(
                || Matcher::new(&self.mcc),
                |m, &id| (id, m.similarity(&p, &inner.entry(id).expect("filtered").mcc)),
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
        let p = usize::from(e.position.code() - 1);
        if e.mcc.cylinder_count() > 0 {
            self.indexes[p]
                .insert(id, &e.mcc.cylinder_vectors())
                .map_err(|err| GalleryError::BadIndexParams(err.to_string()))?;
        }
        self.by_subject.entry(e.subject.clone()).or_default().push(id);
        self.live[p] += 1;
        self.fingers.push(Some(e));
        Ok(())
    }
}
