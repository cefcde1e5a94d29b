//! Conversion of a store of the earlier two-store layout: vector templates in the store and the
//! minutiae fingers in a separate log, `<store>/fingers/fingers.log` (magic `BMFNG`), with its
//! own sequence numbers. [`convert_finger_log`] moves every live subject's fingers into the one
//! subject store — one *attach* record per subject (`wal.rs`), all with one fsync — and then
//! renames the old folder to `fingers.converted-v1` (kept for the operator to remove).
//!
//! It is safe to interrupt at any point: until the rename the old log is the source and a re-run
//! skips subjects that already have their fingers; after it there is nothing left to convert.
//! `biomatch convert-store --data DIR` runs it; `serve` refuses a store that still has the old
//! folder and names that command.
//!
//! ## The version 1 finger log (read only)
//! ```text
//! header : magic b"BMFNG\0\0\x01" (8) | format version u32 (=1) | reserved u32
//! frame* : as in wal.rs
//! payload: kind u8 (1 enroll, 2 delete, 3 sequence mark) | seq u64 (> 0)
//!          enroll, delete: id length u8 | id bytes
//!          enroll only   : the fingers as `minutiae.rs` encodes them
//! ```

use crate::error::{GalleryError, Result};
use crate::fsutil::{self, Reader};
use crate::minutiae;
use crate::store::Store;
use crate::wal::{self, LogHeader};
use biomatch_core::finger::FingerTemplate;
use biomatch_core::SubjectId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The folder of the earlier layout's finger log, inside the store directory.
pub const LEGACY_FINGERS_DIR: &str = "fingers";
const LOG_FILE: &str = "fingers.log";
const CONVERTED_DIR: &str = "fingers.converted-v1";
pub(crate) const HEADER: LogHeader = LogHeader {
    magic: b"BMFNG\0\0\x01",
    version: 1,
    min_version: 1,
    what: "finger template log (version 1 layout)",
};

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Conversion {
    /// Subjects found with fingers in the old log.
    pub subjects_in_log: usize,
    /// Subjects whose fingers were attached now (the rest had them from an earlier run).
    pub attached: usize,
    /// Bytes of a torn, never-acknowledged tail of the old log that were not converted.
    pub torn_bytes: u64,
    /// Where the old folder was moved.
    pub moved_to: Option<PathBuf>,
}

enum Legacy {
    Enroll(SubjectId, Vec<FingerTemplate>),
    Delete(SubjectId),
    Seq,
}

fn decode(_version: u32, payload: &[u8]) -> Option<Legacy> {
    let mut r = Reader::new(payload);
    let kind = r.u8()?;
    if r.u64()? == 0 {
        return None;
    }
    let subject = |r: &mut Reader<'_>| {
        let n = r.u8()? as usize;
        SubjectId::new(std::str::from_utf8(r.take(n)?).ok()?).ok()
    };
    let rec = match kind {
        1 => {
            let s = subject(&mut r)?;
            Legacy::Enroll(s, minutiae::decode(&mut r)?)
        }
        2 => Legacy::Delete(subject(&mut r)?),
        3 => Legacy::Seq,
        _ => return None,
    };
    r.is_empty().then_some(rec)
}

/// Whether the store directory still holds a finger log of the earlier layout.
pub fn needs_conversion(store_dir: &Path) -> bool {
    store_dir.join(LEGACY_FINGERS_DIR).join(LOG_FILE).exists()
}

/// Move the fingers of the earlier layout's log into `store` (see the module docs).
pub fn convert_finger_log(store: &Store) -> Result<Conversion> {
    let dir = store.dir().join(LEGACY_FINGERS_DIR);
    let log = dir.join(LOG_FILE);
    if !log.exists() {
        return Ok(Conversion::default());
    }
    let scan = wal::scan_frames(&log, &HEADER, decode)?;
    let mut live: HashMap<SubjectId, (usize, Vec<FingerTemplate>)> = HashMap::new();
    for (i, rec) in scan.records.into_iter().enumerate() {
        match rec {
            Legacy::Enroll(s, f) => {
                live.insert(s, (i, f));
            }
            Legacy::Delete(s) => {
                live.remove(&s);
            }
            Legacy::Seq => {}
        }
    }
    let mut items: Vec<(usize, SubjectId, Vec<FingerTemplate>)> =
        live.into_iter().map(|(s, (i, f))| (i, s, f)).collect();
    items.sort_unstable_by_key(|x| x.0);
    let subjects_in_log = items.len();
    let attached =
        store.attach_fingers_batch(items.into_iter().map(|(_, s, f)| (s, f)).collect())?;
    let to = store.dir().join(CONVERTED_DIR);
    if to.exists() {
        return Err(GalleryError::Config(format!(
            "{} exists already; move it away and run the conversion again",
            to.display()
        )));
    }
    std::fs::rename(&dir, &to).map_err(GalleryError::io(&dir))?;
    fsutil::sync_dir(store.dir())?;
    tracing::info!(subjects_in_log, attached, "converted the version 1 finger log into the store");
    Ok(Conversion { subjects_in_log, attached, torn_bytes: scan.discarded, moved_to: Some(to) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minutiae::testing::finger;
    use crate::store::{Enrollment, ModelSpec, StoreOptions};
    use biomatch_core::{Modality, ModelId, Template};

    fn sid(s: &str) -> SubjectId {
        SubjectId::new(s).unwrap()
    }

    fn payload(kind: u8, seq: u64, s: &str, fingers: &[FingerTemplate]) -> Vec<u8> {
        let mut p = vec![kind];
        p.extend_from_slice(&seq.to_le_bytes());
        p.push(s.len() as u8);
        p.extend_from_slice(s.as_bytes());
        if kind == 1 {
            minutiae::encode(&mut p, fingers);
        }
        p
    }

    fn opts() -> StoreOptions {
        StoreOptions::new(vec![ModelSpec { model: ModelId::new("m", "1").unwrap(), dim: 4 }])
    }

    #[test]
    fn converts_the_old_finger_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        let face = |s: &str| {
            let t = Template::new(ModelId::new("m", "1").unwrap(), 4, vec![0.5; 4]).unwrap();
            Enrollment::new(sid(s), vec![(Modality::Face, t)])
        };
        store.enroll(&face("A")).unwrap();
        store.enroll(&face("B")).unwrap();
        // The old layout: A has fingers, C has fingers only, D was enrolled and deleted.
        let fdir = dir.path().join(LEGACY_FINGERS_DIR);
        std::fs::create_dir_all(&fdir).unwrap();
        let mut bytes = wal::encode_header(&HEADER);
        for p in [
            payload(1, 1, "A", &[finger(1, 20), finger(2, 25)]),
            payload(1, 2, "D", &[finger(3, 10)]),
            payload(1, 3, "C", &[finger(7, 30)]),
            payload(2, 4, "D", &[]),
        ] {
            bytes.extend(wal::encode_frame(&p));
        }
        bytes.extend_from_slice(&[0x42, 0x4d, 0x57]); // a torn tail
        std::fs::write(fdir.join(LOG_FILE), &bytes).unwrap();
        assert!(needs_conversion(dir.path()));

        let c = convert_finger_log(&store).unwrap();
        assert_eq!((c.subjects_in_log, c.attached, c.torn_bytes), (2, 2, 3));
        assert!(!needs_conversion(dir.path()));
        let check = |store: &Store| {
            assert_eq!(store.fingers(&sid("A")).unwrap(), vec![finger(1, 20), finger(2, 25)]);
            assert_eq!(store.get(&sid("A")).unwrap().templates.len(), 1, "face kept");
            assert_eq!(store.fingers(&sid("C")).unwrap(), vec![finger(7, 30)]);
            assert!(store.fingers(&sid("B")).unwrap().is_empty());
            assert!(!store.contains(&sid("D")));
            assert_eq!(store.len(), 3);
        };
        check(&store);
        drop(store);
        // Durable, and survives a checkpoint into finger segments.
        let store = Store::open(dir.path(), opts()).unwrap();
        check(&store);
        store.checkpoint().unwrap();
        drop(store);
        let store = Store::open(dir.path(), opts()).unwrap();
        check(&store);
        // Nothing left to do.
        assert_eq!(convert_finger_log(&store).unwrap(), Conversion::default());
    }

    #[test]
    fn a_rerun_after_an_interruption_skips_what_was_attached() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        let fdir = dir.path().join(LEGACY_FINGERS_DIR);
        std::fs::create_dir_all(&fdir).unwrap();
        let mut bytes = wal::encode_header(&HEADER);
        bytes.extend(wal::encode_frame(&payload(1, 1, "A", &[finger(1, 20)])));
        std::fs::write(fdir.join(LOG_FILE), &bytes).unwrap();
        // Interrupted after the attach, before the rename.
        store.attach_fingers_batch(vec![(sid("A"), vec![finger(1, 20)])]).unwrap();
        let c = convert_finger_log(&store).unwrap();
        assert_eq!((c.subjects_in_log, c.attached), (1, 0));
        assert_eq!(store.fingers(&sid("A")).unwrap(), vec![finger(1, 20)]);
    }
}
