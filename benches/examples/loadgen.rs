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
use std::net::IpAddr;
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
}

/// One finished request: latency, status (0 = transport error, 1 = timeout) and for verify
/// whether the decision was `match`.
#[derive(Clone, Copy, Debug)]
struct Sample {
    latency: Duration,
    status: u16,
    is_match: bool,
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

/// Serialised request bodies: mated probes (sample 1) of seeded random enrolled identities.
fn build_bodies(args: &Args) -> Result<Vec<Bytes>> {
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
            let template =
                json!({ "model": "synthetic-face@1", "vector": pop.sample(identity, 1) });
            let body = match args.mode {
                Mode::Verify => json!({
                    "subject_id": subject_id(identity).as_str(),
                    "face": { "template": template },
                }),
                Mode::Identify => json!({
                    "face": { "template": template },
                    "max_results": args.max_results,
                }),
            };
            Ok(Bytes::from(serde_json::to_vec(&body)?))
        })
        .collect()
}

async fn run(args: Args) -> Result<()> {
    let (_, base) = loopback_base(&args.url).await?;
    let endpoint: Uri = format!("{base}/v1/{}", args.mode.as_str()).parse()?;
    let bodies = Arc::new(build_bodies(&args)?);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let auth = args.key.as_ref().map(|k| format!("Bearer {k}"));
    let next = Arc::new(AtomicU64::new(0));
    let per_request = Duration::from_secs_f64(args.request_timeout_s);

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.max_seconds);
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (client, bodies, next, endpoint, auth) =
            (client.clone(), bodies.clone(), next.clone(), endpoint.clone(), auth.clone());
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
                let body = bodies[(i % bodies.len() as u64) as usize].clone();
                let mut req = Request::builder()
                    .method(Method::POST)
                    .uri(endpoint.clone())
                    .header("content-type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("authorization", a);
                }
                let req = req.body(Full::new(body)).expect("valid request");
                let t = Instant::now();
                let outcome = tokio::time::timeout(per_request, async {
                    let resp = client.request(req).await?;
                    let status = resp.status().as_u16();
                    let bytes = resp.into_body().collect().await?.to_bytes();
                    Ok::<_, anyhow::Error>((status, bytes))
                })
                .await;
                let latency = t.elapsed();
                let sample = match outcome {
                    Ok(Ok((status, bytes))) => {
                        let is_match = mode == Mode::Verify
                            && (200..300).contains(&status)
                            && serde_json::from_slice::<serde_json::Value>(&bytes)
                                .ok()
                                .is_some_and(|v| v["decision"] == "match");
                        Sample { latency, status, is_match }
                    }
                    Ok(Err(_)) => Sample { latency, status: STATUS_ERROR, is_match: false },
                    Err(_) => Sample { latency, status: STATUS_TIMEOUT, is_match: false },
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
    println!("{}", report(&args, &samples, elapsed));
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
    if args.mode == Mode::Verify {
        let share = if ok.is_empty() { None } else { Some(matches as f64 / ok.len() as f64) };
        out["match_share"] = json!(share.map(|s| (s * 1e4).round() / 1e4));
    }
    out
}
