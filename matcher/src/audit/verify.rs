//! `biomatch audit verify`: walk the hash chain of a log directory and report what is wrong.
//!
//! Detected (see the module docs of [`super`] for the format): a complete line that fails its
//! CRC or JSON; a record missing from the numbering (deleted); records out of order (reordered
//! or duplicated); a line whose successor does not link to it (rewritten, even with a
//! recomputed CRC); a file missing from the numbering of files, or a file that does not
//! continue the previous one (removed from the middle, or its predecessor's tail cut); a
//! checkpoint whose MAC does not check under the key (forged); a log that no longer reaches the
//! checkpoint `audit-head.json` names (tail truncated), or a head whose MAC does not check.
//! Reported as notes, not problems: torn last lines (crashes), records after the newest
//! checkpoint (not yet sealed), files of the format before the chain.

use super::chain::{self, checkpoint_message, head_message, mac_ok};
use super::{list_files, read_head, read_lines, AuditError, OP_CHECKPOINT, OP_OPEN};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// What kind of damage a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A complete line fails its CRC or is not a record.
    CorruptLine,
    /// Records are missing from the numbering.
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A record does not link to the line before it.
    BrokenLink,
    /// A file is missing from the numbering of files, or does not continue the previous one.
    MissingFile,
    /// The log ends before the checkpoint the head file names.
    Truncated,
    /// A checkpoint or the head file fails its MAC, or the head names a rewritten checkpoint.
    BadCheckpoint,
}

/// One thing `verify` found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The file concerned.
    pub file: String,
    /// 1-based line number in it, where one line is concerned.
    pub line: Option<u64>,
    pub message: String,
}

/// The result of [`verify_dir`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub files: usize,
    /// Request records read (the log's own records left out).
    pub records: u64,
    /// The chain position of the newest checkpoint found.
    pub last_checkpoint: Option<u64>,
    /// Request records after the newest checkpoint (not yet sealed).
    pub unsealed: u64,
    /// Whether checkpoint MACs were checked (a key was given).
    pub macs_checked: bool,
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Prev {
    file: String,
    n: Option<u64>,
    link: String,
}

/// Verify the log files in `dir` (checkpoint MACs too when `key` is given).
///
/// # Errors
/// [`AuditError::Io`] if the directory or a file cannot be read; damage is reported in the
/// [`Report`], not as an error.
pub fn verify_dir(dir: &Path, key: Option<&[u8]>) -> Result<Report, AuditError> {
    let files = list_files(dir)?;
    let mut rep = Report { files: files.len(), macs_checked: key.is_some(), ..Report::default() };
    let problem = |rep: &mut Report, kind, file: &str, line, message: String| {
        rep.problems.push(Problem { kind, file: file.to_owned(), line, message });
    };
    let mut prev: Option<Prev> = None;
    let mut expected_file = files.first().map(|f| f.0);
    // The highest chain position read, and the links of the last few positions read.
    let mut max_n = 0u64;
    let mut recent: std::collections::VecDeque<(u64, String)> = Default::default();
    // Checkpoints seen: chain position -> (file number, line link).
    let mut checkpoints: HashMap<u64, (u64, String)> = HashMap::new();
    for (no, path) in &files {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if let Some(e) = expected_file.filter(|&e| e != *no) {
            let msg = format!(
                "{} missing from the sequence of files (removed)",
                if *no == e + 1 {
                    super::file_name(e)
                } else {
                    format!("{} .. {}", super::file_name(e), super::file_name(no - 1))
                }
            );
            problem(&mut rep, ProblemKind::MissingFile, &name, None, msg);
        }
        expected_file = Some(no + 1);
        let (lines, torn) = match read_lines(path) {
            Ok(x) => x,
            Err(AuditError::Corrupt { line, reason, .. }) => {
                problem(&mut rep, ProblemKind::CorruptLine, &name, Some(line), reason);
                prev = None;
                continue;
            }
            Err(e) => return Err(e),
        };
        if torn > 0 {
            rep.notes.push(format!("{name}: a torn last line of {torn} bytes (a crash mid-write)"));
        }
        if lines.is_empty() {
            rep.notes.push(format!("{name}: empty (a crash while the file was created)"));
            continue;
        }
        if lines.iter().all(|l| l.entry.n.is_none()) {
            rep.notes.push(format!("{name}: written before the hash chain; not chained"));
        }
        for (i, l) in lines.iter().enumerate() {
            let rec = &l.entry.record;
            if !rec.is_internal() {
                rep.records += 1;
                rep.unsealed += 1;
            }
            let Some(n) = l.entry.n else {
                prev = Some(Prev { file: name.clone(), n: None, link: l.link.clone() });
                continue;
            };
            if i == 0 && rec.operation != OP_OPEN {
                let msg = "the file does not start with its audit_open record: lines were removed \
                           from its beginning"
                    .to_owned();
                problem(&mut rep, ProblemKind::Deleted, &name, Some(l.line), msg);
            }
            let link_prev = l.entry.prev.as_deref().unwrap_or_default();
            let expected = max_n + 1;
            if max_n == 0 {
                // The first chained record read: it links to an unchained file before it, or
                // starts the chain, or continues files archived away.
                match &prev {
                    Some(p) if p.n.is_none() && link_prev != p.link => {
                        let msg = format!("does not continue {} (its first link)", p.file);
                        problem(&mut rep, ProblemKind::BrokenLink, &name, Some(l.line), msg);
                    }
                    None if link_prev != chain::GENESIS => rep.notes.push(format!(
                        "{name}: the oldest file kept continues an earlier one (older files \
                         archived or removed)"
                    )),
                    _ => {}
                }
            } else if n == expected {
                let want = recent.iter().rev().find(|(m, _)| *m == n - 1).map(|(_, k)| k);
                if want.is_some_and(|w| w != link_prev) {
                    let msg = match &prev {
                        Some(p) if i == 0 => format!(
                            "does not continue {}: its first record does not link to the last \
                             line there (that line was rewritten, or a file between them \
                             replaced)",
                            p.file
                        ),
                        _ => format!(
                            "record {n} does not link to the line before it (record {}): that \
                             line was rewritten",
                            n - 1
                        ),
                    };
                    problem(&mut rep, ProblemKind::BrokenLink, &name, Some(l.line), msg);
                }
            } else if n > expected {
                let later = lines[i + 1..]
                    .iter()
                    .any(|x| x.entry.n.is_some_and(|m| m < n && m >= expected));
                let (kind, msg) = if later {
                    (
                        ProblemKind::Reordered,
                        format!("record {n} comes before record {expected}: lines were reordered"),
                    )
                } else if i == 0 {
                    let p = prev.as_ref().map_or("the previous file", |p| p.file.as_str());
                    (
                        ProblemKind::MissingFile,
                        format!(
                            "starts at record {n} but {p} ends at record {max_n}: records \
                             {expected}..{} were cut from the end of {p} (or a file between \
                             them removed)",
                            n - 1
                        ),
                    )
                } else {
                    (
                        ProblemKind::Deleted,
                        format!("records {expected}..{} are missing (deleted)", n - 1),
                    )
                };
                problem(&mut rep, kind, &name, Some(l.line), msg);
            } else {
                let msg = format!(
                    "record {n} comes after record {max_n}: lines were reordered or duplicated"
                );
                problem(&mut rep, ProblemKind::Reordered, &name, Some(l.line), msg);
            }
            recent.push_back((n, l.link.clone()));
            if recent.len() > 64 {
                recent.pop_front();
            }
            if rec.operation == OP_CHECKPOINT {
                if let Some(k) = key {
                    let ok = rec
                        .mac
                        .as_deref()
                        .is_some_and(|m| mac_ok(k, &checkpoint_message(*no, n, link_prev), m));
                    if !ok {
                        let msg =
                            format!("checkpoint record {n} fails its MAC (forged, or another key)");
                        problem(&mut rep, ProblemKind::BadCheckpoint, &name, Some(l.line), msg);
                    }
                }
                checkpoints.insert(n, (*no, l.link.clone()));
                rep.last_checkpoint = Some(n);
                rep.unsealed = 0;
            }
            max_n = max_n.max(n);
            prev = Some(Prev { file: name.clone(), n: Some(n), link: l.link.clone() });
        }
    }
    match read_head(dir) {
        Ok(Some(h)) => {
            let head_name = super::HEAD_FILE.to_owned();
            if let Some(k) = key {
                if !mac_ok(k, &head_message(h.file, h.n, &h.link), &h.mac) {
                    problem(
                        &mut rep,
                        ProblemKind::BadCheckpoint,
                        &head_name,
                        None,
                        "the head file fails its MAC (forged, or another key)".to_owned(),
                    );
                }
            }
            match checkpoints.get(&h.n) {
                Some((f, link)) if *f == h.file && *link == h.link => {}
                Some(_) => problem(
                    &mut rep,
                    ProblemKind::BadCheckpoint,
                    &head_name,
                    None,
                    format!(
                        "checkpoint record {} is not the one the head file names (rewritten)",
                        h.n
                    ),
                ),
                None if h.n > max_n => problem(
                    &mut rep,
                    ProblemKind::Truncated,
                    &super::file_name(h.file),
                    None,
                    format!(
                        "the log ends at record {max_n}, but the newest checkpoint (record {}, \
                         in {}) is gone: its tail was cut",
                        h.n,
                        super::file_name(h.file)
                    ),
                ),
                None => problem(
                    &mut rep,
                    ProblemKind::Truncated,
                    &super::file_name(h.file),
                    None,
                    format!("checkpoint record {} named by the head file is missing", h.n),
                ),
            }
        }
        Ok(None) if !files.is_empty() => {
            rep.notes.push("no head file (no checkpoint written yet)".to_owned())
        }
        Ok(None) => rep.notes.push("no audit files".to_owned()),
        Err(AuditError::Corrupt { reason, .. }) => problem(
            &mut rep,
            ProblemKind::BadCheckpoint,
            super::HEAD_FILE,
            None,
            format!("the head file is unreadable: {reason}"),
        ),
        Err(e) => return Err(e),
    }
    if rep.unsealed > 0 {
        rep.notes.push(format!(
            "{} records after the newest checkpoint are not sealed yet (a cut there would not show)",
            rep.unsealed
        ));
    }
    Ok(rep)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.problems {
            match p.line {
                Some(l) => writeln!(f, "BROKEN {}:{l}: {}", p.file, p.message)?,
                None => writeln!(f, "BROKEN {}: {}", p.file, p.message)?,
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        write!(
            f,
            "{}: {} files, {} records, newest checkpoint {}, MACs {}",
            if self.ok() { "OK" } else { "FAILED" },
            self.files,
            self.records,
            self.last_checkpoint.map_or_else(|| "none".to_owned(), |n| format!("at record {n}")),
            if self.macs_checked { "checked" } else { "not checked (no key)" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, AuditRecord, KEY_FILE};
    use std::path::PathBuf;

    /// A log of three files (three process starts), five request records each, each file
    /// sealed on close. Returns the directory and the key.
    fn three_files() -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        for f in 0..3 {
            let log = AuditLog::open(dir.path()).unwrap();
            for i in 0..5 {
                let r = AuditRecord::now("k", "verify", format!("{f}-{i}"), vec![], "match");
                log.append_blocking(r).unwrap();
            }
        }
        let key = hex::decode(std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap()).unwrap();
        (dir, key)
    }

    fn file(dir: &Path, n: u64) -> PathBuf {
        dir.join(super::super::file_name(n))
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| format!("{l}\n")).collect()
    }

    fn kinds(dir: &Path, key: &[u8]) -> Vec<ProblemKind> {
        verify_dir(dir, Some(key)).unwrap().problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn an_untouched_log_verifies() {
        let (dir, key) = three_files();
        let r = verify_dir(dir.path(), Some(&key)).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!((r.files, r.records, r.unsealed), (3, 15, 0));
        // Each file: open, five records, a checkpoint on close.
        assert_eq!(r.last_checkpoint, Some(21));
        // Another key does not verify the checkpoints.
        let other = verify_dir(dir.path(), Some(b"another key, 16+ bytes")).unwrap();
        assert!(other.problems.iter().all(|p| p.kind == ProblemKind::BadCheckpoint));
        assert_eq!(other.problems.len(), 4, "{other}"); // three checkpoints and the head
    }

    #[test]
    fn each_tampering_is_detected() {
        // A deleted line.
        let (dir, key) = three_files();
        let f2 = file(dir.path(), 2);
        let mut l = lines(&f2);
        l.remove(3);
        std::fs::write(&f2, l.concat()).unwrap();
        assert_eq!(kinds(dir.path(), &key), [ProblemKind::Deleted]);

        // Two lines swapped.
        let (dir, key) = three_files();
        let f2 = file(dir.path(), 2);
        let mut l = lines(&f2);
        l.swap(2, 3);
        std::fs::write(&f2, l.concat()).unwrap();
        let k = kinds(dir.path(), &key);
        assert!(!k.is_empty() && k.iter().all(|k| *k == ProblemKind::Reordered), "{k:?}");

        // A truncated tail: the last file loses its last three lines (its checkpoint with them).
        let (dir, key) = three_files();
        let f3 = file(dir.path(), 3);
        let mut l = lines(&f3);
        l.truncate(l.len() - 3);
        std::fs::write(&f3, l.concat()).unwrap();
        assert_eq!(kinds(dir.path(), &key), [ProblemKind::Truncated]);

        // The tail of a middle file cut: the next file no longer continues it.
        let (dir, key) = three_files();
        let f1 = file(dir.path(), 1);
        let mut l = lines(&f1);
        l.truncate(l.len() - 2);
        std::fs::write(&f1, l.concat()).unwrap();
        assert_eq!(kinds(dir.path(), &key), [ProblemKind::MissingFile]);

        // A line rewritten with a recomputed CRC.
        let (dir, key) = three_files();
        let f2 = file(dir.path(), 2);
        let mut l = lines(&f2);
        let json = l[2][9..l[2].len() - 1].replace("\"match\"", "\"no_match\"");
        l[2] = format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()));
        std::fs::write(&f2, l.concat()).unwrap();
        let r = verify_dir(dir.path(), Some(&key)).unwrap();
        assert_eq!(r.problems.len(), 1, "{r}");
        assert_eq!(r.problems[0].kind, ProblemKind::BrokenLink);
        assert_eq!(r.problems[0].line, Some(4), "the first broken link is the line after it");

        // A file removed from the middle of the sequence.
        let (dir, key) = three_files();
        std::fs::remove_file(file(dir.path(), 2)).unwrap();
        let k = kinds(dir.path(), &key);
        assert!(k.contains(&ProblemKind::MissingFile), "{k:?}");

        // A forged checkpoint (its MAC recomputed under another key).
        let (dir, key) = three_files();
        let f1 = file(dir.path(), 1);
        let mut l = lines(&f1);
        let last = l.len() - 1;
        let mut e: serde_json::Value = serde_json::from_str(&l[last][9..]).unwrap();
        e["mac"] = serde_json::Value::String(chain::mac(b"forger's key 1234", "x"));
        let json = serde_json::to_string(&e).unwrap();
        l[last] = format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()));
        std::fs::write(&f1, l.concat()).unwrap();
        let k = kinds(dir.path(), &key);
        assert!(k.contains(&ProblemKind::BadCheckpoint), "{k:?}");
    }

    #[test]
    fn a_crash_leaves_notes_not_problems() {
        let (dir, key) = three_files();
        // A torn line at the end of the last file, as a crash mid-write leaves it.
        let f3 = file(dir.path(), 3);
        let mut bytes = std::fs::read(&f3).unwrap();
        bytes.extend_from_slice(b"0badc0de {\"n\":99");
        std::fs::write(&f3, bytes).unwrap();
        let r = verify_dir(dir.path(), Some(&key)).unwrap();
        assert!(r.ok(), "{r}");
        assert!(r.notes.iter().any(|n| n.contains("torn")), "{r}");
        // The next process continues the chain after the torn line.
        drop(AuditLog::open(dir.path()).unwrap());
        assert!(verify_dir(dir.path(), Some(&key)).unwrap().ok());
    }
}
