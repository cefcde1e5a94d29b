//! Bounded image decoding. Everything an image costs is known from its header before a pixel
//! buffer is allocated ([`probe`]): the byte limit, a limit on each side and on the pixel count
//! (a "PNG bomb" declaring 60 000 × 60 000 pixels in a few hundred bytes is refused from its
//! header), and [`ImageHeader::decode_cost`], an upper bound of the heap the decode and the
//! conversion to RGB or grey need, which the service reserves from its decode-memory budget
//! before decoding (`matcher/src/samples.rs`). The decoders are also given that bound as their
//! allocation limit.
//!
//! JPEGs are decoded with `jpeg-decoder`, whose chroma upsampling and IDCT follow libjpeg: the
//! embeddings then agree with a libjpeg-based reference (Pillow) to cosine ≥ 0.999, where the
//! `image` crate's default JPEG decoder gave 0.998 on one test photo. Decoders silently fill a
//! truncated scan with zero bits (a JPEG cut in half with an end-of-image marker appended decodes
//! to a half-grey picture), so every JPEG is first walked by [`jpeg::verify`], which decodes its
//! entropy-coded data symbol by symbol and refuses a scan that ends before its last MCU. PNGs are
//! decoded by the `png` crate through `image`, which checks every chunk CRC and refuses image data
//! that ends early. Bytes after a JPEG's end-of-image marker or a PNG's `IEND` chunk are ignored
//! (they count against the byte limit).

pub mod jpeg;

use crate::ExtractError;
use image::{DynamicImage, GrayImage, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// Limits on accepted images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageLimits {
    pub max_bytes: usize,
    /// Largest accepted width and height.
    pub max_side: u32,
    /// Largest accepted width × height.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_bytes: 10 << 20, max_side: 6000, max_pixels: DEFAULT_MAX_PIXELS }
    }
}

/// 24 megapixels (6000 × 4000): a full-frame camera photo.
pub const DEFAULT_MAX_PIXELS: u64 = 24_000_000;

/// Heap a decode needs besides its pixels: decoder tables, row buffers, zlib state.
const DECODE_OVERHEAD: u64 = 1 << 20;

/// Bytes per pixel of the most expensive image [`probe`] accepts (a progressive 4-component JPEG:
/// see [`ImageHeader::decode_cost`]). `max_pixels × WORST_BYTES_PER_PIXEL + DECODE_OVERHEAD`
/// bounds the cost of any accepted image.
pub const WORST_BYTES_PER_PIXEL: u64 = 20;

/// What [`probe`] read from an image's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

/// An image's header: what it is and what decoding it costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// Upper bound of the heap (bytes) the decode and the conversion to RGB or grey allocate.
    pub decode_cost: u64,
}

impl ImageLimits {
    /// Upper bound of [`ImageHeader::decode_cost`] over every image these limits accept.
    pub fn worst_decode_cost(&self) -> u64 {
        let side = u64::from(self.max_side);
        self.max_pixels.min(side * side) * WORST_BYTES_PER_PIXEL + DECODE_OVERHEAD
    }
}

/// Read the header and check the limits; nothing is decoded and no pixel buffer is allocated.
pub fn probe(bytes: &[u8], limits: &ImageLimits) -> Result<ImageHeader, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ExtractError::TooManyBytes { got: bytes.len(), max: limits.max_bytes });
    }
    let h = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg_header(bytes)?
    } else if bytes.starts_with(PNG_SIGNATURE) {
        png_header(bytes)?
    } else {
        return Err(ExtractError::Undecodable("not a JPEG or PNG".into()));
    };
    let (w, ht) = (h.width, h.height);
    if w > limits.max_side || ht > limits.max_side {
        return Err(ExtractError::TooLarge {
            width: w.into(),
            height: ht.into(),
            max: limits.max_side,
        });
    }
    if u64::from(w) * u64::from(ht) > limits.max_pixels {
        return Err(ExtractError::TooManyPixels {
            width: w,
            height: ht,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(h)
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn jpeg_header(bytes: &[u8]) -> Result<ImageHeader, ExtractError> {
    let f = jpeg::header(bytes).map_err(ExtractError::Undecodable)?;
    let (w, h) = (u64::from(f.width), u64::from(f.height));
    let px = w * h;
    // jpeg-decoder: one byte per sample of each component's MCU-padded plane, two per
    // coefficient of a progressive image (kept for the whole decode), then the colour-converted
    // output (one byte per component, two for 12-bit grey), our conversion to RGB (CMYK, grey)
    // and to grey (the finger path).
    let planes: u64 = (0..f.components.len())
        .map(|i| {
            let (bx, by) = f.padded_blocks(i);
            (bx * by * 64) as u64
        })
        .sum();
    let coefficients = if f.progressive { 2 * planes } else { 0 };
    // The structural check's non-zero history (progressive: 8 bytes a block, an eighth of the
    // planes) is freed before the decoder starts, so the decode's peak covers it.
    let output = px * f.components.len().max(2) as u64;
    let cost = planes + coefficients + output + 4 * px + DECODE_OVERHEAD;
    Ok(ImageHeader {
        format: ImageFormat::Jpeg,
        width: u32::from(f.width),
        height: u32::from(f.height),
        decode_cost: cost,
    })
}

fn png_header(b: &[u8]) -> Result<ImageHeader, ExtractError> {
    let bad = |m: &str| ExtractError::Undecodable(m.into());
    if b.len() < 33 || &b[8..16] != b"\0\0\0\rIHDR" {
        return Err(bad("PNG without an IHDR chunk"));
    }
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (w, h, depth, color) = (be(16), be(20), b[24], b[25]);
    if w == 0 || h == 0 {
        return Err(bad("PNG with a zero dimension"));
    }
    // Bytes per pixel of the decoder's output, as expanded by `image` (palette and low bit
    // depths to 8 bits; a tRNS chunk may add an alpha channel).
    let bpp: u64 = match (color, depth) {
        (0, 1 | 2 | 4 | 8) | (4, 8) => 2,
        (0, 16) | (4, 16) | (2, 8) | (3, 1 | 2 | 4 | 8) | (6, 8) => 4,
        (2, 16) | (6, 16) => 8,
        _ => return Err(bad("PNG with an invalid colour type and bit depth")),
    };
    let px = u64::from(w) * u64::from(h);
    // The decoded image, then the conversion to RGB (3 bytes a pixel) or to grey (grey+alpha,
    // then grey: 3).
    let row = u64::from(w) * 8 + 1;
    let cost = px * (bpp + 3) + 4 * row + DECODE_OVERHEAD;
    Ok(ImageHeader { format: ImageFormat::Png, width: w, height: h, decode_cost: cost })
}

/// Decode JPEG or PNG into RGB8 (an alpha channel is dropped).
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ExtractError> {
    Ok(decode_dynamic(bytes, limits)?.into_rgb8())
}

/// Decode JPEG or PNG into 8-bit grey. Transparent pixels are composited onto white, the
/// background of a fingerprint scan.
pub fn decode_gray(bytes: &[u8], limits: &ImageLimits) -> Result<GrayImage, ExtractError> {
    Ok(match decode_dynamic(bytes, limits)? {
        img if img.color().has_alpha() => {
            let la = img.into_luma_alpha8();
            let (w, h) = la.dimensions();
            let px = la
                .pixels()
                .map(|p| {
                    let (l, a) = (u32::from(p.0[0]), u32::from(p.0[1]));
                    ((l * a + 255 * (255 - a) + 127) / 255) as u8
                })
                .collect();
            GrayImage::from_raw(w, h, px).expect("one grey byte per pixel")
        }
        img => img.into_luma8(),
    })
}

fn decode_dynamic(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage, ExtractError> {
    let header = probe(bytes, limits)?;
    match header.format {
        ImageFormat::Jpeg => decode_jpeg(bytes, &header),
        ImageFormat::Png => decode_png(bytes, &header),
    }
}

fn decode_png(bytes: &[u8], header: &ImageHeader) -> Result<DynamicImage, ExtractError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image::ImageFormat::Png);
    let mut l = Limits::default();
    l.max_image_width = Some(header.width);
    l.max_image_height = Some(header.height);
    l.max_alloc = Some(header.decode_cost);
    reader.limits(l);
    reader.decode().map_err(|e| ExtractError::Undecodable(e.to_string()))
}

fn decode_jpeg(bytes: &[u8], header: &ImageHeader) -> Result<DynamicImage, ExtractError> {
    let frame = jpeg::verify(bytes).map_err(ExtractError::Undecodable)?;
    let (w, h) = (u32::from(frame.width), u32::from(frame.height));
    let bad = |e: jpeg_decoder::Error| ExtractError::Undecodable(e.to_string());
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.set_max_decoding_buffer_size(usize::try_from(header.decode_cost).unwrap_or(usize::MAX));
    let px = d.decode().map_err(bad)?;
    let info =
        d.info().ok_or_else(|| ExtractError::Undecodable("JPEG without a frame header".into()))?;
    if (u32::from(info.width), u32::from(info.height)) != (w, h) {
        return Err(ExtractError::Undecodable("JPEG frame size changed while decoding".into()));
    }
    let wrong = || ExtractError::Undecodable("JPEG pixel data has the wrong size".into());
    Ok(match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, px).ok_or_else(wrong)?)
        }
        jpeg_decoder::PixelFormat::L8 => {
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, px).ok_or_else(wrong)?)
        }
        jpeg_decoder::PixelFormat::L16 => {
            let g = px.chunks_exact(2).map(|c| c[0]).collect();
            DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, g).ok_or_else(wrong)?)
        }
        jpeg_decoder::PixelFormat::CMYK32 => {
            let rgb = px
                .chunks_exact(4)
                .flat_map(|c| {
                    let k = u16::from(c[3]);
                    [c[0], c[1], c[2]].map(|v| (u16::from(v) * k / 255) as u8)
                })
                .collect();
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, rgb).ok_or_else(wrong)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    /// The small synthetic images of `models/testdata` (Pillow/libjpeg-turbo encoded).
    fn testdata(ext: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .map(|p| {
                (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        assert!(v.len() >= 4, "testdata/*.{ext} missing");
        v
    }

    #[test]
    fn decodes_and_refuses() {
        let l = ImageLimits::default();
        assert_eq!(decode_rgb(&png(8, 4), &l).unwrap().dimensions(), (8, 4));
        assert!(matches!(decode_rgb(&[], &l), Err(ExtractError::Empty)));
        assert!(matches!(decode_rgb(b"GIF89a........", &l), Err(ExtractError::Undecodable(_))));
        let p = png(8, 4);
        assert!(matches!(decode_rgb(&p[..p.len() / 2], &l), Err(ExtractError::Undecodable(_))));
        let small = ImageLimits { max_bytes: 10, ..l };
        assert!(matches!(decode_rgb(&p, &small), Err(ExtractError::TooManyBytes { .. })));
        let tiny = ImageLimits { max_side: 4, ..l };
        assert!(matches!(decode_rgb(&png(8, 4), &tiny), Err(ExtractError::TooLarge { .. })));
        let few = ImageLimits { max_pixels: 31, ..l };
        assert!(matches!(
            decode_rgb(&png(8, 4), &few),
            Err(ExtractError::TooManyPixels { width: 8, height: 4, max_pixels: 31 })
        ));
        assert!(decode_rgb(&png(8, 4), &ImageLimits { max_pixels: 32, ..l }).is_ok());
    }

    #[test]
    fn every_test_image_decodes_within_its_cost() {
        let l = ImageLimits::default();
        for (name, b) in testdata("jpg").into_iter().chain(testdata("png")) {
            let h = probe(&b, &l).unwrap_or_else(|e| panic!("{name}: {e}"));
            let rgb = decode_rgb(&b, &l).unwrap_or_else(|e| panic!("{name}: {e}"));
            let grey = decode_gray(&b, &l).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rgb.dimensions(), (h.width, h.height), "{name}");
            assert_eq!(grey.dimensions(), (h.width, h.height), "{name}");
            let px = u64::from(h.width) * u64::from(h.height);
            assert!(h.decode_cost >= 4 * px + DECODE_OVERHEAD, "{name}");
            assert!(h.decode_cost <= l.worst_decode_cost(), "{name}");
        }
    }

    #[test]
    fn the_face_photos_pass_the_jpeg_check() {
        for name in biomatch_testkit::fixtures::FACE_PHOTOS {
            let b = biomatch_testkit::fixtures::read(&biomatch_testkit::fixtures::face_photo(name));
            jpeg::verify(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_jpeg_cut_anywhere_and_closed_with_an_end_marker_is_refused() {
        let l = ImageLimits::default();
        for (name, b) in testdata("jpg") {
            let frame = jpeg::header(&b).unwrap();
            assert!(frame.width > 0, "{name}");
            // Every cut, from inside the headers to one byte before the end-of-image marker.
            for cut in 4..b.len() - 2 {
                let mut t = b[..cut].to_vec();
                t.extend_from_slice(&[0xFF, 0xD9]);
                let got = decode_rgb(&t, &l);
                assert!(
                    matches!(got, Err(ExtractError::Undecodable(_))),
                    "{name} cut at {cut} of {}: {:?}",
                    b.len(),
                    got.map(|i| i.dimensions())
                );
            }
            // Half the file, as the attack test sent it, with the message naming the cause.
            let mut half = b[..b.len() / 2].to_vec();
            half.extend_from_slice(&[0xFF, 0xD9]);
            let e = jpeg::verify(&half).unwrap_err();
            assert!(e.contains("truncated") || e.contains("missing"), "{name}: {e}");
            // Trailing bytes after the end-of-image marker are ignored.
            let mut trailer = b.clone();
            trailer.extend_from_slice(b"appended by a camera");
            assert!(decode_rgb(&trailer, &l).is_ok(), "{name}");
        }
    }

    #[test]
    fn a_half_cut_face_photo_is_refused() {
        let b = biomatch_testkit::fixtures::read(&biomatch_testkit::fixtures::face_photo(
            biomatch_testkit::fixtures::FACE_PHOTOS[1],
        ));
        let mut half = b[..b.len() / 2].to_vec();
        half.extend_from_slice(&[0xFF, 0xD9]);
        // The decoder alone accepts it (grey-filling the missing half): the check is what refuses.
        assert!(jpeg_decoder::Decoder::new(Cursor::new(&half)).decode().is_ok());
        let got = decode_rgb(&half, &ImageLimits::default());
        assert!(matches!(got, Err(ExtractError::Undecodable(_))), "{:?}", got.map(|_| ()));
    }

    #[test]
    fn bytes_spliced_into_a_scan_are_refused() {
        let (_, b) = testdata("jpg").into_iter().find(|(n, _)| n == "baseline-420.jpg").unwrap();
        // Extra entropy-coded bytes before the end-of-image marker.
        let mut t = b[..b.len() - 2].to_vec();
        t.extend_from_slice(&[0x12, 0x34, 0x56, 0xFF, 0xD9]);
        let e = jpeg::verify(&t).unwrap_err();
        assert!(e.contains("after the last MCU"), "{e}");
    }

    /// PNG chunks: length, type, data, CRC. Returns (offset, type, data range).
    fn chunks(p: &[u8]) -> Vec<(usize, [u8; 4], std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let mut i = 8;
        while i + 12 <= p.len() {
            let len = u32::from_be_bytes(p[i..i + 4].try_into().unwrap()) as usize;
            out.push((i, p[i + 4..i + 8].try_into().unwrap(), i + 8..i + 8 + len));
            i += 12 + len;
        }
        out
    }

    #[test]
    fn a_png_with_missing_image_data_or_a_bad_crc_is_refused() {
        let l = ImageLimits::default();
        for (name, p) in testdata("png") {
            let cs = chunks(&p);
            let (at, _, data) = cs.iter().find(|c| &c.1 == b"IDAT").unwrap().clone();
            let iend = &p[cs.iter().find(|c| &c.1 == b"IEND").unwrap().0..];
            // IDAT cut to half its data (length and CRC made consistent), then IEND.
            let half = (data.end - data.start) / 2;
            let mut t = p[..at].to_vec();
            t.extend_from_slice(&(half as u32).to_be_bytes());
            t.extend_from_slice(b"IDAT");
            t.extend_from_slice(&p[data.start..data.start + half]);
            t.extend_from_slice(&crc32(&t[at + 4..]).to_be_bytes());
            t.extend_from_slice(iend);
            let got = decode_rgb(&t, &l);
            assert!(
                matches!(got, Err(ExtractError::Undecodable(_))),
                "{name}: {:?}",
                got.map(|_| ())
            );
            // One flipped bit in the image data: the chunk CRC no longer matches.
            let mut bad = p.clone();
            bad[data.start + half] ^= 0x10;
            let got = decode_rgb(&bad, &l);
            assert!(
                matches!(got, Err(ExtractError::Undecodable(_))),
                "{name}: {:?}",
                got.map(|_| ())
            );
            // The file cut just before IEND.
            let cut = &p[..p.len() - iend.len()];
            assert!(matches!(decode_rgb(cut, &l), Err(ExtractError::Undecodable(_))), "{name}");
        }
    }

    #[test]
    fn a_png_bomb_is_refused_from_its_header() {
        // A valid PNG header declaring 60 000 x 60 000 pixels, in a few hundred bytes.
        let mut p = png(1, 1);
        assert!(p.len() < 400);
        // IHDR width/height live at bytes 16..24; the IHDR CRC (bytes 29..33) must match.
        p[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let l = ImageLimits::default();
        let got = decode_rgb(&p, &l);
        assert!(matches!(got, Err(ExtractError::TooLarge { width: 60_000, .. })), "{got:?}");
        // With the side limit out of the way the pixel limit refuses it, from the header too:
        // probe reads 33 bytes and its cost says what decoding would have taken.
        let wide = ImageLimits { max_side: 65_535, ..l };
        let got = probe(&p, &wide);
        assert!(matches!(got, Err(ExtractError::TooManyPixels { width: 60_000, .. })), "{got:?}");
        let all = ImageLimits { max_pixels: u64::MAX, ..wide };
        assert!(probe(&p, &all).unwrap().decode_cost > 60_000 * 60_000 * 3);
    }

    #[test]
    fn a_jpeg_bomb_is_refused_from_its_header() {
        let (_, mut b) =
            testdata("jpg").into_iter().find(|(n, _)| n == "progressive-444.jpg").unwrap();
        // The SOF2 segment: FF C2, length, precision, height, width.
        let sof = b.windows(2).position(|w| w == [0xFF, 0xC2]).unwrap();
        b[sof + 5..sof + 7].copy_from_slice(&5999u16.to_be_bytes());
        b[sof + 7..sof + 9].copy_from_slice(&5999u16.to_be_bytes());
        let l = ImageLimits::default();
        let got = decode_rgb(&b, &l);
        assert!(matches!(got, Err(ExtractError::TooManyPixels { width: 5999, .. })), "{got:?}");
        let h = probe(&b, &ImageLimits { max_pixels: u64::MAX, ..l }).unwrap();
        // Planes, coefficients and output of a progressive 4:4:4 image: at least 12 bytes a pixel.
        assert!(h.decode_cost >= 5999 * 5999 * 12, "{}", h.decode_cost);
    }

    fn crc32(b: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &x in b {
            c ^= u32::from(x);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
}
