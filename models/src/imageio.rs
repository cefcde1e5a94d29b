//! Bounded image decoding: a byte limit before decoding, a pixel limit read from the header
//! before any pixel buffer is allocated (a "PNG bomb" declaring 100 000 × 100 000 pixels is
//! refused without allocating), and an allocation limit inside the decoder.
//!
//! JPEGs are decoded with `jpeg-decoder`, whose chroma upsampling and IDCT follow libjpeg: the
//! embeddings then agree with a libjpeg-based reference (Pillow) to cosine ≥ 0.999, where the
//! `image` crate's default JPEG decoder gave 0.998 on one test photo. A JPEG must end with its
//! end-of-image marker: decoders silently grey-fill a truncated file, which must not be enrolled.

use crate::ExtractError;
use image::{GrayImage, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// Limits on accepted images.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageLimits {
    pub max_bytes: usize,
    /// Largest accepted width and height.
    pub max_side: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_bytes: 10 << 20, max_side: 6000 }
    }
}

/// Decode JPEG or PNG into RGB8 (an alpha channel is dropped).
pub fn decode_rgb(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ExtractError> {
    Ok(match decode_dynamic(bytes, limits)? {
        Decoded::Rgb(rgb) => rgb,
        Decoded::Png(img) => img.into_rgb8(),
    })
}

/// Decode JPEG or PNG into 8-bit grey. Transparent pixels are composited onto white, the
/// background of a fingerprint scan.
pub fn decode_gray(bytes: &[u8], limits: &ImageLimits) -> Result<GrayImage, ExtractError> {
    Ok(match decode_dynamic(bytes, limits)? {
        Decoded::Rgb(rgb) => image::DynamicImage::ImageRgb8(rgb).into_luma8(),
        Decoded::Png(img) if img.color().has_alpha() => {
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
        Decoded::Png(img) => img.into_luma8(),
    })
}

enum Decoded {
    Rgb(RgbImage),
    Png(image::DynamicImage),
}

fn decode_dynamic(bytes: &[u8], limits: &ImageLimits) -> Result<Decoded, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ExtractError::TooManyBytes { got: bytes.len(), max: limits.max_bytes });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ExtractError::Undecodable(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => return Err(ExtractError::Undecodable("not a JPEG or PNG".into())),
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        return decode_jpeg(bytes, limits).map(Decoded::Rgb);
    }
    let (w, h) = reader.into_dimensions().map_err(|e| ExtractError::Undecodable(e.to_string()))?;
    if w > limits.max_side || h > limits.max_side || w == 0 || h == 0 {
        return Err(ExtractError::TooLarge {
            width: w.into(),
            height: h.into(),
            max: limits.max_side,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ExtractError::Undecodable(e.to_string()))?;
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side);
    l.max_image_height = Some(limits.max_side);
    // RGBA8 of the largest accepted image, plus decoder slack.
    l.max_alloc = Some(u64::from(limits.max_side).pow(2) * 4 + (64 << 20));
    reader.limits(l);
    let img = reader.decode().map_err(|e| ExtractError::Undecodable(e.to_string()))?;
    Ok(Decoded::Png(img))
}

fn decode_jpeg(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage, ExtractError> {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        return Err(ExtractError::Undecodable("truncated JPEG: no end-of-image marker".into()));
    }
    let bad = |e: jpeg_decoder::Error| ExtractError::Undecodable(e.to_string());
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.read_info().map_err(bad)?;
    let info =
        d.info().ok_or_else(|| ExtractError::Undecodable("JPEG without a frame header".into()))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if w > limits.max_side || h > limits.max_side || w == 0 || h == 0 {
        return Err(ExtractError::TooLarge {
            width: w.into(),
            height: h.into(),
            max: limits.max_side,
        });
    }
    d.set_max_decoding_buffer_size(limits.max_side as usize * limits.max_side as usize * 4);
    let px = d.decode().map_err(bad)?;
    let rgb: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => px,
        jpeg_decoder::PixelFormat::L8 => px.iter().flat_map(|&g| [g, g, g]).collect(),
        jpeg_decoder::PixelFormat::L16 => {
            px.chunks_exact(2).flat_map(|c| [c[0], c[0], c[0]]).collect()
        }
        jpeg_decoder::PixelFormat::CMYK32 => px
            .chunks_exact(4)
            .flat_map(|c| {
                let k = u16::from(c[3]);
                [c[0], c[1], c[2]].map(|v| (u16::from(v) * k / 255) as u8)
            })
            .collect(),
    };
    RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| ExtractError::Undecodable("JPEG pixel data has the wrong size".into()))
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
    }

    #[test]
    fn a_png_bomb_is_refused_from_its_header() {
        // A valid PNG header declaring 100 000 x 100 000 pixels, with almost no data.
        let mut p = png(1, 1);
        // IHDR width/height live at bytes 16..24; the IHDR CRC (bytes 29..33) must match.
        p[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        p[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let got = decode_rgb(&p, &ImageLimits::default());
        assert!(matches!(got, Err(ExtractError::TooLarge { width: 100_000, .. })), "{got:?}");
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
