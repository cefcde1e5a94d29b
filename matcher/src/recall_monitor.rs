//! The recall-drift monitor: a background thread that measures, every
//! `index.recall_monitor.interval_s`, the recall of each serving index generation against exact
//! search, so operators see when a rebuild is due before the misses show.
//!
//! A tick asks [`Gallery::sample_recall`](biomatch_gallery::Gallery::sample_recall) for a few
//! probes per model (`probes_per_tick`; each is a stored template of the covered rows turned to a
//! mate-like cosine, see `gallery/src/ann/recall.rs`) with the service's own search parameters,
//! under the store's read lock for one exact scan of the column. The samples of the serving
//! generation are kept per model over a window of the most recent `window` probes; a sample of
//! another generation (a reload, a build) starts a new window. `/metrics` and
//! `GET /v1/admin/stats` read [`RecallMonitor::report`], which also says whether a rebuild is due:
//! the window's recall below `index.recall_floor`, or a growing segment (rows enrolled since the
//! build, searched exactly) larger than `index.rebuild_growing_share` of the covered rows.
//! Nothing biometric is logged: models, generations, counts and errors.

use crate::api::{RebuildReason, RecallMonitorOut, ShardRecallOut};
use crate::config::IndexConfig;
use crate::state::AppState;
use biomatch_core::ModelId;
use biomatch_gallery::ann::{RecallParams, RecallSample, ShardedIndex};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The samples kept per model. Cheap to lock: the samples are taken without the lock.
#[derive(Debug, Default)]
pub struct RecallMonitor {
    windows: Mutex<HashMap<ModelId, Window>>,
}

/// The most recent samples of one generation, oldest first, with their unix times.
#[derive(Debug)]
struct Window {
    generation: u64,
    samples: VecDeque<(f64, RecallSample)>,
}

impl RecallMonitor {
    /// Add a sample of `model` taken at unix time `at`, keeping the fewest most recent samples
    /// that hold at least `window` probes. A sample of another generation than the window's
    /// starts a new window; a sample without probes (no live covered row) is not kept.
    pub fn record(&self, model: &ModelId, sample: RecallSample, at: f64, window: usize) {
        let mut windows = self.windows.lock();
        let w = windows
            .entry(model.clone())
            .or_insert_with(|| Window { generation: sample.generation, samples: VecDeque::new() });
        if w.generation != sample.generation {
            w.generation = sample.generation;
            w.samples.clear();
        }
        if sample.probes == 0 {
            return;
        }
        w.samples.push_back((at, sample));
        let mut total: usize = w.samples.iter().map(|(_, s)| s.probes).sum();
        while let Some((_, oldest)) = w.samples.front() {
            if total - oldest.probes < window {
                break;
            }
            total -= oldest.probes;
            w.samples.pop_front();
        }
    }

    /// Drop the samples of `model` (no generation serves it any more).
    pub fn forget(&self, model: &ModelId) {
        self.windows.lock().remove(model);
    }

    /// What the monitor says of `model`, served by `index`, whose column has `rows` rows: the
    /// window's recall if its samples are of `index`'s generation (else none yet), the growing
    /// segment, and whether a rebuild is due.
    pub fn report(
        &self,
        model: &ModelId,
        index: &ShardedIndex,
        rows: u64,
        cfg: &IndexConfig,
    ) -> RecallMonitorOut {
        let m = &index.manifest;
        self.summary(model, m.generation, m.shards.len(), rows, m.covered_rows, cfg)
    }

    /// [`report`](Self::report) of a generation with `shards` shards covering `covered_rows`.
    fn summary(
        &self,
        model: &ModelId,
        generation: u64,
        shards: usize,
        rows: u64,
        covered_rows: u64,
        cfg: &IndexConfig,
    ) -> RecallMonitorOut {
        let mut shards: Vec<ShardRecallOut> = (0..shards)
            .map(|shard| ShardRecallOut { shard, probes: 0, hits: 0, recall: None })
            .collect();
        let (mut probes, mut hits, mut overlap) = (0, 0, 0.0);
        let mut last: Option<(f64, RecallSample)> = None;
        if let Some(w) = self.windows.lock().get(model).filter(|w| w.generation == generation) {
            for (_, s) in &w.samples {
                probes += s.probes;
                hits += s.hits;
                overlap += s.recall_at_k * s.probes as f64;
                for (out, r) in shards.iter_mut().zip(&s.shards) {
                    out.probes += r.probes;
                    out.hits += r.hits;
                }
            }
            last = w.samples.back().cloned();
        }
        let share = |h: usize, n: usize| (n > 0).then(|| h as f64 / n as f64);
        for s in &mut shards {
            s.recall = share(s.hits, s.probes);
        }
        let recall = share(hits, probes);
        let worst_shard = shards.iter().filter_map(|s| s.recall).reduce(f64::min);
        let growing_rows = rows.saturating_sub(covered_rows);
        let window = cfg.recall_monitor.window;
        let mut rebuild_reasons = Vec::new();
        if probes >= window && recall.is_some_and(|r| r < cfg.recall_floor) {
            rebuild_reasons.push(RebuildReason::RecallBelowFloor);
        }
        if growing_rows as f64 > cfg.rebuild_growing_share * covered_rows as f64 {
            rebuild_reasons.push(RebuildReason::GrowingShare);
        }
        RecallMonitorOut {
            generation,
            probes,
            hits,
            recall,
            recall_at_k: (probes > 0).then(|| overlap / probes as f64),
            worst_shard,
            shards,
            window,
            k: last.as_ref().map(|(_, s)| s.k),
            k_prime: last.as_ref().map(|(_, s)| s.k_prime),
            nprobe: last.as_ref().and_then(|(_, s)| s.nprobe),
            last_sample_at: last.as_ref().map(|(at, _)| *at),
            last_sample_seconds: last.as_ref().map(|(_, s)| s.seconds),
            growing_rows,
            covered_rows,
            rebuild_due: !rebuild_reasons.is_empty(),
            rebuild_reasons,
        }
    }
}

/// One round of the monitor: a sample of `probes_per_tick` fresh probes for every model a
/// generation serves (the configured models, and the fingers' code model), searched with the
/// service's `k_prime`/`nprobe`. Failures are logged and counted
/// (`biomatch_index_recall_errors_total`), never raised. Returns how many models were sampled.
/// Blocking (an exact scan per model, on the rayon pool): call it off the async threads. The
/// monitor's thread calls it every `interval_s`; tests call it directly.
pub fn tick(state: &AppState) -> usize {
    let Ok(engine) = state.engine() else { return 0 };
    // What identify searches with.
    let ann = engine.settings().ann_params();
    let cfg = &state.config.index.recall_monitor;
    let mut sampled = 0;
    for spec in state.model_specs() {
        let model = spec.model;
        let params = RecallParams {
            probes: cfg.probes_per_tick,
            seed: rand::random(),
            ..RecallParams::default()
        };
        match engine.gallery().sample_recall(&model, &params, ann) {
            Ok(Some(sample)) => {
                tracing::debug!(
                    model = %model,
                    generation = sample.generation,
                    probes = sample.probes,
                    hits = sample.hits,
                    seconds = sample.seconds,
                    "recall sampled"
                );
                state.metrics.recall_sampled(&model, &sample);
                state.recall_monitor.record(&model, sample, crate::admin::unix_now(), cfg.window);
                sampled += 1;
            }
            Ok(None) => state.recall_monitor.forget(&model),
            Err(e) => {
                state.metrics.recall_failed(&model);
                tracing::warn!(model = %model, error = %e, "recall sample failed");
            }
        }
    }
    sampled
}

/// Start the monitor's thread (when `index.recall_monitor.enabled`): a [`tick`] every
/// `interval_s`, the first one `interval_s` after the start, until the state is dropped.
pub fn spawn(state: &Arc<AppState>) {
    let cfg = &state.config.index.recall_monitor;
    if !cfg.enabled {
        tracing::info!("the recall monitor is off (index.recall_monitor.enabled = false)");
        return;
    }
    let period = std::time::Duration::from_secs(cfg.interval_s);
    let weak = Arc::downgrade(state);
    let spawned =
        std::thread::Builder::new().name("biomatch-recall-monitor".into()).spawn(move || loop {
            std::thread::sleep(period);
            let Some(st) = weak.upgrade() else { return };
            let round = std::panic::AssertUnwindSafe(|| tick(&st));
            if std::panic::catch_unwind(round).is_err() {
                tracing::error!("a recall sample panicked; the monitor goes on");
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the recall monitor's thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use biomatch_gallery::ann::ShardRecall;

    fn sample(generation: u64, shards: [(usize, usize); 2], recall_at_k: f64) -> RecallSample {
        let probes = shards.iter().map(|s| s.0).sum();
        let hits = shards.iter().map(|s| s.1).sum();
        RecallSample {
            generation,
            probes,
            hits,
            recall: hits as f64 / probes.max(1) as f64,
            recall_at_k,
            k: 10,
            mate_cosine: 0.6,
            k_prime: 32,
            nprobe: None,
            shards: shards
                .iter()
                .map(|&(p, h)| ShardRecall { probes: p, hits: h, recall: 0.0 })
                .collect(),
            seconds: 0.01,
        }
    }

    #[test]
    fn the_window_keeps_the_newest_samples_of_one_generation() {
        let mon = RecallMonitor::default();
        let m = ModelId::parse("x@1").unwrap();
        for i in 0..5 {
            mon.record(&m, sample(3, [(2, 2), (2, 1)], 0.5), i as f64, 10);
        }
        let w = mon.windows.lock();
        let times: Vec<f64> = w[&m].samples.iter().map(|(t, _)| *t).collect();
        // 4 probes a sample: three samples (12 probes) are the fewest holding 10.
        assert_eq!(times, [2.0, 3.0, 4.0]);
        drop(w);
        mon.record(&m, sample(3, [(0, 0), (0, 0)], 1.0), 5.0, 10);
        assert_eq!(mon.windows.lock()[&m].samples.len(), 3, "an empty sample is not kept");
        mon.record(&m, sample(4, [(1, 1), (0, 0)], 1.0), 6.0, 10);
        let w = mon.windows.lock();
        assert_eq!((w[&m].generation, w[&m].samples.len()), (4, 1), "a new generation restarts");
    }

    #[test]
    fn rebuild_is_due_below_the_floor_over_a_full_window_or_past_the_growing_share() {
        let cfg = IndexConfig {
            recall_floor: 0.95,
            rebuild_growing_share: 0.1,
            recall_monitor: crate::config::RecallMonitorConfig { window: 8, ..Default::default() },
        };
        let mon = RecallMonitor::default();
        let m = ModelId::parse("x@1").unwrap();
        // 4 probes, 3 hits: recall 0.75, but the window is not full yet.
        mon.record(&m, sample(1, [(3, 3), (1, 0)], 0.5), 100.0, 8);
        let r = mon.summary(&m, 1, 2, 1000, 1000, &cfg);
        assert_eq!((r.probes, r.hits, r.recall, r.worst_shard), (4, 3, Some(0.75), Some(0.0)));
        assert_eq!(r.recall_at_k, Some(0.5));
        assert_eq!((r.rebuild_due, r.last_sample_at), (false, Some(100.0)));
        assert_eq!(r.shards[0], ShardRecallOut { shard: 0, probes: 3, hits: 3, recall: Some(1.0) });
        // Full (8 probes, 7 hits: 0.875 < 0.95): due for its recall.
        mon.record(&m, sample(1, [(2, 2), (2, 2)], 1.0), 130.0, 8);
        let r = mon.summary(&m, 1, 2, 1000, 1000, &cfg);
        assert_eq!((r.probes, r.recall, r.recall_at_k), (8, Some(0.875), Some(0.75)));
        assert_eq!(r.rebuild_reasons, [RebuildReason::RecallBelowFloor]);
        // 101 growing rows over 1000 covered: past 10 %; 100 is not.
        let r = mon.summary(&m, 1, 2, 1101, 1000, &cfg);
        assert_eq!(
            r.rebuild_reasons,
            [RebuildReason::RecallBelowFloor, RebuildReason::GrowingShare]
        );
        assert_eq!(r.growing_rows, 101);
        // Another generation serves: none of these samples count.
        let r = mon.summary(&m, 2, 2, 1100, 1000, &cfg);
        assert_eq!((r.generation, r.probes, r.recall, r.rebuild_due), (2, 0, None, false));
        assert_eq!(r.shards.iter().map(|s| s.recall).collect::<Vec<_>>(), [None, None]);
    }
}
