//! ISO/IEC 19794-2:2005 and ANSI/INCITS 378-2004 finger minutiae records: strict parsing and
//! writing of the interchange formats into and out of [`FingerTemplate`].
//!
//! Pure byte-slice code, no I/O. Every input is untrusted: each field is bounds-checked before it
//! is read, every count is checked against the bytes that remain before anything is allocated for
//! it, and every malformation is an [`IsoError`] carrying offsets and counts (minutia coordinates
//! at most, never angles or qualities).
//!
//! # Layout (all integers big-endian)
//!
//! | Bytes | ISO/IEC 19794-2:2005 header        | ANSI/INCITS 378-2004 header                    |
//! |-------|------------------------------------|------------------------------------------------|
//! | 4     | `"FMR\0"`                          | `"FMR\0"`                                      |
//! | 4     | `" 20\0"`                          | `" 20\0"`                                      |
//! | 4     | record length                      | 2: record length, or 0 then 4: record length   |
//! |       |                                    | 4: CBEFF product identifier                    |
//! | 2     | capture equipment (4 + 12 bits)    | capture equipment (4 + 12 bits)                |
//! | 2 + 2 | image width, height (pixels)       | image width, height (pixels)                   |
//! | 2 + 2 | resolution x, y (pixels/cm)        | resolution x, y (pixels/cm)                    |
//! | 1 + 1 | number of finger views, reserved   | number of finger views, reserved               |
//!
//! The header is 24 bytes (ISO) or 26 / 30 bytes (ANSI). Each finger view then holds: finger
//! position (1), view number (4 bits) + impression type (4 bits), finger quality (1), number of
//! minutiae (1); 6 bytes per minutia: type (2 bits: 0 other, 1 ridge ending, 2 bifurcation,
//! 3 reserved) + x (14 bits), reserved (2 bits) + y (14 bits), angle (1), quality (1); and an
//! extended data block: its length (2) and that many bytes, which this module skips.
//!
//! The two formats differ in one more place: the minutia angle is in units of 360/256° (0..=255)
//! in ISO and of 2° (0..=179) in ANSI. [`FingerTemplate`] keeps ISO units, so ANSI angles are
//! converted both ways ([`ansi_angle_to_iso`], [`iso_angle_to_ansi`]) and writing a template to
//! ANSI rounds its angles to the nearest 2°: `parse_ansi378(&to_ansi378(t))` equals `t` exactly
//! only when `t`'s angles are already on that grid (as every template read from ANSI is);
//! otherwise each angle moves by at most half an ANSI unit (1°).
//!
//! What [`FingerTemplate`] cannot hold is dropped on reading and written as zero: capture
//! equipment, CBEFF product identifier, view number, impression type, the reserved bits, and the
//! extended data. The finger position codes 1..=10 map to [`FingerPosition`], 0 (unknown) to
//! `None`; other codes are refused. Horizontal and vertical resolutions must be equal.
//!
//! Both formats start with the same eight bytes; [`parse_record`] tells them apart by which length
//! field matches the record's actual length. The two cannot both match (an ISO length read as
//! ANSI's would be its upper half or point past the capture-equipment field), so detection is
//! unambiguous for well-formed records and refuses anything else.

use biomatch_core::finger::{FingerError, FingerTemplate, Minutia, MinutiaKind, MAX_IMAGE_SIDE};
use biomatch_core::FingerPosition;
use std::fmt;
use std::ops::RangeInclusive;
use thiserror::Error;

/// First four bytes of both formats.
pub const MAGIC: [u8; 4] = *b"FMR\0";
/// Version field of ISO/IEC 19794-2:2005 and ANSI/INCITS 378-2004 (the only version read).
pub const VERSION_2005: [u8; 4] = *b" 20\0";
/// Accepted resolutions, pixels per centimetre (same bounds as [`FingerTemplate::validate`]).
pub const RESOLUTION_RANGE: RangeInclusive<u16> = 50..=2000;
/// Largest finger position code read (FingerPosition 1..=10; 0 means unknown).
pub const MAX_FINGER_POSITION: u8 = 10;

const ISO_HEADER_LEN: usize = 24;
const ANSI_HEADER_LEN: usize = 26;
const ANSI_LONG_HEADER_LEN: usize = 30;
const VIEW_HEADER_LEN: usize = 4;
const MINUTIA_LEN: usize = 6;
const EXT_LENGTH_LEN: usize = 2;
/// The smallest finger view: its header and an empty extended data block.
const MIN_VIEW_LEN: usize = VIEW_HEADER_LEN + EXT_LENGTH_LEN;
const COORD_MASK: u16 = 0x3fff;
const ANSI_ANGLE_STEPS: u8 = 180;

/// Which of the two record formats a byte string is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordFormat {
    /// ISO/IEC 19794-2:2005.
    Iso19794_2_2005,
    /// ANSI/INCITS 378-2004.
    Ansi378_2004,
}

impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordFormat::Iso19794_2_2005 => "ISO/IEC 19794-2:2005",
            RecordFormat::Ansi378_2004 => "ANSI/INCITS 378-2004",
        })
    }
}

/// The part of a record a [`IsoError::Truncated`] ran out of bytes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    Header,
    ViewHeader,
    Minutiae,
    ExtendedDataLength,
    ExtendedData,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Header => "record header",
            Section::ViewHeader => "finger view header",
            Section::Minutiae => "minutiae",
            Section::ExtendedDataLength => "extended data length",
            Section::ExtendedData => "extended data block",
        })
    }
}

/// A finger minutiae record that cannot be parsed. Offsets are byte offsets from the start of the
/// record; `view` and `index` count from 0.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IsoError {
    #[error("{section} truncated at byte {offset}: {needed} bytes needed, {available} left")]
    Truncated { section: Section, offset: usize, needed: usize, available: usize },
    #[error("not a finger minutiae record: the magic bytes are not \"FMR\\0\"")]
    BadMagic,
    #[error("unsupported record version {found:?}; only \" 20\\0\" (2004/2005) is read")]
    UnsupportedVersion { found: [u8; 4] },
    #[error("{format} record length field says {declared} bytes but the record has {actual}")]
    LengthMismatch { format: RecordFormat, declared: u64, actual: usize },
    #[error("record of {actual} bytes: neither the ISO nor the ANSI length field matches it")]
    UnknownFormat { actual: usize },
    #[error("record holds no finger view")]
    NoViews,
    #[error("record declares {views} finger views but only {available} bytes follow the header")]
    TooManyViews { views: u8, available: usize },
    #[error("image size {width}x{height} is outside 1..={max} pixels per side")]
    BadImageSize { width: u16, height: u16, max: u16 },
    #[error("horizontal resolution {x} and vertical resolution {y} pixels/cm differ")]
    AnisotropicResolution { x: u16, y: u16 },
    #[error("resolution {0} pixels/cm is outside 50..=2000")]
    BadResolution(u16),
    #[error("finger view {view}: finger position code {code} at byte {offset} is above 10")]
    BadFingerPosition { view: usize, offset: usize, code: u8 },
    #[error("finger view {view}: finger quality {quality} at byte {offset} is above 100")]
    BadFingerQuality { view: usize, offset: usize, quality: u8 },
    #[error(
        "finger view {view}: {count} minutiae declared at byte {offset} need {needed} bytes, \
         {available} left"
    )]
    MinutiaeDoNotFit { view: usize, count: u8, offset: usize, needed: usize, available: usize },
    #[error("finger view {view}, minutia {index} at byte {offset}: reserved minutia type 3")]
    BadMinutiaType { view: usize, index: usize, offset: usize },
    #[error("finger view {view}, minutia {index} at byte {offset}: angle above 179 (ANSI units)")]
    BadMinutiaAngle { view: usize, index: usize, offset: usize },
    #[error("finger view {view}, minutia {index} at byte {offset}: quality above 100")]
    BadMinutiaQuality { view: usize, index: usize, offset: usize },
    #[error(
        "finger view {view}, minutia {index} at ({x}, {y}) lies outside the {width}x{height} image"
    )]
    MinutiaOutOfRange { view: usize, index: usize, x: u16, y: u16, width: u16, height: u16 },
    #[error("{count} trailing bytes after the last finger view, at byte {offset}")]
    TrailingBytes { offset: usize, count: usize },
    /// A parsed view broke a [`FingerTemplate`] invariant the field checks above did not catch (a
    /// bug in this module if it ever happens).
    #[error("finger view {view} breaks a finger template invariant")]
    Invalid {
        view: usize,
        #[source]
        source: Box<FingerError>,
    },
}

/// Reads the first finger view of an ISO/IEC 19794-2:2005 record (all views are checked).
pub fn parse_iso(bytes: &[u8]) -> Result<FingerTemplate, IsoError> {
    first_view(parse_iso_views(bytes)?)
}

/// Reads every finger view of an ISO/IEC 19794-2:2005 record, in record order.
pub fn parse_iso_views(bytes: &[u8]) -> Result<Vec<FingerTemplate>, IsoError> {
    check_prefix(bytes)?;
    check_header_len(bytes, ISO_HEADER_LEN)?;
    let mut r = Reader { bytes, pos: MAGIC.len() + VERSION_2005.len() };
    let declared = u64::from(r.u32(Section::Header)?);
    check_length(RecordFormat::Iso19794_2_2005, declared, bytes.len())?;
    parse_body(&mut r, RecordFormat::Iso19794_2_2005)
}

/// Reads the first finger view of an ANSI/INCITS 378-2004 record (all views are checked).
pub fn parse_ansi378(bytes: &[u8]) -> Result<FingerTemplate, IsoError> {
    first_view(parse_ansi378_views(bytes)?)
}

/// Reads every finger view of an ANSI/INCITS 378-2004 record, in record order.
pub fn parse_ansi378_views(bytes: &[u8]) -> Result<Vec<FingerTemplate>, IsoError> {
    check_prefix(bytes)?;
    check_header_len(bytes, ANSI_HEADER_LEN)?;
    let mut r = Reader { bytes, pos: MAGIC.len() + VERSION_2005.len() };
    let short = r.u16(Section::Header)?;
    let declared = if short == 0 {
        check_header_len(bytes, ANSI_LONG_HEADER_LEN)?;
        u64::from(r.u32(Section::Header)?)
    } else {
        u64::from(short)
    };
    check_length(RecordFormat::Ansi378_2004, declared, bytes.len())?;
    let _cbeff_product_id = r.u32(Section::Header)?;
    parse_body(&mut r, RecordFormat::Ansi378_2004)
}

/// Tells ISO from ANSI by the length fields: ISO when the 4-byte field at offset 8 equals the
/// record's length; ANSI when the 2-byte field there does, or is 0 and the 4-byte field after it
/// does. Checks only the prefix, the version and the lengths.
pub fn detect_format(bytes: &[u8]) -> Result<RecordFormat, IsoError> {
    check_prefix(bytes)?;
    check_header_len(bytes, ISO_HEADER_LEN)?;
    let actual = bytes.len() as u64;
    let r = |pos| Reader { bytes, pos };
    if r(8).u32(Section::Header).is_ok_and(|l| u64::from(l) == actual) {
        return Ok(RecordFormat::Iso19794_2_2005);
    }
    match r(8).u16(Section::Header) {
        Ok(0) if r(10).u32(Section::Header).is_ok_and(|l| u64::from(l) == actual) => {
            Ok(RecordFormat::Ansi378_2004)
        }
        Ok(l) if l != 0 && u64::from(l) == actual => Ok(RecordFormat::Ansi378_2004),
        _ => Err(IsoError::UnknownFormat { actual: bytes.len() }),
    }
}

/// Reads the first finger view of a record in either format, detected by [`detect_format`].
pub fn parse_record(bytes: &[u8]) -> Result<(RecordFormat, FingerTemplate), IsoError> {
    let format = detect_format(bytes)?;
    let template = match format {
        RecordFormat::Iso19794_2_2005 => parse_iso(bytes)?,
        RecordFormat::Ansi378_2004 => parse_ansi378(bytes)?,
    };
    Ok((format, template))
}

/// Writes `t` as an ISO/IEC 19794-2:2005 record with one finger view and no extended data.
///
/// `t` must be valid ([`FingerTemplate::validate`]); an invalid one is written with each field
/// masked to its width (at most 255 minutiae, 14-bit coordinates) and may not parse back.
pub fn to_iso(t: &FingerTemplate) -> Vec<u8> {
    // Magic, version and the 4-byte length precede the body.
    let total = 12 + body_len(t);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION_2005);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    write_body(&mut out, t, RecordFormat::Iso19794_2_2005);
    debug_assert_eq!(out.len(), total);
    out
}

/// Writes `t` as an ANSI/INCITS 378-2004 record with one finger view, no extended data and a zero
/// CBEFF product identifier. Angles are rounded to the nearest 2° (see the module docs).
///
/// `t` must be valid, as for [`to_iso`].
pub fn to_ansi378(t: &FingerTemplate) -> Vec<u8> {
    // Magic, version, the 2-byte (or 6-byte) length and the product id precede the body.
    let short_total = 14 + body_len(t);
    let mut out = Vec::with_capacity(short_total + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION_2005);
    match u16::try_from(short_total) {
        Ok(short) => out.extend_from_slice(&short.to_be_bytes()),
        Err(_) => {
            // Unreachable with at most 255 minutiae, but this is how the format spells it.
            let long = short_total + 4;
            out.extend_from_slice(&0u16.to_be_bytes());
            out.extend_from_slice(&u32::try_from(long).unwrap_or(u32::MAX).to_be_bytes());
        }
    }
    out.extend_from_slice(&0u32.to_be_bytes()); // CBEFF product identifier
    write_body(&mut out, t, RecordFormat::Ansi378_2004);
    out
}

/// An ANSI angle (2° units, 0..=179) in ISO units (360/256°), rounded to nearest. Values above
/// 179 wrap around the circle.
pub fn ansi_angle_to_iso(ansi: u8) -> u8 {
    let ansi = u32::from(ansi % ANSI_ANGLE_STEPS);
    // ansi · 2° / (360/256)° = ansi · 64 / 45; never a tie, and at most 255 for ansi ≤ 179.
    ((ansi * 64 + 22) / 45) as u8
}

/// An ISO angle (360/256° units) in ANSI units (2°, 0..=179), rounded to nearest (ties up).
/// `iso_angle_to_ansi(ansi_angle_to_iso(a)) == a` for every `a` in 0..=179.
pub fn iso_angle_to_ansi(iso: u8) -> u8 {
    // iso · (360/256)° / 2° = iso · 45 / 64; at most 179.3 for iso ≤ 255.
    ((u32::from(iso) * 45 + 32) / 64 % u32::from(ANSI_ANGLE_STEPS)) as u8
}

fn first_view(views: Vec<FingerTemplate>) -> Result<FingerTemplate, IsoError> {
    views.into_iter().next().ok_or(IsoError::NoViews)
}

fn check_prefix(bytes: &[u8]) -> Result<(), IsoError> {
    let n = bytes.len().min(MAGIC.len());
    if bytes.get(..n) != MAGIC.get(..n) {
        return Err(IsoError::BadMagic);
    }
    match bytes.get(MAGIC.len()..MAGIC.len() + VERSION_2005.len()) {
        None => Err(IsoError::Truncated {
            section: Section::Header,
            offset: 0,
            needed: MAGIC.len() + VERSION_2005.len(),
            available: bytes.len(),
        }),
        Some(v) if v != VERSION_2005 => {
            let mut found = [0u8; 4];
            found.copy_from_slice(v);
            Err(IsoError::UnsupportedVersion { found })
        }
        Some(_) => Ok(()),
    }
}

fn check_header_len(bytes: &[u8], needed: usize) -> Result<(), IsoError> {
    if bytes.len() < needed {
        return Err(IsoError::Truncated {
            section: Section::Header,
            offset: 0,
            needed,
            available: bytes.len(),
        });
    }
    Ok(())
}

fn check_length(format: RecordFormat, declared: u64, actual: usize) -> Result<(), IsoError> {
    if declared != actual as u64 {
        return Err(IsoError::LengthMismatch { format, declared, actual });
    }
    Ok(())
}

/// A cursor over untrusted bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, section: Section) -> Result<&'a [u8], IsoError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.bytes.len());
        match end.and_then(|end| self.bytes.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(IsoError::Truncated {
                section,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, section: Section) -> Result<[u8; N], IsoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, section)?);
        Ok(a)
    }

    fn u8(&mut self, section: Section) -> Result<u8, IsoError> {
        Ok(self.array::<1>(section)?[0])
    }

    fn u16(&mut self, section: Section) -> Result<u16, IsoError> {
        Ok(u16::from_be_bytes(self.array(section)?))
    }

    fn u32(&mut self, section: Section) -> Result<u32, IsoError> {
        Ok(u32::from_be_bytes(self.array(section)?))
    }
}

/// Everything after the length field(s) (and ANSI's product identifier): the part both formats share.
fn parse_body(r: &mut Reader<'_>, format: RecordFormat) -> Result<Vec<FingerTemplate>, IsoError> {
    let _capture_equipment = r.u16(Section::Header)?;
    let width = r.u16(Section::Header)?;
    let height = r.u16(Section::Header)?;
    let res_x = r.u16(Section::Header)?;
    let res_y = r.u16(Section::Header)?;
    let views = r.u8(Section::Header)?;
    let _reserved = r.u8(Section::Header)?;

    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(IsoError::BadImageSize { width, height, max: MAX_IMAGE_SIDE });
    }
    if res_x != res_y {
        return Err(IsoError::AnisotropicResolution { x: res_x, y: res_y });
    }
    if !RESOLUTION_RANGE.contains(&res_x) {
        return Err(IsoError::BadResolution(res_x));
    }
    if views == 0 {
        return Err(IsoError::NoViews);
    }
    if usize::from(views) * MIN_VIEW_LEN > r.remaining() {
        return Err(IsoError::TooManyViews { views, available: r.remaining() });
    }

    let header = ViewContext { width, height, resolution_ppcm: res_x, format };
    let mut out = Vec::with_capacity(usize::from(views));
    for view in 0..usize::from(views) {
        out.push(parse_view(r, view, &header)?);
    }
    if r.remaining() != 0 {
        return Err(IsoError::TrailingBytes { offset: r.pos, count: r.remaining() });
    }
    Ok(out)
}

struct ViewContext {
    width: u16,
    height: u16,
    resolution_ppcm: u16,
    format: RecordFormat,
}

fn parse_view(
    r: &mut Reader<'_>,
    view: usize,
    cx: &ViewContext,
) -> Result<FingerTemplate, IsoError> {
    let start = r.pos;
    let [code, _view_and_impression, quality, count] = r.array::<4>(Section::ViewHeader)?;
    let position = match code {
        0 => None,
        _ => Some(FingerPosition::new(code).map_err(|_| IsoError::BadFingerPosition {
            view,
            offset: start,
            code,
        })?),
    };
    if quality > 100 {
        return Err(IsoError::BadFingerQuality { view, offset: start + 2, quality });
    }
    let needed = usize::from(count) * MINUTIA_LEN;
    if needed > r.remaining() {
        return Err(IsoError::MinutiaeDoNotFit {
            view,
            count,
            offset: start + 3,
            needed,
            available: r.remaining(),
        });
    }

    let mut minutiae = Vec::with_capacity(usize::from(count));
    for index in 0..usize::from(count) {
        let offset = r.pos;
        let [x_hi, x_lo, y_hi, y_lo, angle, quality] = r.array::<6>(Section::Minutiae)?;
        let x_word = u16::from_be_bytes([x_hi, x_lo]);
        let kind = match x_word >> 14 {
            0 => MinutiaKind::Other,
            1 => MinutiaKind::RidgeEnding,
            2 => MinutiaKind::Bifurcation,
            _ => return Err(IsoError::BadMinutiaType { view, index, offset }),
        };
        let x = x_word & COORD_MASK;
        // The two high bits of y are reserved; they are ignored.
        let y = u16::from_be_bytes([y_hi, y_lo]) & COORD_MASK;
        let angle = match cx.format {
            RecordFormat::Iso19794_2_2005 => angle,
            RecordFormat::Ansi378_2004 if angle < ANSI_ANGLE_STEPS => ansi_angle_to_iso(angle),
            RecordFormat::Ansi378_2004 => {
                return Err(IsoError::BadMinutiaAngle { view, index, offset: offset + 4 })
            }
        };
        if quality > 100 {
            return Err(IsoError::BadMinutiaQuality { view, index, offset: offset + 5 });
        }
        if x >= cx.width || y >= cx.height {
            return Err(IsoError::MinutiaOutOfRange {
                view,
                index,
                x,
                y,
                width: cx.width,
                height: cx.height,
            });
        }
        minutiae.push(Minutia { x, y, angle, kind, quality });
    }

    let ext_len = r.u16(Section::ExtendedDataLength)?;
    r.take(usize::from(ext_len), Section::ExtendedData)?;

    let t = FingerTemplate {
        width: cx.width,
        height: cx.height,
        resolution_ppcm: cx.resolution_ppcm,
        position,
        quality,
        minutiae,
    };
    t.validate().map_err(|e| IsoError::Invalid { view, source: Box::new(e) })?;
    Ok(t)
}

/// Bytes after the length field(s) (and ANSI's product id) for a one-view record of `t`.
fn body_len(t: &FingerTemplate) -> usize {
    // The rest of the record header, one view header with its extended data length, minutiae.
    (ISO_HEADER_LEN - 12) + MIN_VIEW_LEN + minutiae_written(t) * MINUTIA_LEN
}

fn minutiae_written(t: &FingerTemplate) -> usize {
    t.minutiae.len().min(usize::from(u8::MAX))
}

fn write_body(out: &mut Vec<u8>, t: &FingerTemplate, format: RecordFormat) {
    out.extend_from_slice(&0u16.to_be_bytes()); // capture equipment
    for v in [t.width, t.height, t.resolution_ppcm, t.resolution_ppcm] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.push(1); // finger views
    out.push(0); // reserved
    let count = minutiae_written(t);
    out.push(t.position.map_or(0, FingerPosition::code));
    out.push(0); // view number 0, impression type 0 (live-scan plain)
    out.push(t.quality);
    out.push(count as u8);
    for m in &t.minutiae[..count] {
        let kind = m.kind as u16;
        out.extend_from_slice(&((kind << 14) | (m.x & COORD_MASK)).to_be_bytes());
        out.extend_from_slice(&(m.y & COORD_MASK).to_be_bytes());
        out.push(match format {
            RecordFormat::Iso19794_2_2005 => m.angle,
            RecordFormat::Ansi378_2004 => iso_angle_to_ansi(m.angle),
        });
        out.push(m.quality);
    }
    out.extend_from_slice(&0u16.to_be_bytes()); // extended data length
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(x: u16, y: u16, angle: u8, kind: MinutiaKind, quality: u8) -> Minutia {
        Minutia { x, y, angle, kind, quality }
    }

    fn sample() -> FingerTemplate {
        FingerTemplate::new(
            256,
            360,
            197,
            FingerPosition::new(2).ok(),
            80,
            vec![
                m(10, 20, 0, MinutiaKind::RidgeEnding, 60),
                m(255, 359, 64, MinutiaKind::Bifurcation, 100),
                m(0, 0, 128, MinutiaKind::Other, 0),
            ],
        )
        .unwrap()
    }

    /// The ISO record of [`sample`], byte by byte from the standard's field table.
    #[rustfmt::skip]
    fn sample_iso_bytes() -> Vec<u8> {
        vec![
            b'F', b'M', b'R', 0, b' ', b'2', b'0', 0,
            0, 0, 0, 48,            // record length: 24 + 4 + 3*6 + 2
            0, 0,                   // capture equipment
            1, 0, 1, 104,           // 256 x 360
            0, 197, 0, 197,         // 197 x 197 px/cm
            1, 0,                   // 1 view, reserved
            2, 0, 80, 3,            // position 2, view 0 / impression 0, quality 80, 3 minutiae
            0x40, 10, 0, 20, 0, 60,         // ridge ending (01) at (10, 20)
            0x80, 255, 1, 103, 64, 100,     // bifurcation (10) at (255, 359)
            0, 0, 0, 0, 128, 0,             // other at (0, 0)
            0, 0,                   // no extended data
        ]
    }

    /// Sets the length field of an ISO record to its actual length.
    fn fix_iso_len(b: &mut [u8]) {
        let len = b.len() as u32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the 2-byte length field of an ANSI record to its actual length.
    fn fix_ansi_len(b: &mut [u8]) {
        let len = b.len() as u16;
        b[8..10].copy_from_slice(&len.to_be_bytes());
    }

    /// A two-view ISO record: `sample` as view 0 with 5 bytes of extended data, then a second view.
    fn two_view_iso() -> Vec<u8> {
        let mut b = sample_iso_bytes();
        b[22] = 2;
        let ext_at = b.len() - 2;
        b.truncate(ext_at);
        b.extend_from_slice(&[0, 5, 0, 1, 0, 5, 0xaa]);
        b.extend_from_slice(&[7, 0x10, 30, 1, 0x40, 1, 0, 2, 3, 4, 0, 0]);
        fix_iso_len(&mut b);
        b
    }

    #[test]
    fn writes_the_standard_iso_layout() {
        assert_eq!(to_iso(&sample()), sample_iso_bytes());
        assert_eq!(parse_iso(&sample_iso_bytes()).unwrap(), sample());
        assert_eq!(
            parse_record(&sample_iso_bytes()).unwrap(),
            (RecordFormat::Iso19794_2_2005, sample())
        );
    }

    #[test]
    fn writes_the_standard_ansi_layout() {
        let b = to_ansi378(&sample());
        assert_eq!(b.len(), 50);
        assert_eq!(&b[..8], b"FMR\0 20\0");
        assert_eq!(&b[8..10], &[0, 50]);
        assert_eq!(&b[10..14], &[0, 0, 0, 0]); // CBEFF product id
                                               // From the capture equipment on, ISO and ANSI agree except for the angles.
        let iso = sample_iso_bytes();
        let (mut a, mut i) = (b[14..].to_vec(), iso[12..].to_vec());
        for k in 0..3 {
            let at = 12 + 4 + k * 6 + 4;
            assert_eq!(a[at], iso_angle_to_ansi(i[at]));
            a[at] = 0;
            i[at] = 0;
        }
        assert_eq!(a, i);
        // 0 → 0, 64 (90°) → 45, 128 (180°) → 90.
        assert_eq!([b[34], b[40], b[46]], [0, 45, 90]);
        assert_eq!(parse_record(&b).unwrap(), (RecordFormat::Ansi378_2004, sample()));
    }

    #[test]
    fn ansi_angles_convert_both_ways() {
        for a in 0..180u8 {
            assert_eq!(iso_angle_to_ansi(ansi_angle_to_iso(a)), a);
        }
        for i in 0..=255u8 {
            let back = ansi_angle_to_iso(iso_angle_to_ansi(i));
            let diff = (i16::from(back) - i16::from(i)).rem_euclid(256);
            assert!(diff.min(256 - diff) <= 1, "{i} -> {back}");
        }
        assert_eq!(iso_angle_to_ansi(255), 179);
        assert_eq!(ansi_angle_to_iso(179), 255);
    }

    #[test]
    fn reads_the_six_byte_ansi_length() {
        let short = to_ansi378(&sample());
        let mut long = short[..8].to_vec();
        long.extend_from_slice(&[0, 0, 0, 0, 0, 54]);
        long.extend_from_slice(&short[10..]);
        assert_eq!(parse_ansi378(&long).unwrap(), sample());
        assert_eq!(detect_format(&long).unwrap(), RecordFormat::Ansi378_2004);
        long[13] = 55;
        assert!(matches!(
            parse_ansi378(&long),
            Err(IsoError::LengthMismatch { declared: 55, actual: 54, .. })
        ));
        assert_eq!(parse_record(&long), Err(IsoError::UnknownFormat { actual: 54 }));
    }

    #[test]
    fn reads_every_view_and_skips_extended_data() {
        let b = two_view_iso();
        let views = parse_iso_views(&b).unwrap();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0], sample());
        assert_eq!(views[1].position, FingerPosition::new(7).ok());
        assert_eq!(views[1].quality, 30);
        assert_eq!(views[1].minutiae, vec![m(1, 2, 3, MinutiaKind::RidgeEnding, 4)]);
        assert_eq!(parse_iso(&b).unwrap(), sample());
    }

    #[test]
    fn position_zero_is_unknown() {
        let mut t = sample();
        t.position = None;
        let b = to_iso(&t);
        assert_eq!(b[24], 0);
        assert_eq!(parse_iso(&b).unwrap(), t);
        assert_eq!(parse_ansi378(&to_ansi378(&t)).unwrap(), t);
    }

    #[test]
    fn refuses_wrong_magic_and_version() {
        assert_eq!(parse_iso(b"FMX\0 20\0"), Err(IsoError::BadMagic));
        assert_eq!(parse_record(b"GIF89a"), Err(IsoError::BadMagic));
        assert!(matches!(
            parse_iso(b""),
            Err(IsoError::Truncated { section: Section::Header, .. })
        ));
        assert!(matches!(parse_iso(b"FM"), Err(IsoError::Truncated { needed: 8, .. })));
        let mut b = sample_iso_bytes();
        b[4..8].copy_from_slice(b"030\0");
        assert_eq!(parse_iso(&b), Err(IsoError::UnsupportedVersion { found: *b"030\0" }));
        assert_eq!(parse_record(&b), Err(IsoError::UnsupportedVersion { found: *b"030\0" }));
        assert_eq!(parse_ansi378(&b), Err(IsoError::UnsupportedVersion { found: *b"030\0" }));
    }

    #[test]
    fn refuses_length_fields_that_do_not_match() {
        let mut b = sample_iso_bytes();
        b.push(0);
        assert_eq!(
            parse_iso(&b),
            Err(IsoError::LengthMismatch {
                format: RecordFormat::Iso19794_2_2005,
                declared: 48,
                actual: 49
            })
        );
        assert_eq!(parse_record(&b), Err(IsoError::UnknownFormat { actual: 49 }));
        // An ISO record read as ANSI and vice versa.
        assert!(matches!(parse_ansi378(&sample_iso_bytes()), Err(IsoError::LengthMismatch { .. })));
        assert!(matches!(parse_iso(&to_ansi378(&sample())), Err(IsoError::LengthMismatch { .. })));
        // Truncated anywhere after the header: the length no longer matches.
        let b = sample_iso_bytes();
        for cut in ISO_HEADER_LEN..b.len() {
            assert!(matches!(parse_iso(&b[..cut]), Err(IsoError::LengthMismatch { .. })));
        }
    }

    #[test]
    fn refuses_truncated_headers_views_minutiae_and_extended_data() {
        let b = sample_iso_bytes();
        for cut in 8..ISO_HEADER_LEN {
            assert_eq!(
                parse_iso(&b[..cut]),
                Err(IsoError::Truncated {
                    section: Section::Header,
                    offset: 0,
                    needed: 24,
                    available: cut
                })
            );
        }
        let a = to_ansi378(&sample());
        assert!(matches!(parse_ansi378(&a[..25]), Err(IsoError::Truncated { needed: 26, .. })));
        let mut long = a[..26].to_vec();
        long[8..10].copy_from_slice(&[0, 0]);
        assert!(matches!(parse_ansi378(&long), Err(IsoError::Truncated { needed: 30, .. })));

        // With the length field kept consistent, each truncation gets its own section.
        let cut_at = |cut: usize| {
            let mut t = b[..cut].to_vec();
            fix_iso_len(&mut t);
            parse_iso(&t)
        };
        // Header only (1 view declared, nothing follows).
        assert_eq!(cut_at(24), Err(IsoError::TooManyViews { views: 1, available: 0 }));
        // Declared view count does not fit.
        let mut t = b.clone();
        t[22] = 9;
        assert_eq!(parse_iso(&t), Err(IsoError::TooManyViews { views: 9, available: 24 }));
        // Second view header truncated.
        let mut t = b.clone();
        t[22] = 2;
        t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let t2 = {
            let mut v = t[..t.len() - 3].to_vec();
            fix_iso_len(&mut v);
            v
        };
        assert_eq!(
            parse_iso(&t2),
            Err(IsoError::Truncated {
                section: Section::ViewHeader,
                offset: 48,
                needed: 4,
                available: 3
            })
        );
        // Minutiae that do not fit (one minutia and the extended length short).
        assert_eq!(
            cut_at(40),
            Err(IsoError::MinutiaeDoNotFit {
                view: 0,
                count: 3,
                offset: 27,
                needed: 18,
                available: 12
            })
        );
        // Extended data length missing, then the block itself shorter than declared.
        assert_eq!(
            cut_at(47),
            Err(IsoError::Truncated {
                section: Section::ExtendedDataLength,
                offset: 46,
                needed: 2,
                available: 1
            })
        );
        let mut t = b.clone();
        t[46..48].copy_from_slice(&[0, 10]);
        t.extend_from_slice(&[1, 2, 3]);
        fix_iso_len(&mut t);
        assert_eq!(
            parse_iso(&t),
            Err(IsoError::Truncated {
                section: Section::ExtendedData,
                offset: 48,
                needed: 10,
                available: 3
            })
        );
    }

    #[test]
    fn refuses_bad_header_fields() {
        let with = |at: usize, bytes: &[u8]| {
            let mut t = sample_iso_bytes();
            t[at..at + bytes.len()].copy_from_slice(bytes);
            parse_iso(&t)
        };
        assert!(matches!(with(14, &[0, 0]), Err(IsoError::BadImageSize { width: 0, .. })));
        assert!(matches!(with(16, &[0x40, 0]), Err(IsoError::BadImageSize { height: 16384, .. })));
        assert_eq!(with(18, &[0, 49, 0, 49]), Err(IsoError::BadResolution(49)));
        assert_eq!(with(18, &[7, 209, 7, 209]), Err(IsoError::BadResolution(2001)));
        assert_eq!(with(18, &[7, 208, 7, 208]).unwrap().resolution_ppcm, 2000);
        assert_eq!(with(20, &[0, 198]), Err(IsoError::AnisotropicResolution { x: 197, y: 198 }));
        assert_eq!(with(22, &[0]), Err(IsoError::NoViews));
        assert_eq!(with(22, &[0]), parse_record(&with_bytes(22, &[0])).map(|r| r.1));
    }

    fn with_bytes(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut t = sample_iso_bytes();
        t[at..at + bytes.len()].copy_from_slice(bytes);
        t
    }

    #[test]
    fn refuses_bad_view_and_minutia_fields() {
        let p = |at: usize, bytes: &[u8]| parse_iso(&with_bytes(at, bytes));
        assert_eq!(
            p(24, &[11]),
            Err(IsoError::BadFingerPosition { view: 0, offset: 24, code: 11 })
        );
        assert_eq!(p(24, &[10]).unwrap().position, FingerPosition::new(10).ok());
        assert_eq!(
            p(26, &[101]),
            Err(IsoError::BadFingerQuality { view: 0, offset: 26, quality: 101 })
        );
        assert_eq!(p(28, &[0xc0]), Err(IsoError::BadMinutiaType { view: 0, index: 0, offset: 28 }));
        assert_eq!(
            p(39, &[101]),
            Err(IsoError::BadMinutiaQuality { view: 0, index: 1, offset: 39 })
        );
        // x = 256 in a 256-wide image; y = 360 in a 360-high one.
        assert_eq!(
            p(34, &[0x81, 0]),
            Err(IsoError::MinutiaOutOfRange {
                view: 0,
                index: 1,
                x: 256,
                y: 359,
                width: 256,
                height: 360
            })
        );
        assert!(matches!(p(36, &[1, 104]), Err(IsoError::MinutiaOutOfRange { y: 360, .. })));
        // Reserved y bits are ignored.
        assert_eq!(p(30, &[0xc0]).unwrap(), sample());
        // Trailing bytes after the last view.
        let mut t = sample_iso_bytes();
        t.extend_from_slice(&[0; 5]);
        fix_iso_len(&mut t);
        assert_eq!(parse_iso(&t), Err(IsoError::TrailingBytes { offset: 48, count: 5 }));
        // ANSI angles above 179.
        let mut a = to_ansi378(&sample());
        a[34] = 180;
        assert_eq!(
            parse_ansi378(&a),
            Err(IsoError::BadMinutiaAngle { view: 0, index: 0, offset: 34 })
        );
        // Errors in a later view are reported with its index.
        let mut b = two_view_iso();
        let second = b.len() - 12;
        b[second] = 12;
        assert_eq!(
            parse_iso(&b),
            Err(IsoError::BadFingerPosition { view: 1, offset: second, code: 12 })
        );
    }

    #[test]
    fn error_messages_carry_no_minutia_values() {
        let e = parse_iso(&with_bytes(39, &[101])).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("minutia 1") && !msg.contains("101"), "{msg}");
    }

    fn kind() -> impl Strategy<Value = MinutiaKind> {
        prop_oneof![
            Just(MinutiaKind::Other),
            Just(MinutiaKind::RidgeEnding),
            Just(MinutiaKind::Bifurcation)
        ]
    }

    fn template() -> impl Strategy<Value = FingerTemplate> {
        (1..=MAX_IMAGE_SIDE, 1..=MAX_IMAGE_SIDE).prop_flat_map(|(w, h)| {
            let minutia = (0..w, 0..h, any::<u8>(), kind(), 0..=100u8)
                .prop_map(|(x, y, angle, kind, quality)| Minutia { x, y, angle, kind, quality });
            (
                RESOLUTION_RANGE,
                prop::option::of(1..=MAX_FINGER_POSITION),
                0..=100u8,
                prop::collection::vec(minutia, 0..=255),
            )
                .prop_map(move |(res, pos, quality, minutiae)| FingerTemplate {
                    width: w,
                    height: h,
                    resolution_ppcm: res,
                    position: pos.and_then(|p| FingerPosition::new(p).ok()),
                    quality,
                    minutiae,
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn iso_round_trips_exactly(t in template()) {
            prop_assert!(t.validate().is_ok());
            let b = to_iso(&t);
            prop_assert_eq!(b.len(), 30 + 6 * t.minutiae.len());
            prop_assert_eq!(parse_iso(&b), Ok(t.clone()));
            prop_assert_eq!(parse_record(&b), Ok((RecordFormat::Iso19794_2_2005, t)));
        }

        #[test]
        fn ansi_round_trips_up_to_angle_rounding(t in template()) {
            let b = to_ansi378(&t);
            let mut expected = t.clone();
            for m in &mut expected.minutiae {
                m.angle = ansi_angle_to_iso(iso_angle_to_ansi(m.angle));
            }
            let parsed = parse_ansi378(&b);
            prop_assert_eq!(&parsed, &Ok(expected.clone()));
            prop_assert_eq!(parse_record(&b), Ok((RecordFormat::Ansi378_2004, expected.clone())));
            // A template read from ANSI round-trips exactly, bytes and all.
            prop_assert_eq!(to_ansi378(&expected), b.clone());
            prop_assert_eq!(parse_ansi378(&to_ansi378(&expected)), Ok(expected));
        }
    }

    /// The fuzz smoke test's seeded generator.
    type Rng = biomatch_testkit::SplitMix64;

    /// Valid records to mutate, each with whether it is ANSI.
    fn seeds() -> Vec<(bool, Vec<u8>)> {
        let mut big = sample();
        big.minutiae = (0..255u16)
            .map(|i| m(i, 359 - i, i as u8, MinutiaKind::Bifurcation, (i % 101) as u8))
            .collect();
        let mut empty = sample();
        empty.minutiae.clear();
        empty.position = None;
        vec![
            (false, sample_iso_bytes()),
            (false, two_view_iso()),
            (false, to_iso(&big)),
            (false, to_iso(&empty)),
            (true, to_ansi378(&sample())),
            (true, to_ansi378(&big)),
            (true, to_ansi378(&empty)),
        ]
    }

    fn mutate(rng: &mut Rng, ansi: bool, seed: &[u8]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 => b.truncate(rng.below(b.len() + 1)),
                1 => {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    let at = rng.below(b.len() + 1);
                    let n = 1 + rng.below(8);
                    for k in 0..n {
                        b.insert(at + k, rng.next_u64() as u8);
                    }
                }
                3 => {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] = rng.next_u64() as u8;
                    }
                }
                4 => {
                    // A random value in one of the length/count fields.
                    let at = [8, 9, 10, 11, 22, 24, 27, 46][rng.below(8)];
                    if at < b.len() {
                        b[at] = rng.next_u64() as u8;
                    }
                }
                _ => {
                    if !b.is_empty() {
                        let at = rng.below(b.len());
                        let n = rng.below(b.len() - at + 1);
                        b.drain(at..at + n);
                    }
                }
            }
        }
        // Half the time keep the length field consistent, to reach the deeper checks.
        if rng.below(2) == 0 && b.len() >= 12 {
            if ansi {
                fix_ansi_len(&mut b);
            } else {
                fix_iso_len(&mut b);
            }
        }
        b
    }

    fn check_ok(t: &FingerTemplate) {
        assert!(t.validate().is_ok());
        assert_eq!(parse_iso(&to_iso(t)).as_ref(), Ok(t));
    }

    fn check(r: Result<FingerTemplate, IsoError>) -> bool {
        match r {
            Ok(t) => {
                check_ok(&t);
                true
            }
            Err(IsoError::Invalid { .. }) => panic!("a field check missed an invariant"),
            Err(_) => false,
        }
    }

    #[test]
    fn fuzz_smoke_mutated_records_never_panic() {
        let seeds = seeds();
        let mut rng = Rng::new(0x5eed_1505_2005);
        let mut oks = 0usize;
        for _ in 0..200_000 {
            let (ansi, seed) = &seeds[rng.below(seeds.len())];
            let b = mutate(&mut rng, *ansi, seed);
            oks += usize::from(check(parse_iso(&b)));
            oks += usize::from(check(parse_ansi378(&b)));
            match parse_record(&b) {
                Ok((_, t)) => check_ok(&t),
                Err(IsoError::Invalid { .. }) => panic!("a field check missed an invariant"),
                Err(_) => {}
            }
            for views in [parse_iso_views(&b), parse_ansi378_views(&b)].into_iter().flatten() {
                assert!(!views.is_empty());
                views.iter().for_each(check_ok);
            }
        }
        // The mutations must reach past the header checks, not only fail early.
        assert!(oks > 10_000, "only {oks} mutated records parsed");
    }
}
