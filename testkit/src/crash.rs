//! SIGKILL crash tests: a writer runs in a child process and is killed at random moments; after
//! each kill the parent opens what the child left on disk and checks that everything the child
//! *acknowledged* is there (qdrant `lib/wal/tests/process_crash.rs`).
//!
//! The child is the test binary itself, re-executed on one of its own `#[ignore]`d tests: no
//! helper binary to build, and the child runs exactly the code under test.
//!
//! - Parent side: [`CrashTest`] spawns the child with environment variables (where to write,
//!   where to start), waits a random time drawn from a seeded generator (optionally counted from
//!   a readiness report of the child), SIGKILLs it and returns the [`Report`]s the child printed.
//! - Child side: [`child_env`] reads what the parent passed; [`report`] prints one line *after*
//!   the thing it reports is durable (after the fsync), so every report the parent collects is a
//!   promise the store must keep.
//! - [`Acknowledged`]: the `ACK`/`TRYDEL`/`DEL` convention of the store crash tests, accumulated
//!   over the rounds.
//! - [`seed_from_env`]: the kill-timing seed, printed, replayable with `BIOMATCH_TEST_SEED`.
//!
//! Reports travel on the child's stdout, each behind a marker so that the test harness's own
//! output ("running 1 test", the `test name ... ` that the first report shares a line with) never
//! reads as one.
//!
//! # Example
//!
//! ```no_run
//! use biomatch_testkit::crash::{self, CrashTest};
//! use std::collections::BTreeSet;
//!
//! const DIR_ENV: &str = "MY_CRASH_DIR";
//!
//! // The child: never run by a plain `cargo test` (ignored); the parent runs it by its full
//! // name. It loops until it is killed.
//! #[test]
//! #[ignore = "run by kill_writer_repeatedly in a child process"]
//! fn child_process() {
//!     let dir = crash::child_env(DIR_ENV);
//!     # let write_and_fsync = |_: &String, _: u64| ();
//!     for i in 0.. {
//!         write_and_fsync(&dir, i); // durable first ...
//!         crash::report(format_args!("ACK {i}")); // ... then acknowledged
//!     }
//! }
//!
//! #[test]
//! fn kill_writer_repeatedly() {
//!     let dir = tempfile::tempdir().unwrap();
//!     let mut child = CrashTest::new("child_process", crash::seed_from_env("my crash test", 42));
//!     child.env(DIR_ENV, dir.path()).kill_after_ms(30..300);
//!     let mut acked = BTreeSet::new();
//!     for round in 0..20 {
//!         for r in child.run_once() {
//!             if let ("ACK", Some(i)) = (r.tag(), r.arg(0)) {
//!                 acked.insert(i);
//!             }
//!         }
//!         # let reopen_and_check = |_: &std::path::Path, _: &BTreeSet<u64>, _: usize| ();
//!         reopen_and_check(dir.path(), &acked, round); // everything in `acked` must be there
//!     }
//! }
//! ```
//!
//! A writer of the store kind reports `ACK <n>`, `TRYDEL <n>` and `DEL <n>` and lets
//! [`Acknowledged`] keep the books (`gallery/tests/store/crash.rs`); extra numbers and other tags
//! stay available to the test, e.g. a sequence number as `ACK <n> <seq>` (`r.arg(1)`) or a bare
//! `COMPACTED` (`r.tag()`), for which [`Acknowledged::record`] returns `false`:
//!
//! ```
//! # use biomatch_testkit::crash::{Acknowledged, Report};
//! # fn count(reports: &[Report]) {
//! let (mut acks, mut compactions, mut max_seq) = (Acknowledged::default(), 0, 0);
//! for r in reports {
//!     if !acks.record(r) && r.tag() == "COMPACTED" {
//!         compactions += 1;
//!     }
//!     max_seq = max_seq.max(r.arg(1).unwrap_or(0));
//! }
//! # }
//! ```
//!
//! The child test's name is its path inside the test binary (`crash::child_process` when it is in
//! `tests/store/crash.rs` of a `tests/store/main.rs` binary), matched exactly. A child that
//! ends before it is killed (it panicked, or the name matches no test) fails the parent with the
//! child's stderr: a crash test whose writer is not running tests nothing.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starts every report line on the child's stdout.
const REPORT_MARKER: &str = "@biomatch-crash-report ";

/// Environment variable that replays a run's kill timings ([`seed_from_env`]).
pub const SEED_ENV: &str = "BIOMATCH_TEST_SEED";

/// How long [`CrashTest::run_once`] waits for the readiness report of
/// [`CrashTest::kill_after_report`].
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The seed of a crash test's kill timings: `$BIOMATCH_TEST_SEED` when set, else `default`.
/// Prints it (`<what> seed: …`), so a failing run can be replayed.
pub fn seed_from_env(what: &str, default: u64) -> u64 {
    let seed = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    eprintln!("{what} seed: {seed} (set {SEED_ENV} to replay)");
    seed
}

/// In the child: the value the parent passed with [`CrashTest::env`]. Panics when it is missing
/// (the ignored child test was run by hand, not by its parent).
pub fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: this test is the child of a crash test, run by its parent")
    })
}

/// In the child: reports one line to the parent (written and flushed at once). Call it only once
/// what it reports is durable. The line must not contain a newline; by convention it is a tag and
/// numbers, `ACK 12` or `DEL 12 345`, which [`Report::tag`] and [`Report::arg`] read back.
pub fn report(line: impl Display) {
    let line = line.to_string();
    debug_assert!(!line.contains('\n'), "one report is one line");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{REPORT_MARKER}{line}").expect("report to the parent");
    out.flush().expect("report to the parent");
}

/// One line a child printed with [`report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report(String);

impl Report {
    /// The whole line, as the child wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first word (`ACK` in `ACK 12 345`).
    pub fn tag(&self) -> &str {
        self.0.split(' ').next().unwrap_or_default()
    }

    /// The `i`-th word after the tag as a number (`arg(1)` is 345 in `ACK 12 345`); `None` when
    /// there is no such word or it is not a number.
    pub fn arg(&self, i: usize) -> Option<u64> {
        self.0.split(' ').nth(i + 1)?.parse().ok()
    }
}

/// What a writer child acknowledged, in the reports of the store crash tests: `ACK <n>` once the
/// enrollment of subject `n` is durable, `TRYDEL <n>` before deleting it and `DEL <n>` once the
/// delete is durable. Accumulate every round's reports into one value with
/// [`Acknowledged::record`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acknowledged {
    /// `ACK`: acknowledged enrollments; each must be found unless a delete of it was tried.
    pub enrolled: BTreeSet<u64>,
    /// `TRYDEL`: deletes started; after a kill the subject may be there or not.
    pub delete_tried: BTreeSet<u64>,
    /// `DEL`: acknowledged deletes; none may come back.
    pub deleted: BTreeSet<u64>,
}

impl Acknowledged {
    /// Records `r` when it is an `ACK`, `TRYDEL` or `DEL` with a number; returns whether it was
    /// (other reports are the caller's).
    pub fn record(&mut self, r: &Report) -> bool {
        let set = match r.tag() {
            "ACK" => &mut self.enrolled,
            "TRYDEL" => &mut self.delete_tried,
            "DEL" => &mut self.deleted,
            _ => return false,
        };
        let Some(n) = r.arg(0) else { return false };
        set.insert(n);
        true
    }

    /// The enrollments that must be in the store: acknowledged, and no delete of them tried.
    pub fn must_exist(&self) -> Vec<u64> {
        self.enrolled.iter().copied().filter(|n| !self.delete_tried.contains(n)).collect()
    }

    /// One past the highest acknowledged enrollment (0 when there is none).
    pub fn next(&self) -> u64 {
        self.enrolled.last().map_or(0, |n| n + 1)
    }
}

/// The parent side of a crash test: runs the child test of this test binary and kills it.
///
/// One value serves all rounds of a test: its seeded generator draws each round's kill time, and
/// [`CrashTest::env`] may change a variable between rounds (say, where the child starts).
#[derive(Debug)]
pub struct CrashTest {
    exe: PathBuf,
    child_test: String,
    envs: Vec<(String, OsString)>,
    kill_after_ms: Range<u64>,
    ready_tag: Option<String>,
    rng: ChaCha8Rng,
}

impl CrashTest {
    /// A crash test whose child is the ignored test `child_test` (its full path in this test
    /// binary), killed between 30 and 300 ms after it starts; `seed` fixes the kill times.
    pub fn new(child_test: &str, seed: u64) -> Self {
        CrashTest {
            exe: std::env::current_exe().expect("the path of this test binary"),
            child_test: child_test.to_owned(),
            envs: Vec::new(),
            kill_after_ms: 30..300,
            ready_tag: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Sets (or replaces) an environment variable of the next children.
    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Self {
        let value = value.as_ref().to_owned();
        match self.envs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.envs.push((key.to_owned(), value)),
        }
        self
    }

    /// Kills each child a uniformly drawn number of milliseconds in `range` after it starts (or
    /// after its readiness report, with [`CrashTest::kill_after_report`]).
    pub fn kill_after_ms(&mut self, range: Range<u64>) -> &mut Self {
        assert!(!range.is_empty(), "an empty kill window");
        self.kill_after_ms = range;
        self
    }

    /// Starts the kill clock only when the child reports a line tagged `tag` (say `READY`, after
    /// it opened its store), so kills land in the work rather than in the start-up. By default the
    /// clock starts at the spawn, and kills may land anywhere, recovery included.
    pub fn kill_after_report(&mut self, tag: &str) -> &mut Self {
        self.ready_tag = Some(tag.to_owned());
        self
    }

    /// One round: spawns the child, waits, SIGKILLs it, reaps it and returns every report it
    /// printed, in order. Panics when the child ends before it is killed (with its stderr), or
    /// never sends the readiness report.
    pub fn run_once(&mut self) -> Vec<Report> {
        let mut child = Command::new(&self.exe)
            .args(["--ignored", "--exact", &self.child_test, "--nocapture", "--test-threads=1"])
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {}: {e}", self.exe.display(), self.child_test));

        // Both pipes are drained on their own threads, so the child never blocks on a full one.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Anywhere in the line: the first report follows libtest's `test name ... `,
                // which has no newline of its own.
                if let Some((_, r)) = line.split_once(REPORT_MARKER) {
                    // The receiver lives until this thread is joined.
                    let _ = tx.send(Report(r.to_owned()));
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let mut reports = Vec::new();
        if let Some(tag) = &self.ready_tag {
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(r) => {
                        let ready = r.tag() == tag;
                        reports.push(r);
                        if ready {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = child.kill();
                        let status = child.wait();
                        let stderr = err_reader.join().unwrap_or_default();
                        panic!(
                            "child test `{}` never reported {tag} ({e:?}, {status:?}); its \
                             stderr:\n{stderr}",
                            self.child_test
                        );
                    }
                }
            }
        }

        let delay = self.rng.random_range(self.kill_after_ms.clone());
        std::thread::sleep(Duration::from_millis(delay));
        if let Some(status) = child.try_wait().expect("poll the child") {
            let stderr = err_reader.join().unwrap_or_default();
            panic!(
                "child test `{}` ended by itself ({status}) before it was killed; its stderr:\n{stderr}",
                self.child_test
            );
        }
        child.kill().expect("SIGKILL the child"); // Child::kill is SIGKILL on Unix
        child.wait().expect("reap the child");
        out_reader.join().expect("the stdout reader does not panic");
        let _ = err_reader.join();
        reports.extend(rx.try_iter());
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_tag_and_numbers() {
        let r = Report("ACK 12 345".into());
        assert_eq!((r.tag(), r.arg(0), r.arg(1), r.arg(2)), ("ACK", Some(12), Some(345), None));
        let r = Report("COMPACTED".into());
        assert_eq!((r.tag(), r.arg(0)), ("COMPACTED", None));
        assert_eq!(Report(String::new()).tag(), "");
    }

    #[test]
    fn acknowledged_follows_the_store_convention() {
        let mut a = Acknowledged::default();
        for line in ["ACK 1", "ACK 2", "ACK 3", "TRYDEL 2", "DEL 2", "TRYDEL 3", "COMPACTED", "ACK"]
        {
            let known = a.record(&Report(line.into()));
            assert_eq!(known, line.contains(' '), "{line}");
        }
        assert_eq!(a.must_exist(), [1]);
        assert_eq!((a.next(), a.deleted.len()), (4, 1));
        assert_eq!(Acknowledged::default().next(), 0);
    }

    /// The child of the tests below: reports READY, then counts until killed.
    #[test]
    #[ignore = "run by the harness tests in a child process"]
    fn counting_child() {
        let start: u64 = child_env("TESTKIT_CRASH_START").parse().unwrap();
        report("READY");
        for i in start.. {
            report(format_args!("ACK {i}"));
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn kills_the_child_and_collects_its_reports() {
        let mut t = CrashTest::new("crash::tests::counting_child", 1);
        t.env("TESTKIT_CRASH_START", "5").kill_after_report("READY").kill_after_ms(50..100);
        for start in [5, 1000] {
            t.env("TESTKIT_CRASH_START", start.to_string());
            let reports = t.run_once();
            assert_eq!(reports[0].tag(), "READY");
            let acks: Vec<u64> = reports[1..].iter().map(|r| r.arg(0).unwrap()).collect();
            assert!(!acks.is_empty(), "the child counted for 50 ms");
            assert!(acks.iter().copied().eq(start..start + acks.len() as u64), "{acks:?}");
        }
    }

    #[test]
    #[should_panic(expected = "ended by itself")]
    fn a_child_that_is_not_running_fails_the_test() {
        CrashTest::new("crash::tests::no_such_test", 1).kill_after_ms(200..201).run_once();
    }
}
