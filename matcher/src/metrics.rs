//! Prometheus metrics: request counts and latencies per route, load shedding, gallery size,
//! the growing (not yet indexed) rows and the serving index generation per model.

use crate::state::AppState;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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
    index_generation: IntGaugeVec,
    audit_records: IntGauge,
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
                "biomatch_growing_rows",
                "rows not covered by the serving index generation (searched exactly)",
            ),
            &["model"],
        )
        .expect("valid metric");
        let index_generation = IntGaugeVec::new(
            Opts::new("biomatch_index_generation", "serving index generation per model (0: none)"),
            &["model"],
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
            Box::new(index_generation.clone()),
            Box::new(audit_records.clone()),
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
            index_generation,
            audit_records,
        }
    }

    /// Refresh the gauges from the state and encode everything in the text format.
    pub fn render(&self, state: &AppState) -> String {
        self.audit_records.set(state.audit.written() as i64);
        if let Ok(g) = state.gallery() {
            let stats = g.store().stats();
            self.subjects.set(stats.subjects as i64);
            for c in &stats.columns {
                let m = c.model.to_string();
                self.rows.with_label_values(&[&m]).set(c.rows as i64);
                let idx = g.index(&c.model);
                let covered = idx.as_ref().map_or(0, |i| i.manifest.covered_rows);
                self.growing_rows
                    .with_label_values(&[&m])
                    .set(c.rows.saturating_sub(covered) as i64);
                self.index_generation
                    .with_label_values(&[&m])
                    .set(idx.map_or(0, |i| i.manifest.generation) as i64);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
