//! Fetching a `referenceURL`: one HTTP GET with a deadline and a size cap (hyper's client).
//! MOSIP's data share answers functional failures with status 200 and a JSON `errors` list;
//! "Data share usage expired" is failure reason 17, any other failure reason 7.
//!
//! Plain `http://` only: a production data share behind HTTPS needs a TLS-terminating proxy on
//! the ABIS side (see docs/mosip-abis.md).

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Why a fetch failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// Unreachable, refused, timed out, not 2xx, too large, an unsupported URL, or a data share
    /// error (failure reason 7). The text is for the log (no biometric data).
    Unavailable(String),
    /// The data share says its link has expired (failure reason 17).
    Expired,
}

/// GET `url` within `timeout`, at most `max_bytes` of body.
pub async fn fetch(url: &str, timeout: Duration, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    let uri: hyper::Uri =
        url.parse().map_err(|_| FetchError::Unavailable("the referenceURL is not a URL".into()))?;
    if uri.scheme_str() != Some("http") {
        return Err(FetchError::Unavailable(format!(
            "unsupported scheme {:?} (plain http only)",
            uri.scheme_str().unwrap_or("")
        )));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let work = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|e| FetchError::Unavailable(format!("GET failed: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Unavailable(format!("the data share answered {status}")));
        }
        let body = Limited::new(resp.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| FetchError::Unavailable(format!("reading the body failed: {e}")))?
            .to_bytes();
        Ok(body.to_vec())
    };
    let body = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Unavailable(format!("no answer within {timeout:?}")))??;
    if let Some(e) = data_share_error(&body) {
        return Err(e);
    }
    Ok(body)
}

/// A data share error answer (`{"errors": [{"errorCode": …, "message": …}]}`), if `body` is one.
pub fn data_share_error(body: &[u8]) -> Option<FetchError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    let e = errors.first()?;
    let code = e.get("errorCode").and_then(|c| c.as_str()).unwrap_or("");
    let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
    if message.to_ascii_lowercase().contains("expired") {
        return Some(FetchError::Expired);
    }
    Some(FetchError::Unavailable(format!(
        "the data share answered {}: {}",
        code.chars().take(32).collect::<String>(),
        message.chars().take(120).collect::<String>()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_share_errors_are_recognised() {
        let expired = br#"{"id":null,"errors":[{"errorCode":"DAT-SER-006","message":"Data share usage expired"}]}"#;
        assert_eq!(data_share_error(expired), Some(FetchError::Expired));
        let missing = br#"{"errors":[{"errorCode":"DAT-SER-003","message":"File does not exists or File is empty"}]}"#;
        assert!(
            matches!(data_share_error(missing), Some(FetchError::Unavailable(m)) if m.contains("DAT-SER-003"))
        );
        assert_eq!(data_share_error(b"<?xml version=\"1.0\"?><BIR/>"), None);
        assert_eq!(data_share_error(br#"{"errors": null}"#), None);
    }

    #[tokio::test]
    async fn unreachable_and_unsupported_urls_fail_cleanly() {
        // A port nothing listens on: bind, read the port, close.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = Duration::from_secs(5);
        let url = format!("http://127.0.0.1:{port}/x");
        assert!(matches!(fetch(&url, t, 1024).await, Err(FetchError::Unavailable(_))));
        assert!(
            matches!(fetch("https://example.invalid/x", t, 1024).await, Err(FetchError::Unavailable(m)) if m.contains("scheme"))
        );
        assert!(matches!(fetch("not a url", t, 1024).await, Err(FetchError::Unavailable(_))));
    }
}
