//! Prometheus metrics: request counts and latencies per route, load shedding, gallery size,
//! and per model the serving index generation, the rows it covers and its growing (not yet
//! indexed) rows, and what the recall-drift monitor (`crate::recall_monitor`) measured of it.
//! Label sets are bounded: models are the configured ones, and the series labelled with a
//! generation (and a shard) are those of the serving generation only.

use crate::state::AppState;
use biomatch_core::ModelId;
use biomatch_gallery::ann::RecallSample;
use parking_lot::Mutex;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub shed: IntCounter,
    subjects: IntGauge,
    rows: IntGaugeVec,
    growing_rows: IntGaugeVec,
    covered_rows: IntGaugeVec,
    index_generation: IntGaugeVec,
    audit_records: IntGauge,
    sampled_recall: GaugeVec,
    sampled_recall_shard: GaugeVec,
    sampled_recall_probes: IntGaugeVec,
    rebuild_due: IntGaugeVec,
    recall_probes: IntCounterVec,
    recall_hits: IntCounterVec,
    recall_errors: IntCounterVec,
    recall_seconds: HistogramVec,
    face_quality_refused: IntCounterVec,
    /// Held while the gauges are refreshed and gathered: a refresh clears the series of old
    /// generations first, which a concurrent scrape must not see half done.
    render: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("biomatch_http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "biomatch_http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let shed = IntCounter::new(
            "biomatch_http_shed_total",
            "requests refused with 503 because too many were in flight",
        )
        .expect("valid metric");
        let subjects =
            IntGauge::new("biomatch_gallery_subjects", "enrolled subjects").expect("valid metric");
        let rows = IntGaugeVec::new(
            Opts::new("biomatch_gallery_rows", "stored template rows per model"),
            &["model"],
        )
        .expect("valid metric");
        let growing_rows = IntGaugeVec::new(
            Opts::new(
                "biomatch_index_growing_rows",
                "rows not covered by the serving index generation (searched exactly)",
            ),
            &["model"],
        )
        .expect("valid metric");
        let covered_rows = IntGaugeVec::new(
            Opts::new(
                "biomatch_index_covered_rows",
                "rows the serving index generation covers (0: none serves)",
            ),
            &["model"],
        )
        .expect("valid metric");
        let sampled_recall = GaugeVec::new(
            Opts::new(
                "biomatch_index_sampled_recall",
                "recall of the serving generation against exact search over the monitor's window",
            ),
            &["model", "generation"],
        )
        .expect("valid metric");
        let sampled_recall_shard = GaugeVec::new(
            Opts::new(
                "biomatch_index_sampled_recall_shard",
                "recall per shard over the monitor's window (shards with probes)",
            ),
            &["model", "generation", "shard"],
        )
        .expect("valid metric");
        let sampled_recall_probes = IntGaugeVec::new(
            Opts::new(
                "biomatch_index_sampled_recall_probes",
                "probes in the monitor's window behind biomatch_index_sampled_recall",
            ),
            &["model", "generation"],
        )
        .expect("valid metric");
        let rebuild_due = IntGaugeVec::new(
            Opts::new(
                "biomatch_index_rebuild_due",
                "1 when the serving generation should be rebuilt (recall below index.recall_floor \
                 or growing rows past index.rebuild_growing_share)",
            ),
            &["model"],
        )
        .expect("valid metric");
        let recall_probes = IntCounterVec::new(
            Opts::new("biomatch_index_recall_probes_total", "probes the recall monitor ran"),
            &["model"],
        )
        .expect("valid metric");
        let recall_hits = IntCounterVec::new(
            Opts::new(
                "biomatch_index_recall_hits_total",
                "probes whose exact best match the index returned",
            ),
            &["model"],
        )
        .expect("valid metric");
        let recall_errors = IntCounterVec::new(
            Opts::new("biomatch_index_recall_errors_total", "recall samples that failed"),
            &["model"],
        )
        .expect("valid metric");
        let recall_seconds = HistogramVec::new(
            HistogramOpts::new(
                "biomatch_index_recall_sample_seconds",
                "wall time of one recall sample (the store's read lock is held for its exact scan)",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["model"],
        )
        .expect("valid metric");
        let index_generation = IntGaugeVec::new(
            Opts::new("biomatch_index_generation", "serving index generation per model (0: none)"),
            &["model"],
        )
        .expect("valid metric");
        let face_quality_refused = IntCounterVec::new(
            Opts::new(
                "biomatch_face_quality_refused_total",
                "face captures refused by the quality gate, by use and by failing measure",
            ),
            &["use", "measure"],
        )
        .expect("valid metric");
        let audit_records =
            IntGauge::new("biomatch_audit_records", "audit records written by this process")
                .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(shed.clone()),
            Box::new(subjects.clone()),
            Box::new(rows.clone()),
            Box::new(growing_rows.clone()),
            Box::new(covered_rows.clone()),
            Box::new(index_generation.clone()),
            Box::new(audit_records.clone()),
            Box::new(sampled_recall.clone()),
            Box::new(sampled_recall_shard.clone()),
            Box::new(sampled_recall_probes.clone()),
            Box::new(rebuild_due.clone()),
            Box::new(recall_probes.clone()),
            Box::new(recall_hits.clone()),
            Box::new(recall_errors.clone()),
            Box::new(recall_seconds.clone()),
            Box::new(face_quality_refused.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            requests,
            latency,
            shed,
            subjects,
            rows,
            growing_rows,
            covered_rows,
            index_generation,
            audit_records,
            sampled_recall,
            sampled_recall_shard,
            sampled_recall_probes,
            rebuild_due,
            recall_probes,
            recall_hits,
            recall_errors,
            recall_seconds,
            face_quality_refused,
            render: Mutex::new(()),
        }
    }

    /// Count a face capture the quality gate refused (labels: the use and each failing
    /// measure, both from fixed lists).
    pub fn face_quality_refused(
        &self,
        purpose: biomatch_models::face::quality::CaptureUse,
        failures: &[biomatch_models::face::quality::QualityFailure],
    ) {
        for f in failures {
            self.face_quality_refused.with_label_values(&[purpose.as_str(), &f.measure]).inc();
        }
    }

    /// Count a recall sample of `model`.
    pub fn recall_sampled(&self, model: &ModelId, sample: &RecallSample) {
        let m = [model.to_string()];
        self.recall_probes.with_label_values(&m).inc_by(sample.probes as u64);
        self.recall_hits.with_label_values(&m).inc_by(sample.hits as u64);
        self.recall_seconds.with_label_values(&m).observe(sample.seconds);
    }

    /// Count a recall sample of `model` that failed.
    pub fn recall_failed(&self, model: &ModelId) {
        self.recall_errors.with_label_values(&[model.to_string()]).inc();
    }

    /// Refresh the gauges from the state and encode everything in the text format.
    pub fn render(&self, state: &AppState) -> String {
        let _refresh = self.render.lock();
        self.audit_records.set(state.audit.written() as i64);
        if let Ok(g) = state.gallery() {
            let stats = g.store().stats();
            self.subjects.set(stats.subjects as i64);
            // Series of generations no longer serving go.
            self.sampled_recall.reset();
            self.sampled_recall_shard.reset();
            self.sampled_recall_probes.reset();
            self.rebuild_due.reset();
            for c in &stats.columns {
                let m = c.model.to_string();
                self.rows.with_label_values(&[&m]).set(c.rows as i64);
                let Some(idx) = g.index(&c.model) else {
                    self.growing_rows.with_label_values(&[&m]).set(c.rows as i64);
                    self.covered_rows.with_label_values(&[&m]).set(0);
                    self.index_generation.with_label_values(&[&m]).set(0);
                    continue;
                };
                let r = state.recall_monitor.report(&c.model, &idx, c.rows, &state.config.index);
                self.growing_rows.with_label_values(&[&m]).set(r.growing_rows as i64);
                self.covered_rows.with_label_values(&[&m]).set(r.covered_rows as i64);
                self.index_generation.with_label_values(&[&m]).set(r.generation as i64);
                self.rebuild_due.with_label_values(&[&m]).set(i64::from(r.rebuild_due));
                let generation = r.generation.to_string();
                let Some(recall) = r.recall else { continue };
                self.sampled_recall.with_label_values(&[&m, &generation]).set(recall);
                self.sampled_recall_probes
                    .with_label_values(&[&m, &generation])
                    .set(r.probes as i64);
                for s in &r.shards {
                    if let Some(recall) = s.recall {
                        self.sampled_recall_shard
                            .with_label_values(&[&m, &generation, &s.shard.to_string()])
                            .set(recall);
                    }
                }
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        let mut text = String::from_utf8(out).expect("prometheus text is UTF-8");
        if let Some(Ok(node)) = state.cluster() {
            text.push_str(&node.prometheus());
        }
        text
    }
}
