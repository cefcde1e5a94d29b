//! Enroll-if-unique: enroll a subject only if no enrolled subject matches it at a target FPIR,
//! atomically with respect to every other enrollment of this engine.
//!
//! # How it is serialised
//!
//! An [`Engine::enroll_if_unique`] runs in two phases:
//!
//! 1. **Search, unlocked.** It reads the last sequence number the store's commit hook has seen
//!    (`s0`), then runs a full 1:N search at the target FPIR. Every enrollment with a sequence
//!    number ≤ `s0` was applied to the store's memory before the search started, so the search
//!    sees it. A candidate here answers [`UniqueEnrollment::Duplicate`] at once: nothing is
//!    locked and nothing is stored.
//! 2. **Re-check and commit, under the engine's dedup lock (exclusive).** The commit hook keeps a
//!    bounded ring of the subjects enrolled most recently ([`RecentCommits`], fed by every commit
//!    group, plain and dedup enrollments alike). Under the lock the enrollments committed after
//!    `s0` are searched again with the same FPIR threshold (an
//!    [`IdentifyParams::subset`] search whose cut uses the full search's gallery size); if the
//!    ring has dropped some of them (more than [`RECENT_CAPACITY`] enrollments since `s0`) the
//!    full search is run again instead. If still no candidate, the enrollment is committed —
//!    durable, fsynced — before the lock is released.
//!
//! Plain enrollments ([`Engine::enroll`], [`Engine::enroll_batch`]) hold the same lock *shared*
//! across their store write, so while an enroll-if-unique holds it no other enrollment can
//! commit, and every enrollment that committed before it took the lock is in the ring by then
//! (the hook runs before a write is answered). Hence: **every enroll-if-unique's decision sees
//! every enrollment committed before its commit**; of two concurrent enroll-if-unique requests
//! for one person, the second to take the lock finds the first. Because the commit is durable
//! before the lock is released and a duplicate answer is only given for a committed (durable)
//! subject, a crash cannot leave both enrolled; a request whose answer was lost is sent again
//! (with `retry`: an identical enrollment already stored answers `created: false`).
//!
//! # What it costs
//!
//! A full search per request (as an identify), outside the lock; under the lock, a subset
//! search over the few subjects enrolled during that search (microseconds to a millisecond)
//! and one fsync of its own: enroll-if-unique commits do not share a group commit with each
//! other, so their throughput is bounded by fsync latency (plain enrollments waiting on the
//! shared lock wait for at most one such commit). Duplicates never take the lock.

use crate::{
    AuditContext, Engine, Enrolled, Identification, IdentifyParams, Result, Samples, SearchKind,
};
use biomatch_core::SubjectId;
use biomatch_gallery::{Committed, WriteOp};
use parking_lot::Mutex;
use std::collections::VecDeque;

/// Enrollments the commit hook remembers for the re-check; more committed during one
/// enroll-if-unique's search make it search the whole gallery again under the lock.
pub const RECENT_CAPACITY: usize = 65_536;

/// Parameters of an enroll-if-unique.
#[derive(Clone, Debug)]
pub struct DedupParams {
    /// A subject matches when its fused FMR ≤ target_fpir / N.
    pub target_fpir: f64,
    /// The most candidates a duplicate answer lists.
    pub max_results: usize,
    pub mode: SearchKind,
}

/// The outcome of an enroll-if-unique.
#[derive(Clone, Debug, PartialEq)]
pub enum UniqueEnrollment {
    /// No enrolled subject matched: the subject is enrolled (or, for a retry, was already).
    Enrolled(Enrolled),
    /// Enrolled subjects matched: nothing was stored. Never lists the subject's own id.
    Duplicate(Identification),
}

/// The subjects enrolled most recently, with their sequence numbers, fed by the commit hook.
#[derive(Debug)]
pub(crate) struct RecentCommits {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    capacity: usize,
    ring: VecDeque<(u64, SubjectId)>,
    /// The highest sequence number dropped from the ring (0: none).
    evicted: u64,
    /// The highest sequence number of a write the hook has seen.
    last_seq: u64,
}

impl RecentCommits {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new(Recent { capacity: capacity.max(1), ..Recent::default() }) }
    }

    /// A commit group was applied (called by the hook, in commit order).
    pub(crate) fn record(&self, group: &[Committed<'_>]) {
        let mut r = self.inner.lock();
        for c in group {
            r.last_seq = r.last_seq.max(c.seq);
            if let WriteOp::Enroll(e) = c.op {
                r.ring.push_back((c.seq, e.subject.clone()));
                if r.ring.len() > r.capacity {
                    if let Some((seq, _)) = r.ring.pop_front() {
                        r.evicted = r.evicted.max(seq);
                    }
                }
            }
        }
    }

    /// The last sequence number applied: a search starting now sees every write up to it.
    pub(crate) fn last_seq(&self) -> u64 {
        self.inner.lock().last_seq
    }

    /// The subjects enrolled with a sequence number above `after`, or `None` when the ring no
    /// longer holds all of them.
    pub(crate) fn since(&self, after: u64) -> Option<Vec<SubjectId>> {
        let r = self.inner.lock();
        if r.evicted > after {
            return None;
        }
        Some(
            r.ring.iter().rev().take_while(|(s, _)| *s > after).map(|(_, id)| id.clone()).collect(),
        )
    }
}

impl Engine {
    /// Enroll `subject` only if no enrolled subject matches its samples at `params.target_fpir`;
    /// otherwise store nothing and answer the candidates (never `subject` itself). Serialised
    /// with every other enrollment of this engine as the [module docs](self) describe. With
    /// `retry` (the client sent an Idempotency-Key), an identical enrollment already stored is
    /// answered as enrolled with `created: false`, never as a duplicate of itself.
    pub fn enroll_if_unique(
        &self,
        subject: SubjectId,
        samples: Samples,
        params: &DedupParams,
        retry: bool,
        audit: Option<AuditContext>,
    ) -> Result<UniqueEnrollment> {
        crate::check_rate("target_fpir", params.target_fpir)?;
        let probe = self.prepare(samples.clone())?;
        let e = self.enrollment(subject.clone(), samples)?;
        if self.store().contains(&subject) {
            // A retry of a request that was stored (its answer lost), or an id in use.
            if retry && self.same_enrollment(&e) {
                return Ok(UniqueEnrollment::Enrolled(Enrolled {
                    view: self.subject(&subject)?,
                    created: false,
                }));
            }
            return Err(biomatch_gallery::GalleryError::AlreadyEnrolled(subject).into());
        }
        let search = IdentifyParams {
            max_results: params.max_results,
            threshold: None,
            target_fpir: Some(params.target_fpir),
            subset: None,
            mode: params.mode,
            keep_shortlist: false,
        };
        // 1. The full search, unlocked.
        let s0 = self.recent.last_seq();
        let mut found = self.identify_at(&probe, &search, None)?;
        found.candidates.retain(|c| c.subject != subject);
        if !found.candidates.is_empty() {
            return Ok(UniqueEnrollment::Duplicate(found));
        }
        let n = found.gallery_size;
        // 2. Under the lock: the enrollments committed since, then the commit.
        let _exclusive = self.dedup_lock.write();
        let recheck = match self.recent.since(s0) {
            None => Some(self.identify_at(&probe, &search, None)?),
            Some(mut ids) => {
                ids.retain(|s| *s != subject);
                if ids.is_empty() {
                    None
                } else {
                    let p = IdentifyParams { subset: Some(ids), ..search };
                    Some(self.identify_at(&probe, &p, Some(n))?)
                }
            }
        };
        if let Some(mut r) = recheck {
            r.candidates.retain(|c| c.subject != subject);
            if !r.candidates.is_empty() {
                return Ok(UniqueEnrollment::Duplicate(r));
            }
        }
        let note = self.write_note(audit);
        self.commit_enrollment(e, note, retry).map(UniqueEnrollment::Enrolled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_commits_reports_overflow() {
        let r = RecentCommits::new(2);
        let id = |s: &str| SubjectId::new(s.to_owned()).unwrap();
        let enroll = |s: &str| WriteOp::Enroll(biomatch_gallery::Enrollment::new(id(s), vec![]));
        let (a, b, del, c) = (enroll("a"), enroll("b"), WriteOp::Delete(id("a")), enroll("c"));
        r.record(&[Committed { seq: 1, op: &a, note: None }]);
        r.record(&[
            Committed { seq: 2, op: &b, note: None },
            Committed { seq: 3, op: &del, note: None },
        ]);
        r.record(&[Committed { seq: 4, op: &c, note: None }]);
        assert_eq!(r.last_seq(), 4);
        assert_eq!(r.since(1), Some(vec![id("c"), id("b")]));
        assert_eq!(r.since(2), Some(vec![id("c")]));
        assert_eq!(r.since(4), Some(vec![]));
        assert_eq!(r.since(0), None, "seq 1 was dropped: a full re-search is needed");
    }
}
