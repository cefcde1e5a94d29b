//! The MOSIP ABIS API messages (specification 0.9, message `version` "1.1"): the request
//! envelope, its validation into a [`Request`] or the specified [`FailureReason`], and the
//! response bodies. No I/O here: what a request *does* is `handler.rs`.

use serde::Serialize;
use serde_json::{Map, Value};

/// The ABIS API specification version implemented (docs/mosip-abis.md).
pub const SPEC_VERSION: &str = "0.9";
/// The `version` every request must carry.
pub const MESSAGE_VERSION: &str = "1.1";

/// `failureReason` codes of the specification ("Failure Reasons").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// 1: internal error - Unknown.
    InternalError = 1,
    /// 2: aborted.
    Aborted = 2,
    /// 3: unexpected error.
    UnexpectedError = 3,
    /// 4: unable to serve the request - invalid request structure.
    InvalidRequestStructure = 4,
    /// 5: missing referenceId (in request body).
    MissingReferenceId = 5,
    /// 6: missing requestId (in request body).
    MissingRequestId = 6,
    /// 7: unable to fetch biometric details (using referenceURL).
    UnableToFetchBiometrics = 7,
    /// 8: missing reference URL (in request body).
    MissingReferenceUrl = 8,
    /// 9: missing requesttime (in request body).
    MissingRequesttime = 9,
    /// 10: referenceId already exists (in ABIS).
    ReferenceIdExists = 10,
    /// 11: CBEFF has no data.
    CbeffHasNoData = 11,
    /// 12: referenceId not found (in ABIS).
    ReferenceIdNotFound = 12,
    /// 13: invalid version.
    InvalidVersion = 13,
    /// 14: invalid id.
    InvalidId = 14,
    /// 15: invalid requesttime format.
    InvalidRequesttimeFormat = 15,
    /// 16: invalid CBEFF format.
    InvalidCbeffFormat = 16,
    /// 17: data share URL has expired.
    DataShareUrlExpired = 17,
    /// 18: Biometric Quality check failed.
    QualityCheckFailed = 18,
}

impl FailureReason {
    /// The code as the message carries it (a string).
    pub fn code(self) -> String {
        (self as u8).to_string()
    }
}

/// The six operations, by their `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Identify,
    Delete,
    Ping,
    PendingJobs,
    ReferenceCount,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::Insert,
        Operation::Identify,
        Operation::Delete,
        Operation::Ping,
        Operation::PendingJobs,
        Operation::ReferenceCount,
    ];

    /// The message `id`.
    pub fn id(self) -> &'static str {
        match self {
            Operation::Insert => "mosip.abis.insert",
            Operation::Identify => "mosip.abis.identify",
            Operation::Delete => "mosip.abis.delete",
            Operation::Ping => "mosip.abis.ping",
            Operation::PendingJobs => "mosip.abis.pendingJobs",
            Operation::ReferenceCount => "mosip.abis.referenceCount",
        }
    }

    pub fn from_id(id: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|o| o.id() == id)
    }

    /// Whether it stores or removes something (its answer is remembered for redeliveries).
    pub fn is_write(self) -> bool {
        matches!(self, Operation::Insert | Operation::Delete)
    }
}

/// Identify's `flags` this ABIS understands; other flags are accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flags {
    pub max_results: Option<usize>,
    /// MOSIP's `targetFPIR`: round(−10·log10 FPIR).
    pub target_fpir: Option<u32>,
}

/// A request that passed the envelope checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub op: Operation,
    pub request_id: String,
    pub requesttime: String,
    /// `referenceId`, when present and not empty.
    pub reference_id: Option<String>,
    /// `referenceURL`, when present and not empty.
    pub reference_url: Option<String>,
    pub flags: Flags,
    /// `gallery.referenceIds[].referenceId` (Identify), when a gallery is given.
    pub gallery: Option<Vec<String>>,
}

/// A request refused by the envelope checks: what to answer with.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// The `id` to answer with: the request's, if it sent a string.
    pub id: String,
    /// The `requestId` to answer with, if one could be read.
    pub request_id: Option<String>,
    pub reason: FailureReason,
    /// Why, for the log (never biometric data).
    pub detail: String,
}

/// The largest accepted `gallery.referenceIds` list.
pub const MAX_GALLERY: usize = 100_000;

fn refuse(
    id: &str,
    request_id: Option<&str>,
    reason: FailureReason,
    detail: impl Into<String>,
) -> Refusal {
    Refusal {
        id: id.to_owned(),
        request_id: request_id.map(str::to_owned),
        reason,
        detail: detail.into(),
    }
}

/// A string field: `Ok(None)` when absent, null or empty; `Err` when of another type.
fn opt_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

/// A non-negative integer given as a string ("10") or a number (10).
fn flag_uint(v: &Value, key: &str) -> Result<u64, String> {
    match v {
        Value::String(s) => s.trim().parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| format!("flags.{key} must be a non-negative integer"))
}

/// Read and check a request body. Order of the checks: a JSON object (4), `id` (14),
/// `requestId` (6), `version` (13), `requesttime` (9, 15), then the operation's own fields
/// (`referenceId` 5, `referenceURL` 8 for Insert, flags and gallery 4).
pub fn parse(body: &[u8]) -> Result<Request, Refusal> {
    const UNKNOWN: &str = "mosip.abis.unknown";
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Err(refuse(
                UNKNOWN,
                recover_request_id(body).as_deref(),
                FailureReason::InvalidRequestStructure,
                format!("not JSON: {e}"),
            ))
        }
    };
    let Value::Object(o) = v else {
        return Err(refuse(
            UNKNOWN,
            None,
            FailureReason::InvalidRequestStructure,
            "not a JSON object",
        ));
    };
    let bad = |id: &str, rid: Option<&str>, detail: String| {
        refuse(id, rid, FailureReason::InvalidRequestStructure, detail)
    };
    // requestId first read leniently, so that every later refusal can name it.
    let request_id = match opt_str(&o, "requestId") {
        Ok(r) => r,
        Err(e) => return Err(bad(UNKNOWN, None, e)),
    };
    let id = match o.get("id") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err(refuse(UNKNOWN, request_id, FailureReason::InvalidId, "no `id` string")),
    };
    let Some(op) = Operation::from_id(id) else {
        return Err(refuse(id, request_id, FailureReason::InvalidId, "unknown `id`"));
    };
    let Some(request_id) = request_id else {
        return Err(refuse(id, None, FailureReason::MissingRequestId, "no `requestId`"));
    };
    let rid = Some(request_id);
    if request_id.len() > 256 {
        return Err(bad(id, None, "`requestId` is longer than 256 characters".into()));
    }
    match o.get("version") {
        Some(Value::String(s)) if s == MESSAGE_VERSION => {}
        _ => {
            return Err(refuse(
                id,
                rid,
                FailureReason::InvalidVersion,
                format!("`version` must be \"{MESSAGE_VERSION}\""),
            ))
        }
    }
    let requesttime = match opt_str(&o, "requesttime") {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(refuse(id, rid, FailureReason::MissingRequesttime, "no `requesttime`"))
        }
        Err(e) => return Err(refuse(id, rid, FailureReason::InvalidRequesttimeFormat, e)),
    };
    if parse_time(requesttime).is_none() {
        return Err(refuse(
            id,
            rid,
            FailureReason::InvalidRequesttimeFormat,
            "`requesttime` must be yyyy-MM-ddTHH:mm:ss.SSSZ (UTC)",
        ));
    }
    let reference_id = opt_str(&o, "referenceId").map_err(|e| bad(id, rid, e))?;
    let reference_url = opt_str(&o, "referenceURL").map_err(|e| bad(id, rid, e))?;
    if reference_id.is_some_and(|r| r.len() > 256) {
        return Err(bad(id, rid, "`referenceId` is longer than 256 characters".into()));
    }
    let mut flags = Flags::default();
    let mut gallery = None;
    match op {
        Operation::Insert => {
            if reference_id.is_none() {
                return Err(refuse(id, rid, FailureReason::MissingReferenceId, "no `referenceId`"));
            }
            if reference_url.is_none() {
                return Err(refuse(
                    id,
                    rid,
                    FailureReason::MissingReferenceUrl,
                    "no `referenceURL`",
                ));
            }
        }
        Operation::Delete => {
            if reference_id.is_none() {
                return Err(refuse(id, rid, FailureReason::MissingReferenceId, "no `referenceId`"));
            }
        }
        Operation::Identify => {
            if reference_id.is_none() && reference_url.is_none() {
                return Err(refuse(
                    id,
                    rid,
                    FailureReason::MissingReferenceId,
                    "neither `referenceId` nor `referenceURL`",
                ));
            }
            flags = parse_flags(o.get("flags")).map_err(|e| bad(id, rid, e))?;
            gallery = parse_gallery(o.get("gallery")).map_err(|e| bad(id, rid, e))?;
        }
        Operation::Ping | Operation::PendingJobs | Operation::ReferenceCount => {}
    }
    Ok(Request {
        op,
        request_id: request_id.to_owned(),
        requesttime: requesttime.to_owned(),
        reference_id: reference_id.map(str::to_owned),
        reference_url: reference_url.map(str::to_owned),
        flags,
        gallery,
    })
}

fn parse_flags(v: Option<&Value>) -> Result<Flags, String> {
    let mut f = Flags::default();
    let o = match v {
        None | Some(Value::Null) => return Ok(f),
        Some(Value::Object(o)) => o,
        Some(_) => return Err("`flags` must be an object".into()),
    };
    for (k, v) in o {
        // Flag names are case-insensitive in the wild (maxResults / MaxResults).
        match k.to_ascii_lowercase().as_str() {
            "maxresults" => {
                let n = flag_uint(v, "maxResults")?;
                if n == 0 || n > biomatch_gallery::MAX_RESULTS_LIMIT as u64 {
                    return Err(format!(
                        "flags.maxResults must be in 1..={}",
                        biomatch_gallery::MAX_RESULTS_LIMIT
                    ));
                }
                f.max_results = Some(n as usize);
            }
            "targetfpir" => {
                let n = flag_uint(v, "targetFPIR")?;
                // 0 would be an FPIR of 1; above 200 (1e-20) no calibration reaches.
                if !(1..=200).contains(&n) {
                    return Err("flags.targetFPIR must be in 1..=200".into());
                }
                f.target_fpir = Some(n as u32);
            }
            _ => {}
        }
    }
    Ok(f)
}

fn parse_gallery(v: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    let o = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err("`gallery` must be an object".into()),
    };
    let ids = match o.get("referenceIds") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("`gallery.referenceIds` must be an array".into()),
    };
    if ids.len() > MAX_GALLERY {
        return Err(format!("`gallery.referenceIds` lists more than {MAX_GALLERY} ids"));
    }
    ids.iter()
        .map(|e| match e.get("referenceId") {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err("each `gallery.referenceIds` entry needs a `referenceId` string".into()),
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// The `requestId` of a body that is not JSON, if it names one plainly
/// (`"requestId" : "…"`), so that its refusal can still be matched by MOSIP.
pub fn recover_request_id(body: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(body);
    let at = s.find("\"requestId\"")? + "\"requestId\"".len();
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    let id = &rest[..end];
    (!id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'))
        .then(|| id.to_owned())
}

/// A UTC timestamp `yyyy-MM-ddTHH:mm:ss[.f…]Z` → milliseconds since the Unix epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &s[19..s.len() - 1];
    let millis = if frac.is_empty() {
        0
    } else {
        let digits = frac.strip_prefix('.')?;
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        format!("{digits:0<3}")[..3].parse::<i64>().ok()?
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > days_in[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the Unix epoch → `yyyy-MM-ddTHH:mm:ss.SSSZ`.
pub fn format_time(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Now, as a `responsetime`.
pub fn now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    format_time(ms)
}

/// One modality's analytics of a candidate (`biometricType`: FIR fingers, FID face).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModalityOut {
    #[serde(rename = "biometricType")]
    pub biometric_type: String,
    pub analytics: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CandidateOut {
    #[serde(rename = "referenceId")]
    pub reference_id: String,
    pub analytics: Map<String, Value>,
    pub modalities: Vec<ModalityOut>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CandidateListOut {
    pub count: String,
    pub candidates: Vec<CandidateOut>,
    pub analytics: Map<String, Value>,
}

/// A response message. Optional fields are left out when not set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Response {
    pub id: String,
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub responsetime: String,
    #[serde(rename = "returnValue")]
    pub return_value: String,
    #[serde(rename = "failureReason", skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(rename = "candidateList", skip_serializing_if = "Option::is_none")]
    pub candidate_list: Option<CandidateListOut>,
    #[serde(rename = "jobscount", skip_serializing_if = "Option::is_none")]
    pub jobs_count: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<String>,
}

impl Response {
    /// `returnValue` "1".
    pub fn success(op: Operation, request_id: &str) -> Response {
        Response {
            id: op.id().to_owned(),
            request_id: Some(request_id.to_owned()),
            responsetime: now(),
            return_value: "1".into(),
            failure_reason: None,
            candidate_list: None,
            jobs_count: None,
            count: None,
        }
    }

    /// `returnValue` "2" with `failureReason`.
    pub fn failure(id: &str, request_id: Option<&str>, reason: FailureReason) -> Response {
        Response {
            id: id.to_owned(),
            request_id: request_id.map(str::to_owned),
            responsetime: now(),
            return_value: "2".into(),
            failure_reason: Some(reason.code()),
            candidate_list: None,
            jobs_count: None,
            count: None,
        }
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, maps of strings and numbers: serialising cannot fail.
        serde_json::to_string(self).expect("a response serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base(id: &str) -> Value {
        json!({"id": id, "version": "1.1", "requestId": "r-1",
               "requesttime": "2020-03-29T07:01:24.692Z"})
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }

    fn without(mut v: Value, k: &str) -> Value {
        v.as_object_mut().unwrap().remove(k);
        v
    }

    fn reason(v: &Value) -> FailureReason {
        parse(v.to_string().as_bytes()).unwrap_err().reason
    }

    #[test]
    fn the_specification_examples_parse() {
        let insert = with(
            with(base("mosip.abis.insert"), "referenceId", json!("ref-1")),
            "referenceURL",
            json!("http://127.0.0.1:1/x"),
        );
        let r = parse(insert.to_string().as_bytes()).unwrap();
        assert_eq!(r.op, Operation::Insert);
        assert_eq!((r.request_id.as_str(), r.reference_id.as_deref()), ("r-1", Some("ref-1")));
        let identify = json!({
            "id": "mosip.abis.identify", "version": "1.1", "requestId": "r-2",
            "requesttime": "2020-03-29T07:01:24.692Z", "referenceId": "ref-9",
            "referenceURL": "",
            "flags": {"maxResults": "10", "targetFPIR": "30", "flag1": "value1"},
            "gallery": {"referenceIds": [{"referenceId": "a"}, {"referenceId": "b"}]}
        });
        let r = parse(identify.to_string().as_bytes()).unwrap();
        assert_eq!(r.reference_url, None, "an empty referenceURL is no URL");
        assert_eq!(r.flags, Flags { max_results: Some(10), target_fpir: Some(30) });
        assert_eq!(r.gallery, Some(vec!["a".to_owned(), "b".to_owned()]));
        for op in [Operation::Ping, Operation::PendingJobs, Operation::ReferenceCount] {
            assert_eq!(parse(base(op.id()).to_string().as_bytes()).unwrap().op, op);
        }
        let delete = with(base("mosip.abis.delete"), "referenceId", json!("ref-1"));
        assert_eq!(parse(delete.to_string().as_bytes()).unwrap().op, Operation::Delete);
    }

    #[test]
    fn each_envelope_failure_has_its_reason() {
        use FailureReason as F;
        let ins = with(
            with(base("mosip.abis.insert"), "referenceId", json!("ref-1")),
            "referenceURL",
            json!("http://h/x"),
        );
        assert_eq!(reason(&with(ins.clone(), "id", json!("mosip.abis.nope"))), F::InvalidId);
        assert_eq!(reason(&without(ins.clone(), "id")), F::InvalidId);
        assert_eq!(reason(&without(ins.clone(), "requestId")), F::MissingRequestId);
        assert_eq!(reason(&with(ins.clone(), "requestId", json!(""))), F::MissingRequestId);
        assert_eq!(reason(&with(ins.clone(), "version", json!("1.0"))), F::InvalidVersion);
        assert_eq!(reason(&without(ins.clone(), "version")), F::InvalidVersion);
        assert_eq!(reason(&without(ins.clone(), "requesttime")), F::MissingRequesttime);
        for bad in ["2020-03-29 07:01:24", "2020-13-29T07:01:24.692Z", "29/03/2020", "x"] {
            assert_eq!(
                reason(&with(ins.clone(), "requesttime", json!(bad))),
                F::InvalidRequesttimeFormat,
                "{bad}"
            );
        }
        assert_eq!(reason(&without(ins.clone(), "referenceId")), F::MissingReferenceId);
        assert_eq!(reason(&without(ins.clone(), "referenceURL")), F::MissingReferenceUrl);
        assert_eq!(reason(&with(ins.clone(), "referenceURL", json!(""))), F::MissingReferenceUrl);
        assert_eq!(reason(&with(ins.clone(), "referenceId", json!(7))), F::InvalidRequestStructure);
        assert_eq!(reason(&base("mosip.abis.delete")), F::MissingReferenceId);
        assert_eq!(reason(&base("mosip.abis.identify")), F::MissingReferenceId);
        let idf = with(base("mosip.abis.identify"), "referenceId", json!("r"));
        for flags in [json!({"maxResults": "0"}), json!({"maxResults": "ten"}), json!([1])] {
            assert_eq!(
                reason(&with(idf.clone(), "flags", flags.clone())),
                F::InvalidRequestStructure,
                "{flags}"
            );
        }
        assert_eq!(
            reason(&with(idf.clone(), "gallery", json!({"referenceIds": [{"x": 1}]}))),
            F::InvalidRequestStructure
        );
        assert_eq!(reason(&json!([1, 2])), F::InvalidRequestStructure);
        // Refusals name the request when they can.
        let r = parse(with(ins, "version", json!("2")).to_string().as_bytes()).unwrap_err();
        assert_eq!((r.id.as_str(), r.request_id.as_deref()), ("mosip.abis.insert", Some("r-1")));
    }

    #[test]
    fn a_body_that_is_not_json_is_refused_with_its_request_id_if_readable() {
        let r = parse(br#"{"id": "mosip.abis.insert", "requestId" : "abc-1", oops"#).unwrap_err();
        assert_eq!(r.reason, FailureReason::InvalidRequestStructure);
        assert_eq!(r.request_id.as_deref(), Some("abc-1"));
        let r = parse(b"\xff\xfe garbage").unwrap_err();
        assert_eq!((r.reason, r.request_id), (FailureReason::InvalidRequestStructure, None));
    }

    #[test]
    fn times_round_trip_and_bad_dates_are_refused() {
        let ms = parse_time("2020-03-29T07:01:24.692Z").unwrap();
        assert_eq!(format_time(ms), "2020-03-29T07:01:24.692Z");
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2024-02-29T23:59:59.5Z").map(format_time).unwrap(),
            "2024-02-29T23:59:59.500Z"
        );
        assert_eq!(parse_time("2023-02-29T00:00:00.000Z"), None);
        assert_eq!(parse_time("2020-03-29T07:01:24.692"), None);
        assert_eq!(parse_time("2020-03-29T24:00:00.000Z"), None);
        assert!(now().ends_with('Z'));
    }

    #[test]
    fn responses_have_the_specified_shape() {
        let ok = Response::success(Operation::Insert, "r-1");
        let v: Value = serde_json::from_str(&ok.to_json()).unwrap();
        assert_eq!(v["id"], "mosip.abis.insert");
        assert_eq!(v["requestId"], "r-1");
        assert_eq!(v["returnValue"], "1");
        assert!(v.get("failureReason").is_none());
        assert!(parse_time(v["responsetime"].as_str().unwrap()).is_some());
        let no =
            Response::failure("mosip.abis.delete", Some("r-2"), FailureReason::ReferenceIdNotFound);
        let v: Value = serde_json::from_str(&no.to_json()).unwrap();
        assert_eq!(
            (v["returnValue"].as_str(), v["failureReason"].as_str()),
            (Some("2"), Some("12"))
        );
        let codes: Vec<String> = [
            FailureReason::InternalError,
            FailureReason::InvalidCbeffFormat,
            FailureReason::QualityCheckFailed,
        ]
        .iter()
        .map(|r| r.code())
        .collect();
        assert_eq!(codes, ["1", "16", "18"]);
    }
}
