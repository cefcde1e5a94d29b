//! The store on a disk that fills up (a small tmpfs of the test's own; needs root, as in CI):
//! a refused write is [`GalleryError::NoSpace`] and leaves nothing behind, the store reports the
//! fault and clears it without a reopen once space is back, and a checkpoint that runs out of
//! space keeps every record (in the log), leaves no file behind, waits before its next try and
//! succeeds once space is freed.

use crate::common::*;
use biomatch_gallery::{GalleryError, Store, WriteFault};
use biomatch_testkit::tmpfs::Tmpfs;

#[test]
fn a_full_disk_refuses_writes_keeps_the_log_through_a_failed_checkpoint_and_recovers() {
    let fs = Tmpfs::mount(2 << 20);
    let dir = fs.path().join("store");
    let mut opts = options();
    // Checkpoints only when asked, and always due.
    opts.auto_checkpoint = false;
    opts.checkpoint_wal_bytes = 1;
    let s = Store::open(&dir, opts.clone()).unwrap();
    let mut stored: Vec<u64> = (0..100).collect();
    for &i in &stored {
        s.enroll(&enrollment(1, i)).unwrap();
    }
    assert!(s.probe_writes() && s.write_fault().is_none());
    let filler = fs.fill("filler", 16 << 10);

    let mut refused = Vec::new();
    for i in 100..100_000 {
        match s.enroll(&enrollment(1, i)) {
            Ok(_) => stored.push(i),
            Err(GalleryError::NoSpace { .. }) => {
                refused.push(i);
                if refused.len() == 5 {
                    break;
                }
            }
            Err(e) => panic!("enrollment {i} on a full disk: {e}"),
        }
    }
    assert_eq!(refused.len(), 5, "the disk never filled");
    assert!(stored.len() > 100, "the space left should take some enrollments");
    assert!(matches!(s.write_fault(), Some(WriteFault::NoSpace(_))), "{:?}", s.write_fault());
    assert!(!s.probe_writes(), "nothing can be written yet");
    for &i in &refused {
        assert!(!s.contains(&sid(i)), "refused {i} is stored");
    }

    // The checkpoint runs out of space too: nothing is lost, nothing is left behind, and the
    // owner's next `checkpoint_if_due` waits before trying again.
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    let e = s.checkpoint().unwrap_err();
    assert!(matches!(e, GalleryError::NoSpace { .. }), "{e}");
    assert_eq!(listing(), before, "a failed checkpoint leaves no file behind");
    assert!(!s.checkpoint_if_due().unwrap(), "a failed checkpoint is retried after a wait");
    assert_eq!(s.len(), stored.len());
    assert_eq!(s.stats().columns[0].sealed_rows, 0);

    // Space is back: the probe clears the fault, and writes and the checkpoint succeed
    // without a reopen.
    std::fs::remove_file(filler).unwrap();
    assert!(s.probe_writes());
    assert_eq!(s.write_fault(), None);
    s.enroll(&enrollment(1, refused[0])).unwrap();
    stored.push(refused[0]);
    s.checkpoint().unwrap();
    assert_eq!(s.stats().columns[0].sealed_rows, stored.len() as u64);
    drop(s);

    let s = Store::open(&dir, opts).unwrap();
    assert_eq!(s.len(), stored.len());
    for &i in &stored {
        assert_eq!(s.fingers(&sid(i)).unwrap(), fingers(1, i), "subject {i}");
        assert!(s.contains(&sid(i)));
    }
    for &i in &refused[1..] {
        assert!(!s.contains(&sid(i)), "refused {i} is stored after a reopen");
    }
    drop(s);
    drop(fs);
}
