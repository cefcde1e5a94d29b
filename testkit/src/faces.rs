//! Synthetic damage to real face photos, for the quality-gate tests.

use std::io::Cursor;

/// `photo` with a hand-sized, skin-coloured patch over the mouth and chin (PNG): the colour is
/// the face's own cheek (below the right eye), shaded top to bottom with darker creases between
/// "fingers", from just below the nose to below the chin, 1.7 inter-eye distances wide.
/// `landmarks`: right eye, left eye, nose tip, right and left mouth corners (YuNet's order).
pub fn cover_mouth(photo: &[u8], landmarks: &[[f32; 2]; 5]) -> Vec<u8> {
    cover(photo, landmarks, 0.4)
}

/// `photo` with the same patch reaching up over the nose to just below the eyes (a mask, or a
/// hand over nose and mouth).
pub fn cover_nose_and_mouth(photo: &[u8], landmarks: &[[f32; 2]; 5]) -> Vec<u8> {
    cover(photo, landmarks, 0.95)
}

/// The patch from `top` inter-eye distances above the mouth line to 0.65 below it.
fn cover(photo: &[u8], landmarks: &[[f32; 2]; 5], top: f32) -> Vec<u8> {
    let mut img = image::load_from_memory(photo).expect("a decodable photo").to_rgb8();
    let [re, le, _, rm, lm] = *landmarks;
    let d = ((le[0] - re[0]).powi(2) + (le[1] - re[1]).powi(2)).sqrt();
    let (mx, my) = ((rm[0] + lm[0]) / 2.0, (rm[1] + lm[1]) / 2.0);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let clampx = |v: f32| (v.round() as i64).clamp(0, w - 1) as u32;
    let clampy = |v: f32| (v.round() as i64).clamp(0, h - 1) as u32;
    // The cheek's mean colour.
    let skin = mean_colour(&img, re[0], re[1] + 0.45 * d, 0.1 * d);
    let (x0, x1) = (clampx(mx - 0.85 * d), clampx(mx + 0.85 * d));
    let (y0, y1) = (clampy(my - top * d), clampy(my + 0.65 * d));
    let crease = (0.22 * d).max(2.0);
    for y in y0..=y1 {
        let t = (y - y0) as f32 / (y1 - y0).max(1) as f32;
        let in_crease = ((y as f32 - y0 as f32) % crease) < 1.0;
        let shade = (1.05 - 0.2 * t) * if in_crease { 0.85 } else { 1.0 };
        for x in x0..=x1 {
            let p = skin.map(|s| (s * shade).clamp(0.0, 255.0) as u8);
            img.put_pixel(x, y, image::Rgb(p));
        }
    }
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).expect("PNG encoding");
    out
}

/// `photo` with both eyes shut (PNG): over each eye an almond of its cheek's colour, a shade
/// darker (the upper lid), 0.5 inter-eye distances wide, shaded darker towards its lower
/// edge, which is a dark lash line 0.035 inter-eye distances thick (at least 1.5 px), 0.04 below
/// YuNet's eye point at the corners and 0.1 at the middle: a closed eye with the lashes still
/// showing, the case a measure of "dark pixels in the eye box" alone cannot tell from an open one.
pub fn close_eyes(photo: &[u8], landmarks: &[[f32; 2]; 5]) -> Vec<u8> {
    let mut img = image::load_from_memory(photo).expect("a decodable photo").to_rgb8();
    let [re, le, ..] = *landmarks;
    let d = ((le[0] - re[0]).powi(2) + (le[1] - re[1]).powi(2)).sqrt();
    let (w, h) = (img.width() as i64, img.height() as i64);
    let a = 0.25 * d;
    let lash = (0.035 * d).max(1.5);
    for e in [re, le] {
        // Lids are a shade darker than the cheek below the eye.
        let skin = mean_colour(&img, e[0], e[1] + 0.45 * d, 0.1 * d).map(|c| 0.9 * c);
        let (x0, x1) = ((e[0] - a).floor() as i64, (e[0] + a).ceil() as i64);
        // From 0.12 inter-eye distances above YuNet's eye point (which marks the visible eye's
        // upper half) down to a lash line 0.04 below it at the corners, 0.1 at the middle.
        let (y0, y1) = ((e[1] - 0.12 * d).floor() as i64, (e[1] + 0.1 * d + lash).ceil() as i64);
        for y in y0.max(0)..=y1.min(h - 1) {
            for x in x0.max(0)..=x1.min(w - 1) {
                let u = (x as f32 - e[0]) / a;
                if u.abs() > 1.0 {
                    continue;
                }
                // The lid's lower edge: a curve through the corners sagging at the middle.
                let edge = e[1] + 0.04 * d + 0.06 * d * (1.0 - u * u);
                let top = e[1] - 0.12 * d * (1.0 - u * u).sqrt();
                let yf = y as f32;
                if yf < top || yf > edge + lash {
                    continue;
                }
                let colour = if yf > edge {
                    skin.map(|s| s * 0.25)
                } else {
                    let t = (yf - top) / (edge - top).max(1.0);
                    skin.map(|s| s * (1.0 - 0.15 * t))
                };
                img.put_pixel(x as u32, y as u32, image::Rgb(colour.map(|c| c as u8)));
            }
        }
    }
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).expect("PNG encoding");
    out
}

/// The mean colour of the square of half-side `r` around (`cx`, `cy`), clipped to the image.
fn mean_colour(img: &image::RgbImage, cx: f32, cy: f32, r: f32) -> [f32; 3] {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let clampx = |v: f32| (v.round() as i64).clamp(0, w - 1) as u32;
    let clampy = |v: f32| (v.round() as i64).clamp(0, h - 1) as u32;
    let mut sum = [0f32; 3];
    let mut n = 0f32;
    for y in clampy(cy - r)..=clampy(cy + r) {
        for x in clampx(cx - r)..=clampx(cx + r) {
            let p = img.get_pixel(x, y);
            for c in 0..3 {
                sum[c] += f32::from(p[c]);
            }
            n += 1.0;
        }
    }
    sum.map(|s| s / n.max(1.0))
}
