//! The MOSIP ABIS adapter: MOSIP's ABIS API (specification 0.9, messages version 1.1) over
//! ActiveMQ queues, on the same engine as the HTTP API. `biomatch serve` starts it once the
//! gallery is loaded when `[mosip] enabled = true`.
//!
//! - `messages.rs`: request envelope checks, failure reasons, response bodies (no I/O);
//! - `cbeff.rs`: the CBEFF XML a `referenceURL` serves and the ISO records inside it;
//! - `fetch.rs`: the `referenceURL` GET (deadline, size cap, data share errors);
//! - `stomp.rs`: the STOMP 1.2 client;
//! - here: [`Adapter::handle`] (one request → one engine call → one response, audited) and the
//!   consumer loop ([`spawn`]).
//!
//! Delivery: requests are consumed with `client-individual` acknowledgement and handled one
//! at a time in arrival order (so an Identify sees every earlier Insert). A request's response
//! (persistent) and its acknowledgement are sent in one STOMP transaction, committed with a
//! receipt after its effect is durable in the store: each request is answered exactly once. A
//! crash before the commit redelivers it:
//! Insert of the same data answers success again, and answers of writes are remembered per
//! message (`requestId` + body) for the process's lifetime. A storage failure that may heal
//! (`store_unavailable`, `write_in_doubt`) is not answered: the adapter reconnects after a
//! pause and the broker redelivers. Everything else is answered, malformed input included.

pub mod cbeff;
pub mod fetch;
pub mod messages;
pub mod stomp;

use crate::audit::AuditRecord;
use crate::config::MosipConfig;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use biomatch_core::calibration::fpir_from_mosip;
use biomatch_core::fusion::fuse_fmr;
use biomatch_core::{Modality, SubjectId};
use biomatch_engine::{AuditContext, EngineError, IdentifyParams, Samples, SearchKind};
use messages::{
    CandidateListOut, CandidateOut, FailureReason, ModalityOut, Operation, Request, Response,
};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The audit log's key id of requests that came through the MOSIP queue.
pub const AUDIT_KEY_ID: &str = "mosip";
/// Answers of writes remembered for redeliveries.
const REMEMBERED: usize = 4096;

/// Answers of writes by message digest, and the digests oldest first (for eviction).
type Answered = (HashMap<[u8; 32], String>, VecDeque<[u8; 32]>);

/// The `failureReason` of an engine / API error code: the one mapping.
pub fn reason_for(code: ErrorCode) -> FailureReason {
    use ErrorCode as C;
    match code {
        C::AlreadyEnrolled => FailureReason::ReferenceIdExists,
        C::UnknownSubject => FailureReason::ReferenceIdNotFound,
        C::NoFace
        | C::SeveralFaces
        | C::FaceTooSmall
        | C::FaceQuality
        | C::PresentationAttack
        | C::TooFewMinutiae
        | C::BlankImage
        | C::ImageTooSmall => FailureReason::QualityCheckFailed,
        C::UndecodableImage
        | C::ImageTooLarge
        | C::InvalidTemplate
        | C::InvalidMinutiaeRecord
        | C::FingerPositionMismatch
        | C::InvalidFingerPosition
        | C::BadRequest => FailureReason::InvalidCbeffFormat,
        C::InvalidSubjectId | C::InvalidParameter | C::InvalidRate => {
            FailureReason::InvalidRequestStructure
        }
        C::Cancelled | C::Timeout => FailureReason::Aborted,
        _ => FailureReason::InternalError,
    }
}

/// What to do with a delivered message.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Send this response, then acknowledge.
    Answer(String),
    /// Acknowledge without an answer (nothing to answer to: no request id could be read).
    Drop,
    /// Neither answer nor acknowledge: reconnect after a pause, the broker redelivers.
    Retry(String),
}

/// Why a request failed.
struct Failed {
    reason: FailureReason,
    /// For the log (no biometric data).
    detail: String,
    retry: bool,
}

impl Failed {
    fn new(reason: FailureReason, detail: impl Into<String>) -> Failed {
        Failed { reason, detail: detail.into(), retry: false }
    }
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Failed {
        let retry = matches!(e.code, ErrorCode::StoreUnavailable | ErrorCode::WriteInDoubt)
            && e.retry_after.is_some();
        Failed { reason: reason_for(e.code), detail: format!("{}: {}", e.code, e.message), retry }
    }
}

impl From<EngineError> for Failed {
    fn from(e: EngineError) -> Failed {
        let retry = e.is_retryable();
        let code = e.code();
        Failed { reason: reason_for(code), detail: format!("{code}: {e}"), retry }
    }
}

/// The adapter's state: the service, its settings, the jobs in hand.
#[derive(Debug)]
pub struct Adapter {
    state: Arc<AppState>,
    cfg: MosipConfig,
    /// Messages delivered to the adapter and not yet acknowledged (PendingJobs).
    pending: Arc<AtomicUsize>,
    /// Answers of writes by message digest, for redeliveries.
    answered: Mutex<Answered>,
}

impl Adapter {
    pub fn new(state: Arc<AppState>) -> Adapter {
        let cfg = state.config.mosip.clone();
        Adapter {
            state,
            cfg,
            pending: Arc::new(AtomicUsize::new(0)),
            answered: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// Messages delivered and not yet acknowledged.
    pub fn pending(&self) -> &Arc<AtomicUsize> {
        &self.pending
    }

    /// Handle one delivered message body.
    pub async fn handle(&self, body: &[u8]) -> Outcome {
        let req = match messages::parse(body) {
            Ok(r) => r,
            Err(r) => {
                tracing::warn!(
                    request_id = r.request_id.as_deref().unwrap_or(""),
                    reason = r.reason as u8,
                    detail = %r.detail,
                    "MOSIP request refused"
                );
                self.audit(
                    &r.id,
                    r.request_id.as_deref(),
                    vec![],
                    format!("failure:{}", r.reason as u8),
                )
                .await;
                if r.request_id.is_none() && r.reason == FailureReason::InvalidRequestStructure {
                    return Outcome::Drop;
                }
                let resp = Response::failure(&r.id, r.request_id.as_deref(), r.reason);
                return Outcome::Answer(resp.to_json());
            }
        };
        let digest: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(body).into()
        };
        if req.op.is_write() {
            if let Some(a) = self.answered.lock().0.get(&digest) {
                tracing::info!(request_id = %req.request_id, "MOSIP request redelivered: answered again");
                return Outcome::Answer(a.clone());
            }
        }
        let subjects: Vec<String> = req.reference_id.iter().cloned().collect();
        let resp = match self.dispatch(&req).await {
            Ok(r) => r,
            Err(f) if f.retry => {
                tracing::error!(request_id = %req.request_id, detail = %f.detail, "MOSIP request not answered: retried after a pause");
                return Outcome::Retry(f.detail);
            }
            Err(f) => {
                tracing::warn!(
                    request_id = %req.request_id,
                    op = req.op.id(),
                    reason = f.reason as u8,
                    detail = %f.detail,
                    "MOSIP request failed"
                );
                self.audit(
                    req.op.id(),
                    Some(&req.request_id),
                    subjects,
                    format!("failure:{}", f.reason as u8),
                )
                .await;
                Response::failure(req.op.id(), Some(&req.request_id), f.reason)
            }
        };
        let json = resp.to_json();
        if req.op.is_write() {
            let mut a = self.answered.lock();
            if a.1.len() == REMEMBERED {
                if let Some(old) = a.1.pop_front() {
                    a.0.remove(&old);
                }
            }
            a.0.insert(digest, json.clone());
            a.1.push_back(digest);
        }
        Outcome::Answer(json)
    }

    fn context(&self, req: &Request) -> AuditContext {
        AuditContext {
            key_id: AUDIT_KEY_ID.into(),
            request_id: crate::middleware::new_request_id(),
            client_request_id: Some(req.request_id.chars().take(64).collect()),
        }
    }

    /// An audit record of a request the engine's journal does not cover (reads, refusals).
    async fn audit(
        &self,
        op: &str,
        request_id: Option<&str>,
        subjects: Vec<String>,
        outcome: String,
    ) {
        let rec = AuditRecord {
            client_request_id: request_id.map(|r| r.chars().take(64).collect()),
            ..AuditRecord::now(
                AUDIT_KEY_ID,
                op,
                crate::middleware::new_request_id(),
                subjects,
                outcome,
            )
        };
        if let Err(e) = self.state.audit.append(rec).await {
            tracing::error!(error = %e, "MOSIP audit record not written");
        }
    }

    async fn dispatch(&self, req: &Request) -> Result<Response, Failed> {
        let engine = self.state.engine()?.clone();
        match req.op {
            Operation::Ping => {
                self.audit(req.op.id(), Some(&req.request_id), vec![], "ok".into()).await;
                Ok(Response::success(req.op, &req.request_id))
            }
            Operation::PendingJobs => {
                // The pendingJobs request itself is not counted.
                let n = self.pending.load(Ordering::SeqCst).saturating_sub(1);
                self.audit(req.op.id(), Some(&req.request_id), vec![], format!("jobs:{n}")).await;
                Ok(Response {
                    jobs_count: Some(n.to_string()),
                    ..Response::success(req.op, &req.request_id)
                })
            }
            Operation::ReferenceCount => {
                let n = engine.subject_count();
                self.audit(req.op.id(), Some(&req.request_id), vec![], format!("count:{n}")).await;
                Ok(Response {
                    count: Some(n.to_string()),
                    ..Response::success(req.op, &req.request_id)
                })
            }
            Operation::Insert => self.insert(req, engine).await,
            Operation::Delete => {
                let subject = reference(req)?;
                let ctx = self.context(req);
                crate::middleware::blocking(move || Ok(engine.delete(&subject, Some(ctx))?))
                    .await?;
                Ok(Response::success(req.op, &req.request_id))
            }
            Operation::Identify => self.identify(req, engine).await,
        }
    }

    async fn insert(
        &self,
        req: &Request,
        engine: Arc<biomatch_engine::Engine>,
    ) -> Result<Response, Failed> {
        let subject = reference(req)?;
        // A referenceId already taken is only known to be a conflict once the data is in hand:
        // an Insert of the same data (a redelivery) is answered as done (retry = true below),
        // other data gets reason 10.
        let url = req.reference_url.as_deref().unwrap_or_default();
        let samples = self.samples_from_url(url).await?;
        let ctx = self.context(req);
        let e = crate::middleware::blocking(move || {
            Ok(engine.enroll(subject, samples, true, Some(ctx))?)
        })
        .await?;
        if !e.created {
            // Nothing was written, so the engine journaled nothing: this request's own record.
            tracing::info!(request_id = %req.request_id, "MOSIP insert of stored data: answered as done");
            let subjects = vec![e.view.subject.to_string()];
            self.audit(
                req.op.id(),
                Some(&req.request_id),
                subjects,
                format!("replayed:{}", e.view.seq),
            )
            .await;
        }
        Ok(Response::success(req.op, &req.request_id))
    }

    async fn identify(
        &self,
        req: &Request,
        engine: Arc<biomatch_engine::Engine>,
    ) -> Result<Response, Failed> {
        let cfg = &self.state.config;
        let probe_id = match &req.reference_id {
            Some(_) => Some(reference(req)?),
            None => None,
        };
        let samples = match &probe_id {
            Some(s) => {
                let (e, s) = (engine.clone(), s.clone());
                crate::middleware::blocking(move || Ok(e.stored_samples(&s)?)).await?
            }
            None => self.samples_from_url(req.reference_url.as_deref().unwrap_or_default()).await?,
        };
        // Ids that cannot be subject ids were never inserted: nothing to compare with.
        let subset: Option<Vec<SubjectId>> = req
            .gallery
            .as_ref()
            .map(|ids| ids.iter().filter_map(|i| SubjectId::new(i.clone()).ok()).collect());
        let max_results = req.flags.max_results.unwrap_or(cfg.search.default_max_results);
        let target_fpir =
            req.flags.target_fpir.map(fpir_from_mosip).unwrap_or(cfg.search.default_target_fpir);
        let mut list =
            CandidateListOut { count: "0".into(), candidates: vec![], analytics: Map::new() };
        let searched = !matches!(&subset, Some(s) if s.is_empty());
        let mut outcome_ids = Vec::new();
        if searched {
            let params = IdentifyParams {
                // One more: the probe's own record is left out of the answer.
                max_results: (max_results + 1).min(biomatch_gallery::MAX_RESULTS_LIMIT),
                threshold: None,
                target_fpir: Some(target_fpir),
                subset,
                mode: SearchKind::Auto,
                keep_shortlist: false,
            };
            let r = crate::middleware::blocking(move || {
                let probe = engine.prepare(samples)?;
                Ok(engine.identify(&probe, &params)?)
            })
            .await?;
            for c in r
                .candidates
                .iter()
                .filter(|c| Some(&c.subject) != probe_id.as_ref())
                .take(max_results)
            {
                outcome_ids.push(c.subject.to_string());
                list.candidates.push(candidate_out(c));
            }
            list.analytics.insert("gallerySize".into(), Value::String(r.gallery_size.to_string()));
            list.analytics.insert("search".into(), Value::String(r.search.clone()));
        }
        list.count = list.candidates.len().to_string();
        list.analytics
            .insert("targetFPIR".into(), Value::String(messages_target(target_fpir).to_string()));
        let n = list.candidates.len();
        self.audit(req.op.id(), Some(&req.request_id), outcome_ids, format!("candidates:{n}"))
            .await;
        Ok(Response { candidate_list: Some(list), ..Response::success(req.op, &req.request_id) })
    }

    /// Fetch a referenceURL's CBEFF and turn it into samples (images through the extractors).
    async fn samples_from_url(&self, url: &str) -> Result<Samples, Failed> {
        let timeout = Duration::from_millis(self.cfg.fetch_timeout_ms);
        let body =
            fetch::fetch(url, timeout, self.cfg.max_cbeff_bytes).await.map_err(|e| match e {
                fetch::FetchError::Expired => {
                    Failed::new(FailureReason::DataShareUrlExpired, "data share expired")
                }
                fetch::FetchError::Unavailable(m) => {
                    Failed::new(FailureReason::UnableToFetchBiometrics, m)
                }
            })?;
        let parsed = crate::middleware::blocking(move || {
            Ok(cbeff::parse(&body)
                .and_then(|birs| birs.iter().map(cbeff::decode).collect::<Result<Vec<_>, _>>()))
        })
        .await?;
        let contents = parsed.map_err(|e| match e {
            cbeff::CbeffError::NoData => Failed::new(FailureReason::CbeffHasNoData, "no BDB"),
            cbeff::CbeffError::Malformed(m) => Failed::new(FailureReason::InvalidCbeffFormat, m),
        })?;
        let fingers_on = self.state.engine()?.fingers().is_some();
        let mut out = Samples::default();
        let mut skipped = Vec::new();
        for c in contents {
            match c {
                cbeff::Content::Minutiae(t) if fingers_on => {
                    t.validate().map_err(|e| {
                        Failed::new(FailureReason::InvalidCbeffFormat, e.to_string())
                    })?;
                    out.fingers.push(t);
                }
                cbeff::Content::FingerImage { position, image } if fingers_on => {
                    let Some(x) = self.state.finger_extractor.clone() else {
                        skipped.push("finger images (no finger extractor)");
                        continue;
                    };
                    let e =
                        crate::samples::extract_finger_image(&self.state, x, image, Some(position))
                            .await?;
                    out.fingers.push(e.template);
                }
                cbeff::Content::Minutiae(_) | cbeff::Content::FingerImage { .. } => {
                    skipped.push("fingers (fingerprints are off)");
                }
                cbeff::Content::FaceImage(image) => {
                    let Some(x) = self.state.extractor_for(Modality::Face).cloned() else {
                        skipped.push("face images (no face extractor)");
                        continue;
                    };
                    if out.vectors.iter().any(|(m, _)| *m == Modality::Face) {
                        return Err(Failed::new(
                            FailureReason::InvalidCbeffFormat,
                            "two face BIRs",
                        ));
                    }
                    // MOSIP requests are not gated: measured as a 1:N probe is (no eye model).
                    let probe = Some(biomatch_models::face::quality::CaptureUse::Identify);
                    let e =
                        crate::samples::extract_face_image(&self.state, x, image, probe).await?;
                    out.vectors.push((Modality::Face, e.template));
                }
                cbeff::Content::Unsupported(what) => skipped.push(what),
            }
        }
        let mut seen = std::collections::HashSet::new();
        if !out.fingers.iter().all(|t| seen.insert(t.position)) {
            return Err(Failed::new(FailureReason::InvalidCbeffFormat, "a finger is given twice"));
        }
        if !skipped.is_empty() {
            tracing::info!(skipped = ?skipped, "MOSIP CBEFF: BIRs this ABIS does not match were skipped");
        }
        if out.is_empty() {
            return Err(Failed::new(FailureReason::CbeffHasNoData, "no BIR this ABIS can match"));
        }
        Ok(out)
    }
}

/// The referenceId as a subject id; one that cannot be a subject id was never inserted.
fn reference(req: &Request) -> Result<SubjectId, Failed> {
    let r = req.reference_id.clone().unwrap_or_default();
    SubjectId::new(r).map_err(|e| {
        let reason = if req.op == Operation::Insert {
            FailureReason::InvalidRequestStructure
        } else {
            FailureReason::ReferenceIdNotFound
        };
        Failed::new(reason, format!("referenceId: {e}"))
    })
}

/// MOSIP's integer form of an FPIR.
fn messages_target(fpir: f64) -> u32 {
    biomatch_core::calibration::mosip_from_fpir(fpir)
}

/// −10·log10 FMR, one decimal: the same scale as `targetFPIR`.
fn scaled(fmr: f64) -> String {
    // `+ 0.0` turns −0 (an FMR of 1) into 0.
    format!("{:.1}", -10.0 * fmr.clamp(1e-300, 1.0).log10() + 0.0)
}

fn candidate_out(c: &biomatch_engine::CandidateView) -> CandidateOut {
    let mut analytics = Map::new();
    analytics.insert("scaledScore".into(), Value::String(scaled(c.fmr)));
    analytics.insert("fmr".into(), Value::String(format!("{:e}", c.fmr)));
    let mut modalities = Vec::new();
    let fingers: Vec<_> =
        c.scores.iter().filter(|s| matches!(s.modality, Modality::Finger(_))).collect();
    if !fingers.is_empty() {
        let fmr = fuse_fmr(fingers.iter().map(|s| s.fmr));
        let mut a = Map::new();
        a.insert("scaledScore".into(), Value::String(scaled(fmr)));
        a.insert("fmr".into(), Value::String(format!("{fmr:e}")));
        a.insert("fingers".into(), Value::String(fingers.len().to_string()));
        let best = fingers.iter().map(|s| s.score).fold(f32::MIN, f32::max);
        a.insert("internalScore".into(), Value::String(format!("{best:.4}")));
        modalities.push(ModalityOut { biometric_type: "FIR".into(), analytics: a });
    }
    for s in c.scores.iter().filter(|s| s.modality == Modality::Face) {
        let mut a = Map::new();
        a.insert("scaledScore".into(), Value::String(scaled(s.fmr)));
        a.insert("fmr".into(), Value::String(format!("{:e}", s.fmr)));
        a.insert("internalScore".into(), Value::String(format!("{:.4}", s.score)));
        modalities.push(ModalityOut { biometric_type: "FID".into(), analytics: a });
    }
    CandidateOut { reference_id: c.subject.to_string(), analytics, modalities }
}

/// The broker's `host:port` from `stomp://host:port` (or `tcp://`, or a bare `host:port`).
pub fn broker_addr(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("stomp://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let (host, port) =
        rest.rsplit_once(':').ok_or_else(|| format!("mosip.broker_url {url:?} has no port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("mosip.broker_url {url:?} must be stomp://host:port"));
    }
    Ok(rest.to_owned())
}

/// Start the consumer loop on the current runtime; it runs until the process ends,
/// reconnecting (1 s doubling to 30 s) whenever the connection fails.
pub fn spawn(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let adapter = Arc::new(Adapter::new(state));
    tokio::spawn(async move {
        let mut pause = Duration::from_secs(1);
        loop {
            match session(&adapter).await {
                Ok(()) => pause = Duration::from_secs(1),
                Err(e) => tracing::warn!(error = %e, "MOSIP broker connection lost; reconnecting"),
            }
            // Whatever was delivered and not acknowledged is redelivered on the next connection.
            adapter.pending.store(0, Ordering::SeqCst);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    })
}

/// One connection: subscribe, then handle each delivered request in order.
async fn session(a: &Arc<Adapter>) -> Result<(), String> {
    let cfg = &a.cfg;
    let addr = broker_addr(&cfg.broker_url)?;
    let login = cfg.username.as_deref().map(|u| (u, cfg.password.as_deref().unwrap_or("")));
    let (mut reader, mut writer, _) = stomp::connect(&addr, login).await?;
    let inbound = format!("/queue/{}", cfg.inbound_queue);
    let outbound = format!("/queue/{}", cfg.outbound_queue);
    writer
        .send(
            &stomp::Frame::new("SUBSCRIBE")
                .header("id", "0")
                .header("destination", &inbound)
                .header("ack", "client-individual")
                .header("activemq.prefetchSize", &cfg.prefetch.to_string()),
        )
        .await?;
    tracing::info!(broker = %addr, inbound = %inbound, outbound = %outbound, "MOSIP adapter subscribed");
    let (job_tx, mut jobs) = tokio::sync::mpsc::unbounded_channel::<stomp::Frame>();
    let (receipt_tx, mut receipts) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pending = a.pending.clone();
    let read_task = tokio::spawn(async move {
        loop {
            let f = reader.next().await?;
            match f.command.as_str() {
                "MESSAGE" => {
                    pending.fetch_add(1, Ordering::SeqCst);
                    if job_tx.send(f).is_err() {
                        return Ok(());
                    }
                }
                "RECEIPT" => {
                    let id = f.get("receipt-id").unwrap_or("").to_owned();
                    if receipt_tx.send(id).is_err() {
                        return Ok(());
                    }
                }
                "ERROR" => {
                    return Err(format!(
                        "the broker sent ERROR: {}",
                        f.get("message").unwrap_or("")
                    ))
                }
                _ => {}
            }
        }
    });
    let mut receipt_no = 0u64;
    let result: Result<(), String> = async {
        loop {
            let Some(msg) = jobs.recv().await else {
                return Err("the connection ended".to_owned());
            };
            let ack_id = msg
                .get("ack")
                .or_else(|| msg.get("message-id"))
                .ok_or("a MESSAGE without an ack id")?
                .to_owned();
            match a.handle(&msg.body).await {
                Outcome::Answer(json) => {
                    // The response and the request's acknowledgement in one broker transaction:
                    // committed together (a crash before the COMMIT discards the response and
                    // the request is redelivered), so each request is answered exactly once.
                    receipt_no += 1;
                    let rid = format!("r-{receipt_no}");
                    let tx = format!("t-{receipt_no}");
                    writer.send(&stomp::Frame::new("BEGIN").header("transaction", &tx)).await?;
                    writer
                        .send(
                            &stomp::Frame::new("SEND")
                                .header("destination", &outbound)
                                .header("persistent", "true")
                                .header("transaction", &tx)
                                .body(json.into_bytes()),
                        )
                        .await?;
                    writer
                        .send(
                            &stomp::Frame::new("ACK")
                                .header("id", &ack_id)
                                .header("transaction", &tx),
                        )
                        .await?;
                    writer
                        .send(
                            &stomp::Frame::new("COMMIT")
                                .header("transaction", &tx)
                                .header("receipt", &rid),
                        )
                        .await?;
                    // The broker has committed the response (persisted) and the acknowledgement.
                    let wait = async {
                        while let Some(got) = receipts.recv().await {
                            if got == rid {
                                return Ok(());
                            }
                        }
                        Err("the connection ended before the commit's receipt".to_owned())
                    };
                    tokio::time::timeout(Duration::from_secs(30), wait)
                        .await
                        .map_err(|_| "no receipt for a commit within 30 s".to_owned())??;
                }
                Outcome::Drop => {
                    tracing::warn!(
                        "MOSIP message without a readable requestId acknowledged without an answer"
                    );
                    writer.send(&stomp::Frame::new("ACK").header("id", &ack_id)).await?;
                }
                Outcome::Retry(e) => return Err(e),
            }
            a.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
    .await;
    read_task.abort();
    match read_task.await {
        Ok(Err(e)) => Err(e),
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_codes_map_to_the_specified_reasons() {
        use ErrorCode as C;
        assert_eq!(reason_for(C::AlreadyEnrolled), FailureReason::ReferenceIdExists);
        assert_eq!(reason_for(C::UnknownSubject), FailureReason::ReferenceIdNotFound);
        for q in [C::NoFace, C::TooFewMinutiae, C::FaceTooSmall, C::BlankImage] {
            assert_eq!(reason_for(q), FailureReason::QualityCheckFailed, "{q}");
        }
        for f in [C::UndecodableImage, C::InvalidMinutiaeRecord, C::InvalidTemplate] {
            assert_eq!(reason_for(f), FailureReason::InvalidCbeffFormat, "{f}");
        }
        assert_eq!(reason_for(C::Internal), FailureReason::InternalError);
        assert_eq!(reason_for(C::StoreUnavailable), FailureReason::InternalError);
    }

    #[test]
    fn broker_urls() {
        assert_eq!(broker_addr("stomp://127.0.0.1:61613").unwrap(), "127.0.0.1:61613");
        assert_eq!(broker_addr("tcp://mq.local:61613/").unwrap(), "mq.local:61613");
        assert!(broker_addr("stomp://nohost").is_err());
        assert!(broker_addr("stomp://h:99999").is_err());
    }

    #[test]
    fn scaled_scores_use_the_target_fpir_scale() {
        assert_eq!(scaled(1e-3), "30.0");
        assert_eq!(scaled(1.0), "0.0");
        assert_eq!(messages_target(1e-4), 40);
    }
}
