//! A bounded load generator for a local `biomatch serve`: loopback only, a fixed number of requests
//! or seconds (whichever comes first), keep-alive HTTP/1.1, one JSON line of results on stdout.
//!
//! Request bodies are mated probes of the synthetic population `enroll-synthetic` enrolled (seed 1
//! by default): sample 1 of identities drawn with a seeded RNG, and for `verify` the identity's own
//! subject id. They are all built before the clock starts, so the run measures the service, not the
//! generator (which shares the machine's cores with it: numbers are for comparison, not capacity).
//!
//! ```sh
//! cargo run --release -p biomatch-benches --example loadgen -- --url http://127.0.0.1:PORT \
//!     --mode verify --subjects 100000 --concurrency 8 --requests 20000 --max-seconds 60
//! ```
//!
//! With `--probes-file FILE.bmvec` (identify only) the bodies are instead the file's vectors in
//! file order, request `i` carrying record `i mod count` (the exact probes of
//! `benches/examples/export_vectors.rs`, which `scripts/bench.sh` sends one at a time with
//! `--concurrency 1`); `--threshold -1` asks for the `max_results` best candidates without an
//! FPIR cut, `--warmup N` sends N untimed requests first, and `--results FILE.jsonl` writes one
//! line per timed request: record index, its label, status, latency and the candidates' subject
//! ids.
//!
//! It refuses any URL whose host does not resolve only to loopback addresses.

use anyhow::{bail, ensure, Context, Result};
use biomatch_datasets::{subject_id, Population, PopulationConfig};
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Verify,
    Identify,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Verify => "verify",
            Mode::Identify => "identify",
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Bounded loopback load generator for biomatch serve; prints one JSON line")]
struct Args {
    /// Base URL of the service; its host must be loopback (127.0.0.0/8, ::1, localhost).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Identities enrolled by `enroll-synthetic` (probes are drawn from `0..subjects`).
    #[arg(long, default_value_t = 100_000)]
    subjects: u64,
    /// Seed of the enrolled population (`enroll-synthetic --seed`).
    #[arg(long, default_value_t = 1)]
    population_seed: u64,
    /// Seed of the probe selection.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Concurrent workers, each with its own keep-alive connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Stop after this many requests in total…
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// …or after this many seconds, whichever comes first.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Distinct request bodies built up front (cycled through).
    #[arg(long, default_value_t = 4096)]
    distinct: usize,
    /// `max_results` of identify requests.
    #[arg(long, default_value_t = 10)]
    max_results: usize,
    /// A single request not answered within this many seconds counts as `timeout`.
    #[arg(long, default_value_t = 30.0)]
    request_timeout_s: f64,
    /// API key sent as `Authorization: Bearer KEY` (not needed when the service has none).
    #[arg(long, env = "BIOMATCH_LOADGEN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Identify with the vectors of this `.bmvec` file, in file order, instead of generated
    /// probes (`--subjects`, `--seed` and `--distinct` are then unused).
    #[arg(long)]
    probes_file: Option<PathBuf>,
    /// Raw score threshold of identify requests (`-1`: the best `max_results`, no FPIR cut);
    /// absent: the service's default target FPIR.
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// `search` of identify requests: auto (the service's choice), exact or index.
    #[arg(long, default_value = "auto", value_parser = ["auto", "exact", "index"])]
    search: String,
    /// Requests sent one at a time before the clock starts (not counted).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Write one JSON line per timed request here: `{"i", "label", "status", "ms",
    /// "candidates"}` (identify: the candidates' subject ids, best first).
    #[arg(long)]
    results: Option<PathBuf>,
}

/// The request bodies and, for a probes file, each body's label (identity).
struct Bodies {
    bodies: Vec<Bytes>,
    labels: Option<Vec<u64>>,
}

/// One finished request: latency, status (0 = transport error, 1 = timeout), for verify
/// whether the decision was `match`, and (with `--results`) which body it sent and the
/// candidates it got.
#[derive(Clone, Debug)]
struct Sample {
    latency: Duration,
    status: u16,
    is_match: bool,
    body: usize,
    candidates: Option<Vec<String>>,
}

const STATUS_ERROR: u16 = 0;
const STATUS_TIMEOUT: u16 = 1;

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.concurrency >= 1 && args.concurrency <= 1024, "--concurrency must be in 1..=1024");
    ensure!(args.requests >= 1, "--requests must be at least 1");
    ensure!(
        args.max_seconds > 0.0 && args.max_seconds <= 3600.0,
        "--max-seconds must be in (0, 3600]"
    );
    ensure!(args.request_timeout_s > 0.0, "--request-timeout-s must be positive");
    ensure!(args.subjects >= 1, "--subjects must be at least 1");
    ensure!(args.distinct >= 1, "--distinct must be at least 1");
    ensure!(
        args.probes_file.is_none() || args.mode == Mode::Identify,
        "--probes-file needs --mode identify"
    );
    ensure!(args.threshold.is_none_or(f32::is_finite), "--threshold must be a finite number");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

/// Parse `url` and check that it is plain HTTP to a host that resolves only to loopback addresses.
async fn loopback_base(url: &str) -> Result<(Uri, String)> {
    let uri: Uri = url.parse().with_context(|| format!("invalid --url {url:?}"))?;
    ensure!(uri.scheme_str() == Some("http"), "--url must be http://… (got {url:?})");
    let host = uri.host().context("--url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) if bare.eq_ignore_ascii_case("localhost") => {
            let addrs: Vec<_> = tokio::net::lookup_host((bare, port)).await?.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    };
    if !loopback {
        bail!(
            "refusing --url {url:?}: only loopback hosts (127.0.0.0/8, ::1, localhost) are allowed"
        );
    }
    let base = format!("http://{}", uri.authority().context("--url has no authority")?);
    Ok((uri, base))
}

/// An identify request body for `vector`.
fn identify_body(args: &Args, vector: &[f32]) -> Result<Bytes> {
    let mut body = json!({
        "face": { "template": { "model": "synthetic-face@1", "vector": vector } },
        "max_results": args.max_results,
        "search": args.search,
    });
    if let Some(t) = args.threshold {
        body["threshold"] = json!(t);
    }
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

/// The request bodies: a probes file's vectors, or generated ones.
fn build_bodies(args: &Args) -> Result<Bodies> {
    let Some(path) = &args.probes_file else {
        return Ok(Bodies { bodies: generated_bodies(args)?, labels: None });
    };
    let file = biomatch_datasets::read_vectors(path)
        .with_context(|| format!("reading probes {}", path.display()))?;
    ensure!(!file.is_empty(), "{} holds no vectors", path.display());
    let bodies =
        (0..file.len()).map(|i| identify_body(args, file.vector(i))).collect::<Result<_>>()?;
    Ok(Bodies { bodies, labels: Some(file.labels) })
}

/// Serialised request bodies: mated probes (sample 1) of seeded random enrolled identities.
fn generated_bodies(args: &Args) -> Result<Vec<Bytes>> {
    let pop = Population::new(PopulationConfig {
        identities: args.subjects,
        seed: args.population_seed,
        ..Default::default()
    })?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let n = args.distinct.min(usize::try_from(args.requests).unwrap_or(usize::MAX));
    (0..n)
        .map(|_| {
            let identity = rng.random_range(0..args.subjects);
            let vector = pop.sample(identity, 1);
            match args.mode {
                Mode::Verify => {
                    let body = json!({
                        "subject_id": subject_id(identity).as_str(),
                        "face": { "template": { "model": "synthetic-face@1", "vector": vector } },
                    });
                    Ok(Bytes::from(serde_json::to_vec(&body)?))
                }
                Mode::Identify => identify_body(args, &vector),
            }
        })
        .collect()
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Where requests go and how: shared by every worker.
struct Target {
    client: HttpClient,
    endpoint: Uri,
    auth: Option<String>,
    per_request: Duration,
}

impl Target {
    /// Send one request; `Ok((status, body))`, or the status code standing for a transport
    /// error or a timeout.
    async fn send(&self, body: Bytes) -> std::result::Result<(u16, Bytes), u16> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header("content-type", "application/json");
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        let req = req.body(Full::new(body)).expect("valid request");
        let outcome = tokio::time::timeout(self.per_request, async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        })
        .await;
        match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(STATUS_ERROR),
            Err(_) => Err(STATUS_TIMEOUT),
        }
    }
}

/// The subject ids of an identify answer's candidates, best first.
fn candidate_ids(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["candidates"]
        .as_array()?
        .iter()
        .map(|c| c["subject_id"].as_str().map(str::to_owned))
        .collect()
}

async fn run(args: Args) -> Result<()> {
    let (_, base) = loopback_base(&args.url).await?;
    let bodies = Arc::new(build_bodies(&args)?);
    let target = Arc::new(Target {
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(args.concurrency)
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http(),
        endpoint: format!("{base}/v1/{}", args.mode.as_str()).parse()?,
        auth: args.key.as_ref().map(|k| format!("Bearer {k}")),
        per_request: Duration::from_secs_f64(args.request_timeout_s),
    });
    let count = bodies.bodies.len() as u64;
    for i in 0..args.warmup {
        let body = bodies.bodies[(i % count) as usize].clone();
        match target.send(body).await {
            Ok((status, _)) if (200..300).contains(&status) => {}
            Ok((status, bytes)) => bail!(
                "warm-up request {i} answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ),
            Err(_) => bail!("warm-up request {i} failed (transport error or timeout)"),
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let keep_candidates = args.results.is_some();

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.max_seconds);
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (target, bodies, next) = (target.clone(), bodies.clone(), next.clone());
        let (total, mode) = (args.requests, args.mode);
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = (i % count) as usize;
                let t = Instant::now();
                let outcome = target.send(bodies.bodies[body].clone()).await;
                let latency = t.elapsed();
                let sample = match outcome {
                    Ok((status, bytes)) => {
                        let ok = (200..300).contains(&status);
                        let is_match = mode == Mode::Verify
                            && ok
                            && serde_json::from_slice::<serde_json::Value>(&bytes)
                                .ok()
                                .is_some_and(|v| v["decision"] == "match");
                        let candidates = (keep_candidates && ok && mode == Mode::Identify)
                            .then(|| candidate_ids(&bytes))
                            .flatten();
                        Sample { latency, status, is_match, body, candidates }
                    }
                    Err(status) => {
                        Sample { latency, status, is_match: false, body, candidates: None }
                    }
                };
                samples.push(sample);
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(path) = &args.results {
        write_results(path, &bodies, &samples)?;
    }
    println!("{}", report(&args, &samples, elapsed));
    Ok(())
}

/// One JSON line per timed request, in the order they finished.
fn write_results(path: &std::path::Path, bodies: &Bodies, samples: &[Sample]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for s in samples {
        let line = json!({
            "i": s.body,
            "label": bodies.labels.as_ref().map(|l| l[s.body]),
            "status": s.status,
            "ms": s.latency.as_secs_f64() * 1e3,
            "candidates": s.candidates,
        });
        writeln!(w, "{line}")?;
    }
    w.flush()?;
    Ok(())
}

/// Nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let d = sorted[rank.clamp(1, sorted.len()) - 1];
    Some(round3(d.as_secs_f64() * 1e3))
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn report(args: &Args, samples: &[Sample], elapsed: f64) -> serde_json::Value {
    let mut status: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut other): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    let mut matches = 0u64;
    for s in samples {
        let key = match s.status {
            STATUS_ERROR => "error".to_string(),
            STATUS_TIMEOUT => "timeout".to_string(),
            code => code.to_string(),
        };
        *status.entry(key).or_default() += 1;
        if (200..300).contains(&s.status) {
            ok.push(s.latency);
            matches += u64::from(s.is_match);
        } else {
            other.push(s.latency);
        }
    }
    ok.sort_unstable();
    other.sort_unstable();
    let mut out = json!({
        "mode": args.mode.as_str(),
        "concurrency": args.concurrency,
        "subjects": args.subjects,
        "requests_sent": samples.len(),
        "duration_s": round3(elapsed),
        "throughput_rps": round3(samples.len() as f64 / elapsed.max(1e-9)),
        "ok": ok.len(),
        "ok_rps": round3(ok.len() as f64 / elapsed.max(1e-9)),
        "status": status,
        "p50_ms": percentile_ms(&ok, 50.0),
        "p99_ms": percentile_ms(&ok, 99.0),
        "max_ms": ok.last().map(|d| round3(d.as_secs_f64() * 1e3)),
        "non2xx_p50_ms": percentile_ms(&other, 50.0),
        "non2xx_p99_ms": percentile_ms(&other, 99.0),
    });
    if let Some(p) = &args.probes_file {
        out["probes_file"] = json!(p);
        out["warmup"] = json!(args.warmup);
    }
    if args.mode == Mode::Verify {
        let share = if ok.is_empty() { None } else { Some(matches as f64 / ok.len() as f64) };
        out["match_share"] = json!(share.map(|s| (s * 1e4).round() / 1e4));
    }
    out
}
