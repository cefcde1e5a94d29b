//! Approximate minutiae of a ridge pattern: binarise, thin (Zhang & Suen 1984), and read ridge
//! endings and bifurcations from the crossing number of each skeleton pixel.

use serde::{Deserialize, Serialize};

/// Kind of a minutia.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MinutiaKind {
    /// A ridge ends.
    Ending,
    /// A ridge splits in two.
    Bifurcation,
}

/// A minutia position in master pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Minutia {
    /// Column.
    pub x: f32,
    /// Row.
    pub y: f32,
    /// Ending or bifurcation.
    pub kind: MinutiaKind,
}

/// The 8 neighbours of a pixel in clockwise order starting north.
const NB: [(i32, i32); 8] = [(0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1)];

fn thin(img: &mut [u8], w: usize, h: usize) {
    let mut marked = Vec::new();
    loop {
        let mut changed = false;
        for step in 0..2 {
            marked.clear();
            for y in 1..h - 1 {
                for x in 1..w - 1 {
                    if img[y * w + x] == 0 {
                        continue;
                    }
                    let p: Vec<u8> = NB
                        .iter()
                        .map(|&(dx, dy)| {
                            img[(y as i32 + dy) as usize * w + (x as i32 + dx) as usize]
                        })
                        .collect();
                    let b: u8 = p.iter().sum();
                    if !(2..=6).contains(&b) {
                        continue;
                    }
                    let a = (0..8).filter(|&i| p[i] == 0 && p[(i + 1) % 8] == 1).count();
                    if a != 1 {
                        continue;
                    }
                    // p[0]=N, p[2]=E, p[4]=S, p[6]=W.
                    let ok = if step == 0 {
                        p[0] * p[2] * p[4] == 0 && p[2] * p[4] * p[6] == 0
                    } else {
                        p[0] * p[2] * p[6] == 0 && p[0] * p[4] * p[6] == 0
                    };
                    if ok {
                        marked.push(y * w + x);
                    }
                }
            }
            for &i in &marked {
                img[i] = 0;
            }
            changed |= !marked.is_empty();
        }
        if !changed {
            break;
        }
    }
}

pub(crate) fn detect(
    ridges: &[f32],
    w: usize,
    h: usize,
    inside: impl Fn(f32, f32) -> bool,
) -> Vec<Minutia> {
    let mut img: Vec<u8> = ridges.iter().map(|&r| u8::from(r > 0.0)).collect();
    for x in 0..w {
        img[x] = 0;
        img[(h - 1) * w + x] = 0;
    }
    for y in 0..h {
        img[y * w] = 0;
        img[y * w + w - 1] = 0;
    }
    thin(&mut img, w, h);
    let mut found = Vec::new();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            if img[y * w + x] == 0 || !inside(x as f32, y as f32) {
                continue;
            }
            let p: Vec<u8> = NB
                .iter()
                .map(|&(dx, dy)| img[(y as i32 + dy) as usize * w + (x as i32 + dx) as usize])
                .collect();
            let cn = (0..8).filter(|&i| p[i] != p[(i + 1) % 8]).count() / 2;
            let kind = match cn {
                1 => MinutiaKind::Ending,
                3 => MinutiaKind::Bifurcation,
                _ => continue,
            };
            found.push(Minutia { x: x as f32, y: y as f32, kind });
        }
    }
    // Drop pairs closer than 6 px: skeleton spurs and thinning artefacts, not minutiae.
    let mut keep = vec![true; found.len()];
    for i in 0..found.len() {
        for j in i + 1..found.len() {
            let (a, b) = (found[i], found[j]);
            if (a.x - b.x).powi(2) + (a.y - b.y).powi(2) < 36.0 {
                keep[i] = false;
                keep[j] = false;
            }
        }
    }
    found.into_iter().zip(keep).filter_map(|(m, k)| k.then_some(m)).collect()
}
