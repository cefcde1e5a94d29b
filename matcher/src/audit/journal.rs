//! The audit log as the engine's journal of stored writes.
//!
//! The records of a commit group's enrollments and deletes are encoded here, logged by the store
//! in the same append and fsync as the writes ([`biomatch_engine::Journal`]), and copied into
//! the audit log once the group is durable, without an fsync of their own: an audited write
//! costs one fsync, and a stored write never lacks its record. Before a store checkpoint drops
//! them from its log, [`AuditLog::sync`] makes the copies durable. After a crash the store hands
//! back the records of its log ([`Journal::recover`]); those the audit files lack (matched by
//! `store_seq`) are appended.

use super::{list_files, read_log, AuditLog, AuditRecord};
use biomatch_engine::{Journal, JournalEntry};
use std::collections::HashSet;

/// Split journal bytes into their records' JSON objects (one per line).
fn objects(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

impl Journal for AuditLog {
    fn encode(&self, entries: &[JournalEntry<'_>]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for e in entries {
            let mut r = AuditRecord::now(
                &e.context.key_id,
                e.operation,
                &e.context.request_id,
                vec![e.subject.to_string()],
                if e.operation == "delete" { "deleted" } else { "enrolled" },
            );
            r.status = Some(if e.operation == "delete" { 200 } else { 201 });
            r.store_seq = Some(e.seq);
            r.client_request_id = e.context.client_request_id.clone();
            out.extend(r.json());
            out.push(b'\n');
        }
        Ok(out)
    }

    fn committed(&self, bytes: &[u8]) {
        self.append_covered(objects(bytes).map(<[u8]>::to_vec).collect());
    }

    fn sync(&self) -> Result<(), String> {
        AuditLog::sync(self).map_err(|e| e.to_string())
    }

    fn recover(&self, logged: &[Vec<u8>]) -> Result<(), String> {
        let mut wanted: Vec<(u64, Vec<u8>)> = Vec::new();
        for bytes in logged {
            for obj in objects(bytes) {
                let r: AuditRecord = serde_json::from_slice(obj)
                    .map_err(|e| format!("a journal record in the store's log is invalid: {e}"))?;
                let seq = r.store_seq.ok_or("a journal record without store_seq")?;
                wanted.push((seq, obj.to_vec()));
            }
        }
        let Some(min) = wanted.iter().map(|w| w.0).min() else { return Ok(()) };
        // Which of them the audit files hold: newest file first, until a file reaches below
        // `min` (store sequence numbers only grow through the files).
        let mut present = HashSet::new();
        for (_, path) in list_files(self.dir()).map_err(|e| e.to_string())?.iter().rev() {
            let log = read_log(path).map_err(|e| e.to_string())?;
            let seqs: Vec<u64> = log.records.iter().filter_map(|r| r.store_seq).collect();
            present.extend(seqs.iter().copied().filter(|&s| s >= min));
            if seqs.iter().any(|&s| s < min) {
                break;
            }
        }
        let missing: Vec<Vec<u8>> =
            wanted.into_iter().filter(|(s, _)| !present.contains(s)).map(|(_, o)| o).collect();
        if missing.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            records = missing.len(),
            "audit records of stored writes were missing from the audit log (unclean shutdown); \
             appended from the store's log"
        );
        self.append_json_blocking(missing).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{read_dir_records, verify::verify_dir};
    use biomatch_core::SubjectId;
    use biomatch_engine::AuditContext;

    fn entries<'a>(
        ctx: &'a AuditContext,
        subjects: &'a [SubjectId],
        first_seq: u64,
    ) -> Vec<JournalEntry<'a>> {
        subjects
            .iter()
            .enumerate()
            .map(|(i, s)| JournalEntry {
                context: ctx,
                operation: "enroll",
                subject: s,
                seq: first_seq + i as u64,
            })
            .collect()
    }

    #[test]
    fn journal_records_are_written_once_and_recovery_adds_only_the_missing() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = AuditContext {
            key_id: "k".into(),
            request_id: "r".into(),
            client_request_id: Some("c".into()),
        };
        let subjects: Vec<SubjectId> =
            (0..6).map(|i| SubjectId::new(format!("S{i}")).unwrap()).collect();
        let (first, second) = {
            let log = AuditLog::open(dir.path()).unwrap();
            let first = log.encode(&entries(&ctx, &subjects[..3], 1)).unwrap();
            let second = log.encode(&entries(&ctx, &subjects[3..], 4)).unwrap();
            // Only the first group reached the audit file before the "crash".
            log.committed(&first);
            Journal::sync(&log).unwrap();
            (first, second)
        };
        let log = AuditLog::open(dir.path()).unwrap();
        log.recover(&[first, second]).unwrap();
        // Recovering again (a second crash before the store's checkpoint) adds nothing.
        let again: Vec<Vec<u8>> = {
            let l = log.encode(&entries(&ctx, &subjects, 1)).unwrap();
            vec![l]
        };
        log.recover(&again).unwrap();
        drop(log);
        let mut seqs: Vec<u64> =
            read_dir_records(dir.path()).unwrap().iter().filter_map(|r| r.store_seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
        let recs = read_dir_records(dir.path()).unwrap();
        assert!(recs.iter().all(|r| r.status == Some(201) && r.outcome == "enrolled"));
        assert!(recs.iter().all(|r| r.client_request_id.as_deref() == Some("c")));
        assert!(verify_dir(dir.path(), None).unwrap().ok());
    }
}
