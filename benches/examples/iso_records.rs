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
use biomatch_fingerprint::iso;
use biomatch_testkit::fingers::finger_template;

const MINUTIAE: usize = 30;

fn record(position: u8) -> Vec<u8> {
    iso::to_iso(&finger_template(0x150_0000 + u64::from(position), position, MINUTIAE))
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
