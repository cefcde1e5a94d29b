//! The line format of the hash-chained audit log, and its MACs.
//!
//! A line is `<crc32 of the JSON, 8 lowercase hex> <JSON>\n`. The JSON is the record
//! ([`AuditRecord`]) with two leading fields that chain it: `n`, the record's position in the
//! chain (it continues across files), and `prev`, the [`link`] of the previous line (32 zero
//! digits before the first record ever). Changing, removing or reordering any line therefore
//! breaks the `prev` of the line after it; the CRC only tells a torn write from a complete one.
//! The MAC of a checkpoint is HMAC-SHA-256 under the audit key (see [`mac`]).

use super::AuditRecord;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "00000000000000000000000000000000";

/// The link of a line (its bytes without the newline): the first 16 bytes of its SHA-256, hex.
pub fn link(line: &[u8]) -> String {
    hex::encode(&Sha256::digest(line)[..16])
}

/// One line (with its newline) for the record whose JSON object is `json`, at chain position
/// `n` after a line whose link is `prev`.
pub fn format_line(n: u64, prev: &str, json: &[u8]) -> Vec<u8> {
    debug_assert!(json.first() == Some(&b'{') && json.len() >= 2);
    let head = format!("{{\"n\":{n},\"prev\":\"{prev}\"");
    let mut body = Vec::with_capacity(head.len() + json.len() + 1);
    body.extend_from_slice(head.as_bytes());
    if json.len() > 2 {
        body.push(b',');
    }
    body.extend_from_slice(&json[1..]);
    let crc = crc32fast::hash(&body);
    let mut line = Vec::with_capacity(body.len() + 10);
    line.extend_from_slice(format!("{crc:08x} ").as_bytes());
    line.extend_from_slice(&body);
    line.push(b'\n');
    line
}

/// A parsed line: the record and, for chained lines, its chain fields. Lines of logs written
/// before the chain existed have neither.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub prev: Option<String>,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Verify one line (without its newline) and decode it.
pub fn parse_line(body: &[u8]) -> Result<Entry, String> {
    if body.len() < 10 || body[8] != b' ' {
        return Err("not `<crc32 hex> <json>`".into());
    }
    let (hex, json) = (&body[..8], &body[9..]);
    if !hex.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
        return Err("CRC field is not 8 lowercase hex digits".into());
    }
    // The field is ASCII hex, so both conversions succeed.
    let stored = std::str::from_utf8(hex)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or("CRC field is not 8 lowercase hex digits")?;
    let actual = crc32fast::hash(json);
    if stored != actual {
        return Err(format!("CRC mismatch: stored {stored:08x}, computed {actual:08x}"));
    }
    serde_json::from_slice(json).map_err(|e| format!("CRC matches but JSON is invalid: {e}"))
}

/// HMAC-SHA-256 of `msg` under `key`, hex.
pub fn mac(key: &[u8], msg: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(msg.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// Constant-time check of a hex MAC.
pub fn mac_ok(key: &[u8], msg: &str, tag_hex: &str) -> bool {
    let Ok(tag) = hex::decode(tag_hex) else { return false };
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(msg.as_bytes());
    m.verify_slice(&tag).is_ok()
}

/// What a checkpoint record's MAC covers: the file it is in, its position and its link back.
pub fn checkpoint_message(file: u64, n: u64, prev: &str) -> String {
    format!("biomatch-audit-checkpoint:{file}:{n}:{prev}")
}

/// What the head file's MAC covers: the checkpoint it names and that checkpoint line's link.
pub fn head_message(file: u64, n: u64, line_link: &str) -> String {
    format!("biomatch-audit-head:{file}:{n}:{line_link}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_parses_back_with_its_chain_fields() {
        let rec = AuditRecord::now("k", "verify", "r1", vec!["s".into()], "match");
        let json = serde_json::to_vec(&rec).unwrap();
        let line = format_line(7, GENESIS, &json);
        let e = parse_line(&line[..line.len() - 1]).unwrap();
        assert_eq!((e.n, e.prev.as_deref()), (Some(7), Some(GENESIS)));
        assert_eq!(e.record, rec);
        assert_ne!(link(&line[..line.len() - 1]), link(&line[..line.len() - 2]));
    }

    #[test]
    fn macs_check_only_under_their_key_and_message() {
        let t = mac(b"key", "m");
        assert!(mac_ok(b"key", "m", &t));
        assert!(!mac_ok(b"other", "m", &t));
        assert!(!mac_ok(b"key", "m2", &t));
        assert!(!mac_ok(b"key", "m", "zz"));
    }
}
