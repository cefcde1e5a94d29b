//! Write synthetic fingerprint impressions as PNG files and report generation times.
//!
//! `cargo run --release -p biomatch-datasets --example finger_synth -- <out_dir> [n_fingers]
//! [impressions] [seed]` writes `f{finger:05}_{imp}.png` (and `f{finger:05}_master.png`, the bare
//! ridge pattern) and prints, per finger, the class, the master's approximate minutiae count and
//! the single-threaded timings.

use biomatch_datasets::finger::{self, FingerSynthConfig, MinutiaKind};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(out) = args.get(1) else {
        eprintln!("usage: finger_synth <out_dir> [n_fingers] [impressions] [seed]");
        std::process::exit(2);
    };
    let n: u64 = args.get(2).map_or(4, |s| s.parse().expect("n_fingers"));
    let imps: u32 = args.get(3).map_or(2, |s| s.parse().expect("impressions"));
    let seed: u64 = args.get(4).map_or(0, |s| s.parse().expect("seed"));
    std::fs::create_dir_all(out).expect("create output directory");
    let cfg = FingerSynthConfig { seed, ..FingerSynthConfig::default() };
    let (mut t_master, mut t_imp) = (0.0f64, 0.0f64);
    for f in 0..n {
        let t = Instant::now();
        let m = finger::master(&cfg, f);
        let dm = t.elapsed().as_secs_f64() * 1e3;
        t_master += dm;
        let mins = m.minutiae(10.0);
        let ends = mins.iter().filter(|m| m.kind == MinutiaKind::Ending).count();
        std::fs::write(format!("{out}/f{f:05}_master.png"), m.ridge_image().to_png())
            .expect("write master");
        let mut line = format!(
            "finger {f:5} {:10} cores {} deltas {} minutiae {:3} ({} endings, {} bifurcations) master {dm:6.1} ms imp",
            format!("{:?}", m.class),
            m.cores.len(),
            m.deltas.len(),
            mins.len(),
            ends,
            mins.len() - ends
        );
        for i in 0..imps {
            let t = Instant::now();
            let img = finger::impression(&cfg, &m, f, i);
            let di = t.elapsed().as_secs_f64() * 1e3;
            t_imp += di;
            line.push_str(&format!(" {di:5.1}"));
            std::fs::write(format!("{out}/f{f:05}_{i}.png"), img.to_png()).expect("write png");
        }
        println!("{line} ms");
    }
    println!(
        "mean: master {:.1} ms, impression {:.1} ms",
        t_master / n.max(1) as f64,
        t_imp / (n * u64::from(imps)).max(1) as f64
    );
}
