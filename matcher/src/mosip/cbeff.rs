//! MOSIP's CBEFF XML (ISO/IEC 19785-3 patron format, `BIR` elements with `BDBInfo` and a
//! base64 `BDB`) and the biometric data blocks inside it, as far as this ABIS matches them:
//!
//! | BDB (recognised by its magic) | becomes |
//! |---|---|
//! | ISO/IEC 19794-2 (`FMR\0`) / ANSI 378 finger minutiae record | a minutiae finger (`fingerprint::iso`) |
//! | ISO/IEC 19794-4 (`FIR\0`) finger image record holding a JPEG or PNG | a finger image (mindtct) |
//! | ISO/IEC 19794-5 (`FAC\0`) face image record holding a JPEG | a face image (the face extractor) |
//! | a bare JPEG or PNG in a Finger or Face BIR | an image |
//! | WSQ / JPEG 2000 inside 19794-4/-5, iris (19794-6) | [`Content::Unsupported`]: skipped |
//!
//! Everything here is untrusted input: the XML parser refuses DTDs (no entity expansion), the
//! document, the number of BIRs and each BDB are bounded, and every length field is checked.

use base64::Engine as _;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::FingerPosition;
use biomatch_fingerprint::iso;

/// The most BIRs one document may hold (MOSIP sends ten fingers, two irises, a face, and
/// exception photos).
pub const MAX_BIRS: usize = 64;
/// The XML parser's node limit.
const MAX_NODES: u32 = 20_000;

/// What a document or one of its BIRs is wrong with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CbeffError {
    /// Not CBEFF as specified: bad XML, no `BIR` root, bad base64, a record that does not
    /// parse (failure reason 16).
    Malformed(String),
    /// A well-formed document without any biometric data block (failure reason 11).
    NoData,
}

impl std::fmt::Display for CbeffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CbeffError::Malformed(m) => write!(f, "invalid CBEFF: {m}"),
            CbeffError::NoData => f.write_str("the CBEFF holds no biometric data block"),
        }
    }
}

fn malformed(m: impl Into<String>) -> CbeffError {
    CbeffError::Malformed(m.into())
}

/// `BDBInfo/Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BioType {
    Finger,
    Face,
    Iris,
    Other,
}

/// One BIR with a data block.
#[derive(Clone, Debug, PartialEq)]
pub struct Bir {
    pub bio_type: BioType,
    /// `BDBInfo/Subtype` (e.g. "Right IndexFinger"), trimmed; may be empty.
    pub subtype: String,
    /// `BDBInfo/Format/Type`, if numeric.
    pub format_type: Option<u32>,
    pub data: Vec<u8>,
}

/// The BIRs of a CBEFF document that carry a data block, in document order. BIRs without a
/// `BDB` (MOSIP's exception entries, the outer container) are not listed.
pub fn parse(xml: &[u8]) -> Result<Vec<Bir>, CbeffError> {
    let text = std::str::from_utf8(xml).map_err(|_| malformed("the document is not UTF-8"))?;
    let opts = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES };
    let doc = roxmltree::Document::parse_with_options(text, opts)
        .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "BIR" {
        return Err(malformed(format!(
            "the root element is <{}>, not <BIR>",
            root.tag_name().name()
        )));
    }
    let mut out = Vec::new();
    for bir in root.descendants().filter(|n| n.is_element() && n.tag_name().name() == "BIR") {
        let Some(bdb) = child(bir, "BDB") else { continue };
        let b64: String = bdb.text().unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
        if b64.is_empty() {
            continue;
        }
        if out.len() == MAX_BIRS {
            return Err(malformed(format!("more than {MAX_BIRS} BIRs")));
        }
        let data = decode_base64(&b64).ok_or_else(|| malformed("a BDB is not valid base64"))?;
        let info =
            child(bir, "BDBInfo").ok_or_else(|| malformed("a BIR has a BDB but no BDBInfo"))?;
        let ty = child(info, "Type").and_then(|t| t.text()).unwrap_or("").trim().to_owned();
        // `Type` may list several types; the first decides.
        let bio_type = match ty.split_whitespace().next().unwrap_or("") {
            "Finger" => BioType::Finger,
            "Face" => BioType::Face,
            "Iris" => BioType::Iris,
            "" => return Err(malformed("a BIR's BDBInfo has no Type")),
            _ => BioType::Other,
        };
        let subtype = child(info, "Subtype").and_then(|t| t.text()).unwrap_or("").trim().to_owned();
        let format_type = child(info, "Format")
            .and_then(|f| child(f, "Type"))
            .and_then(|t| t.text())
            .and_then(|t| t.trim().parse().ok());
        out.push(Bir { bio_type, subtype, format_type, data });
    }
    if out.is_empty() {
        return Err(CbeffError::NoData);
    }
    Ok(out)
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Standard or URL-safe base64, padded or not (MOSIP uses both).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s.as_bytes()).ok())
        .filter(|d| !d.is_empty())
}

/// The ISO finger position of a MOSIP subtype ("Right IndexFinger", "Left Thumb", …).
pub fn finger_position(subtype: &str) -> Option<FingerPosition> {
    let words: Vec<String> = subtype.split_whitespace().map(str::to_ascii_lowercase).collect();
    let (side, finger) = match words.as_slice() {
        [side, finger] => (side.as_str(), finger.as_str()),
        [side, finger, f] if f == "finger" => (side.as_str(), finger.as_str()),
        _ => return None,
    };
    let finger = finger.strip_suffix("finger").unwrap_or(finger);
    let n = match finger {
        "thumb" => 1,
        "index" => 2,
        "middle" => 3,
        "ring" => 4,
        "little" => 5,
        _ => return None,
    };
    let code = match side {
        "right" => n,
        "left" => n + 5,
        _ => return None,
    };
    FingerPosition::new(code).ok()
}

/// What a BIR's data block is, for this ABIS.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Minutiae(FingerTemplate),
    FingerImage {
        position: FingerPosition,
        image: Vec<u8>,
    },
    FaceImage(Vec<u8>),
    /// Recognised but not matched here (iris, WSQ, JPEG 2000, other types): skipped.
    Unsupported(&'static str),
}

fn is_jpeg(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8, 0xFF])
}

fn is_png(b: &[u8]) -> bool {
    b.starts_with(b"\x89PNG\r\n\x1a\n")
}

fn is_jpeg2000(b: &[u8]) -> bool {
    b.starts_with(&[0x00, 0x00, 0x00, 0x0C, b'j', b'P']) || b.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
}

/// Decode one BIR's data block.
pub fn decode(bir: &Bir) -> Result<Content, CbeffError> {
    let d = &bir.data;
    match bir.bio_type {
        BioType::Iris => Ok(Content::Unsupported("iris")),
        BioType::Other => Ok(Content::Unsupported("a biometric type other than finger and face")),
        BioType::Finger => {
            let named = finger_position(&bir.subtype);
            if d.starts_with(b"FMR\0") {
                let (_, mut t) = iso::parse_record(d)
                    .map_err(|e| malformed(format!("finger minutiae record: {e}")))?;
                match (named, t.position) {
                    (Some(p), Some(q)) if p != q => {
                        return Err(malformed(format!(
                            "the BIR's Subtype names finger {} but its record finger {}",
                            p.code(),
                            q.code()
                        )))
                    }
                    (Some(p), _) => t.position = Some(p),
                    (None, Some(_)) => {}
                    (None, None) => {
                        return Err(malformed("a finger BIR without a Subtype or record position"))
                    }
                }
                return Ok(Content::Minutiae(t));
            }
            let (image, from_record) = if d.starts_with(b"FIR\0") {
                let (img, pos) = iso19794_4_image(d)?;
                (img, pos)
            } else {
                (d.clone(), None)
            };
            if is_jpeg2000(&image) {
                return Ok(Content::Unsupported("JPEG 2000 finger images"));
            }
            if image.starts_with(&[0xFF, 0xA0]) {
                return Ok(Content::Unsupported("WSQ finger images"));
            }
            if !is_jpeg(&image) && !is_png(&image) {
                return Err(malformed("a finger BDB is neither a minutiae record nor an image"));
            }
            let position = named
                .or(from_record)
                .ok_or_else(|| malformed("a finger image BIR without a Subtype"))?;
            Ok(Content::FingerImage { position, image })
        }
        BioType::Face => {
            let image = if d.starts_with(b"FAC\0") { iso19794_5_image(d)? } else { d.clone() };
            if is_jpeg2000(&image) {
                return Ok(Content::Unsupported("JPEG 2000 face images"));
            }
            if !is_jpeg(&image) && !is_png(&image) {
                return Err(malformed("a face BDB is neither a face image record nor an image"));
            }
            Ok(Content::FaceImage(image))
        }
    }
}

fn be(b: &[u8], at: usize, n: usize) -> Result<u64, CbeffError> {
    let s = b.get(at..at + n).ok_or_else(|| malformed("a record is cut short"))?;
    Ok(s.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
}

/// The first image of an ISO/IEC 19794-4:2005 finger image record, and its finger position.
///
/// Layout: general header of 32 bytes (`FIR\0`, version, 6-byte record length, …, byte 29:
/// compression), then per image a 14-byte header (4-byte length of the block including that
/// header, position, view count, view number, quality, impression, width, height, reserved)
/// and the image data.
fn iso19794_4_image(d: &[u8]) -> Result<(Vec<u8>, Option<FingerPosition>), CbeffError> {
    const GENERAL: usize = 32;
    const IMAGE: usize = 14;
    let record_len = be(d, 8, 6)? as usize;
    if record_len > d.len() || record_len < GENERAL + IMAGE {
        return Err(malformed("finger image record: bad record length"));
    }
    if be(d, 18, 1)? == 0 {
        return Err(malformed("finger image record: no finger image"));
    }
    let block_len = be(d, GENERAL, 4)? as usize;
    if block_len <= IMAGE || GENERAL + block_len > record_len {
        return Err(malformed("finger image record: bad image block length"));
    }
    let pos = FingerPosition::new(be(d, GENERAL + 4, 1)? as u8).ok();
    Ok((d[GENERAL + IMAGE..GENERAL + block_len].to_vec(), pos))
}

/// The first image of an ISO/IEC 19794-5:2005 face image record.
///
/// Layout: 14-byte header (`FAC\0`, version, 4-byte record length, 2-byte image count), then
/// per image: 4-byte block length, 2-byte feature point count, 14 more bytes of facial
/// information, 8 bytes per feature point, 12 bytes of image information, the image data.
fn iso19794_5_image(d: &[u8]) -> Result<Vec<u8>, CbeffError> {
    const HEADER: usize = 14;
    let record_len = be(d, 8, 4)? as usize;
    if record_len > d.len() || record_len < HEADER + 20 + 12 {
        return Err(malformed("face image record: bad record length"));
    }
    if be(d, 12, 2)? == 0 {
        return Err(malformed("face image record: no face image"));
    }
    let block_len = be(d, HEADER, 4)? as usize;
    let points = be(d, HEADER + 4, 2)? as usize;
    let start = HEADER + 20 + points * 8 + 12;
    if HEADER + block_len > record_len || start >= HEADER + block_len {
        return Err(malformed("face image record: bad image block length"));
    }
    Ok(d[start..HEADER + block_len].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "http://standards.iso.org/iso-iec/19785/-3/ed-2/";

    fn b64(d: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(d)
    }

    fn bir_xml(ty: &str, subtype: &str, format: u32, bdb: &str) -> String {
        format!(
            "<BIR><Version><Major>1</Major><Minor>1</Minor></Version><BIRInfo><Integrity>false\
             </Integrity></BIRInfo><BDBInfo><Format><Organization>Mosip</Organization><Type>\
             {format}</Type></Format><Type>{ty}</Type><Subtype>{subtype}</Subtype><Level>Raw\
             </Level><Purpose>Enroll</Purpose></BDBInfo><BDB>{bdb}</BDB></BIR>"
        )
    }

    fn doc(birs: &[String]) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<BIR xmlns=\"{NS}\"><BIRInfo><Integrity>\
             false</Integrity></BIRInfo>{}</BIR>",
            birs.concat()
        )
    }

    fn minutiae(seed: u64, pos: u8) -> Vec<u8> {
        iso::to_iso(&biomatch_testkit::fingers::finger_template(seed, pos, 30))
    }

    #[test]
    fn a_valid_document_yields_its_birs() {
        let xml = doc(&[
            bir_xml("Finger", "Right IndexFinger", 2, &b64(&minutiae(1, 2))),
            bir_xml("Finger", "Left Thumb", 2, &b64(&minutiae(2, 6))),
            bir_xml("Iris", "Left", 9, &b64(b"IIR\0whatever")),
            // An exception entry: no data block.
            "<BIR><BDBInfo><Type>Finger</Type><Subtype>Left LittleFinger</Subtype></BDBInfo></BIR>"
                .to_owned(),
        ]);
        let birs = parse(xml.as_bytes()).unwrap();
        assert_eq!(birs.len(), 3);
        assert_eq!((birs[0].bio_type, birs[0].format_type), (BioType::Finger, Some(2)));
        assert_eq!(birs[1].subtype, "Left Thumb");
        let c: Vec<Content> = birs.iter().map(|b| decode(b).unwrap()).collect();
        let Content::Minutiae(t) = &c[0] else { panic!("minutiae expected: {:?}", c[0]) };
        assert_eq!(t.position, FingerPosition::new(2).ok());
        assert_eq!(t.minutiae.len(), 30);
        let Content::Minutiae(t) = &c[1] else { panic!("minutiae expected") };
        assert_eq!(t.position, FingerPosition::new(6).ok());
        assert_eq!(c[2], Content::Unsupported("iris"));
    }

    #[test]
    fn malformed_documents_are_refused_as_such() {
        let cases: Vec<(String, &str)> = vec![
            ("<BIR><BIR>".into(), "not well-formed"),
            ("not xml at all".into(), "not well-formed"),
            ("<Other><BIR/></Other>".into(), "root element"),
            (doc(&[bir_xml("Finger", "Right Thumb", 2, "@@not base64@@")]), "base64"),
            ("<!DOCTYPE BIR [<!ENTITY x \"y\">]><BIR>&x;</BIR>".into(), "not well-formed"),
            ("<BIR><BIR><BDB>AAAA</BDB></BIR></BIR>".into(), "no BDBInfo"),
        ];
        for (xml, want) in cases {
            match parse(xml.as_bytes()) {
                Err(CbeffError::Malformed(m)) => assert!(m.contains(want), "{m} / {want}"),
                other => panic!("{xml}: {other:?}"),
            }
        }
        assert!(matches!(parse(b"\xff\xfe<BIR/>"), Err(CbeffError::Malformed(_))));
    }

    #[test]
    fn a_document_without_data_blocks_has_no_data() {
        assert_eq!(parse(doc(&[]).as_bytes()), Err(CbeffError::NoData));
        let empty = bir_xml("Finger", "Right Thumb", 2, "");
        assert_eq!(parse(doc(&[empty]).as_bytes()), Err(CbeffError::NoData));
    }

    #[test]
    fn data_blocks_are_checked() {
        let bir = |ty: BioType, sub: &str, data: Vec<u8>| Bir {
            bio_type: ty,
            subtype: sub.into(),
            format_type: None,
            data,
        };
        // A minutiae record cut short, or naming another finger than its BIR.
        let mut cut = minutiae(3, 2);
        cut.truncate(20);
        assert!(matches!(
            decode(&bir(BioType::Finger, "Right IndexFinger", cut)),
            Err(CbeffError::Malformed(_))
        ));
        assert!(matches!(
            decode(&bir(BioType::Finger, "Left Thumb", minutiae(3, 2))),
            Err(CbeffError::Malformed(m)) if m.contains("Subtype")
        ));
        // Unknown bytes in a finger or face BIR.
        assert!(matches!(
            decode(&bir(BioType::Finger, "Right Thumb", b"hello".to_vec())),
            Err(CbeffError::Malformed(_))
        ));
        assert!(matches!(
            decode(&bir(BioType::Face, "", b"hello".to_vec())),
            Err(CbeffError::Malformed(_))
        ));
        // Formats recognised but not matched here.
        let wsq = [0xFF, 0xA0, 0xFF, 0xA8].to_vec();
        assert_eq!(
            decode(&bir(BioType::Finger, "Right Thumb", wsq)).unwrap(),
            Content::Unsupported("WSQ finger images")
        );
        let j2k = [0x00, 0x00, 0x00, 0x0C, b'j', b'P', b' ', b' '].to_vec();
        assert!(matches!(decode(&bir(BioType::Face, "", j2k)).unwrap(), Content::Unsupported(_)));
        // A bare JPEG in a face BIR; a PNG in a finger BIR needs its position.
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3].to_vec();
        assert_eq!(
            decode(&bir(BioType::Face, "", jpeg.clone())).unwrap(),
            Content::FaceImage(jpeg.clone())
        );
        assert!(matches!(decode(&bir(BioType::Finger, "", jpeg)), Err(CbeffError::Malformed(_))));
    }

    #[test]
    fn iso_image_records_are_unwrapped() {
        let jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 9, 9, 9, 9];
        // 19794-4: 32-byte general header + 14-byte image header + data.
        let total = 32 + 14 + jpeg.len();
        let mut fir = b"FIR\x00010\x00".to_vec();
        fir.extend_from_slice(&(total as u64).to_be_bytes()[2..]);
        fir.extend_from_slice(&[0, 0, 0, 0, 1, 1]); // device, level, fingers = 1, scale
        fir.extend_from_slice(&[0; 8]); // resolutions
        fir.extend_from_slice(&[8, 3, 0, 0]); // depth, compression = JPEG, reserved
        assert_eq!(fir.len(), 32);
        fir.extend_from_slice(&((14 + jpeg.len()) as u32).to_be_bytes());
        fir.extend_from_slice(&[7, 1, 1, 80, 0, 1, 0x90, 1, 0xF4, 0]);
        fir.extend_from_slice(&jpeg);
        let b = Bir {
            bio_type: BioType::Finger,
            subtype: String::new(),
            format_type: Some(7),
            data: fir.clone(),
        };
        assert_eq!(
            decode(&b).unwrap(),
            Content::FingerImage { position: FingerPosition::new(7).unwrap(), image: jpeg.clone() }
        );
        let mut short = fir;
        short.truncate(40);
        let b = Bir { data: short, ..b };
        assert!(matches!(decode(&b), Err(CbeffError::Malformed(_))));
        // 19794-5: 14-byte header, 20 bytes of facial information (no feature points),
        // 12 bytes of image information, data.
        let block = 20 + 12 + jpeg.len();
        let mut fac = b"FAC\x00010\x00".to_vec();
        fac.extend_from_slice(&((14 + block) as u32).to_be_bytes());
        fac.extend_from_slice(&1u16.to_be_bytes());
        fac.extend_from_slice(&(block as u32).to_be_bytes());
        fac.extend_from_slice(&[0; 16]);
        fac.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        fac.extend_from_slice(&jpeg);
        let b = Bir {
            bio_type: BioType::Face,
            subtype: String::new(),
            format_type: Some(8),
            data: fac,
        };
        assert_eq!(decode(&b).unwrap(), Content::FaceImage(jpeg));
    }

    #[test]
    fn subtypes_name_iso_positions() {
        let p = |s: &str| finger_position(s).map(FingerPosition::code);
        assert_eq!(p("Right Thumb"), Some(1));
        assert_eq!(p("Right IndexFinger"), Some(2));
        assert_eq!(p("Right LittleFinger"), Some(5));
        assert_eq!(p("Left Thumb"), Some(6));
        assert_eq!(p("Left RingFinger"), Some(9));
        assert_eq!(p("left little finger"), Some(10));
        assert_eq!(p("UNKNOWN"), None);
        assert_eq!(p(""), None);
    }
}
