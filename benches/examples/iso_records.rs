//! Prints ISO/IEC 19794-2:2005 finger minutiae records (base64, one per line) for load tests of
//! enrollment (`scripts/ingest-bench.sh`): one record per finger position given, default 2 and 7.
//!
//! Synthetic and deterministic: 30 minutiae per finger from a fixed seed, on a 400×500 image at
//! 500 dpi, written by the service's own writer (`biomatch_fingerprint::iso::to_iso`).
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example iso_records -- 2 7
//! ```

use base64::Engine;
use biomatch_core::finger::{FingerTemplate, Minutia, MinutiaKind, RESOLUTION_500DPI_PPCM};
use biomatch_core::FingerPosition;
use biomatch_fingerprint::iso;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MINUTIAE: usize = 30;
const WIDTH: u16 = 400;
const HEIGHT: u16 = 500;

fn record(position: u8) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x150_0000 + u64::from(position));
    let minutiae = (0..MINUTIAE)
        .map(|_| Minutia {
            x: rng.random_range(20..WIDTH - 20),
            y: rng.random_range(20..HEIGHT - 20),
            angle: rng.random(),
            kind: if rng.random_bool(0.5) {
                MinutiaKind::RidgeEnding
            } else {
                MinutiaKind::Bifurcation
            },
            quality: rng.random_range(40..=90),
        })
        .collect();
    let position = FingerPosition::new(position).expect("finger position 1..=10");
    let t =
        FingerTemplate::new(WIDTH, HEIGHT, RESOLUTION_500DPI_PPCM, Some(position), 60, minutiae)
            .expect("a valid template");
    iso::to_iso(&t)
}

fn main() {
    let mut positions: Vec<u8> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or_else(|_| panic!("finger position 1..=10, not {a:?}")))
        .collect();
    if positions.is_empty() {
        positions = vec![2, 7];
    }
    for p in positions {
        println!("{}", base64::engine::general_purpose::STANDARD.encode(record(p)));
    }
}
