//! Face capture quality: per-capture measures, and the gate that refuses a capture which is unfit
//! for a use, saying which measure failed so the client can ask for a retake.
//!
//! The measures follow the list of ISO/IEC 29794-5 and BSI's OFIQ, computed from YuNet's five
//! landmarks and the aligned 112×112 crop the embedder sees, except `eye_aperture`, which needs
//! learned eyelid landmarks ([`super::eyes`]; set by the extractor, not by [`measure`]):
//!
//! | measure | how | unit |
//! | --- | --- | --- |
//! | `inter_eye_px` | distance between the eye landmarks in the original image | pixels |
//! | `yaw_deg`, `pitch_deg` | weak-perspective pose of a generic 3-D five-point face (eyes and mouth corners in one plane, nose tip [`NOSE_DEPTH`] in front of it): in the roll-free frame the nose's offset from the centroid of the other four points, over the inter-eye (yaw) or eye–mouth (pitch) distance, is `depth·tan(angle)` | degrees |
//! | `roll_deg` | angle of the eye line | degrees |
//! | `sharpness` | variance of the Laplacian of the grey crop | grey levels² |
//! | `exposure` | mean grey level of the inner face | 0–255 |
//! | `clipped` | share of inner-face pixels at ≤ 8 or ≥ 247 | 0–1 |
//! | `illumination_uniformity` | mean grey of the darker face half over the brighter one | 0–1 |
//! | `occlusion_eyes` | a visible pupil/iris is much darker than the skin; a hand, hair or a reflection over it is not: the 5th-percentile grey of a box on each eye over the upper cheeks' median grey; the worse eye counts | ratio |
//! | `occlusion_mouth` | the lesser of the lip line's darkness (the same ratio on the lip line) and `1 − lip redness / 0.15` (lips are redder than skin in pseudo-hue R/(R+G), light closed lips included; a hand is skin-coloured): covered only when neither dark lip line nor red lips show | 0 (visible) – 1+ |
//! | `occlusion_nose` | `1 − nose edges / 0.5`: the nose's sides make vertical edges, a mask or hand does not (mean horizontal gradient of the nose box over the inner face's mean gradient) | 0 (visible) – 1 |
//! | `eyes_open` | within a tight box on each eye, (95th − 5th percentile grey) over the cheeks' median grey: an open eye shows dark iris beside white sclera; the lower eye counts | ratio |
//! | `eye_aperture` | only with the eye model ([`super::eyes`], on by default): lid-to-lid distance over the eye's width from learned eyelid landmarks; the lower eye counts. The one measure that tells a shut lid with dark lashes from an open eye | ratio (open ≈ 0.15–0.30, shut ≤ 0.11) |
//! | `mouth_open` | share of the inner-mouth box darker than 0.45 × the cheeks' median | 0–1 |
//! | `mouth_width` | mouth-corner distance over inter-eye distance (a smile widens it; neutral ≈ 0.83 on the template) | ratio |
//!
//! What each use requires is [`Thresholds::for_use`]: eKYC verification is unattended and
//! strict; an enrollment capture is the reference every later comparison uses and is strict on
//! pose, occlusion and expression; a 1:N probe is lenient (a poor probe still gives candidates
//! for a person to adjudicate). The values and how they were set are in `docs/face-quality.md`.

use super::align::{SIZE, TEMPLATE};
use super::detect::Face;
use serde::{Deserialize, Serialize};

/// Nose-tip depth in front of the eye/mouth plane over the inter-eye distance (30 mm / 62 mm on
/// an average adult head).
pub const NOSE_DEPTH: f32 = 30.0 / 62.0;
/// Nose-tip depth over the eye–mouth distance (30 mm / 72 mm).
const NOSE_DEPTH_VERTICAL: f32 = 30.0 / 72.0;
/// Lip pseudo-hue above the cheeks' that counts as a fully visible mouth (clean photos measured
/// 0.026–0.42, a skin-coloured hand −0.01–0.04).
const LIP_REDNESS: f32 = 0.15;
/// Nose-box horizontal gradient over the inner face's gradient that counts as a fully visible
/// nose (clean photos measured 0.30–0.94, a mask 0.01–0.19).
const NOSE_EDGES: f32 = 0.5;
/// The smallest `eye_aperture` verification and enrollment accept: real shut eyes measured
/// 0.065–0.084 and painted shut ones 0.036–0.108; open eyes looking at the camera 0.148 (a
/// laughing squint) and 0.169–0.279 (`docs/face-quality.md`).
pub const EYE_APERTURE_MIN: f32 = 0.13;

/// The measures of one capture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceMeasures {
    pub inter_eye_px: f32,
    pub yaw_deg: f32,
    pub pitch_deg: f32,
    pub roll_deg: f32,
    pub sharpness: f32,
    pub exposure: f32,
    pub clipped: f32,
    pub illumination_uniformity: f32,
    pub occlusion_eyes: f32,
    pub occlusion_nose: f32,
    pub occlusion_mouth: f32,
    pub eyes_open: f32,
    /// `None` where the eye model is off ([`super::FaceConfig::eye_model`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eye_aperture: Option<f32>,
    pub mouth_open: f32,
    pub mouth_width: f32,
}

/// What a capture is for; each use has its own thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureUse {
    /// 1:1 verification (bank eKYC: a selfie or chip photo, unattended).
    Verify,
    /// The enrolled reference.
    Enroll,
    /// A 1:N search probe.
    Identify,
}

impl CaptureUse {
    pub const ALL: [CaptureUse; 3] = [CaptureUse::Verify, CaptureUse::Enroll, CaptureUse::Identify];

    pub fn as_str(self) -> &'static str {
        match self {
            CaptureUse::Verify => "verify",
            CaptureUse::Enroll => "enroll",
            CaptureUse::Identify => "identify",
        }
    }
}

/// The limits of one use. `None`: that measure is not checked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    pub min_inter_eye_px: Option<f32>,
    pub max_yaw_deg: Option<f32>,
    pub max_pitch_deg: Option<f32>,
    pub max_roll_deg: Option<f32>,
    pub min_sharpness: Option<f32>,
    pub min_exposure: Option<f32>,
    pub max_exposure: Option<f32>,
    pub max_clipped: Option<f32>,
    pub min_illumination_uniformity: Option<f32>,
    pub max_occlusion_eyes: Option<f32>,
    pub max_occlusion_nose: Option<f32>,
    pub max_occlusion_mouth: Option<f32>,
    pub min_eyes_open: Option<f32>,
    pub min_eye_aperture: Option<f32>,
    pub max_mouth_open: Option<f32>,
    pub max_mouth_width: Option<f32>,
}

/// Which side of a limit a measure must stay on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Min,
    Max,
}

/// One measure outside its limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityFailure {
    /// The measure's name, as in [`FaceMeasures`].
    pub measure: String,
    pub value: f32,
    pub limit: f32,
    pub bound: Bound,
    /// What the person in front of the camera can do about it.
    pub advice: String,
}

impl Thresholds {
    /// The built-in limits of a use (see `docs/face-quality.md` for where each comes from).
    pub fn for_use(u: CaptureUse) -> Thresholds {
        // Verification and enrollment share the strict set: both must show the whole face,
        // frontal, neutral and well lit; a 1:N probe keeps only what makes it useless.
        let strict = Thresholds {
            min_inter_eye_px: Some(32.0),
            max_yaw_deg: Some(20.0),
            max_pitch_deg: Some(25.0),
            max_roll_deg: Some(20.0),
            min_sharpness: Some(50.0),
            min_exposure: Some(50.0),
            max_exposure: Some(210.0),
            max_clipped: Some(0.15),
            min_illumination_uniformity: Some(0.5),
            max_occlusion_eyes: Some(0.6),
            max_occlusion_nose: Some(0.6),
            max_occlusion_mouth: Some(0.75),
            // Superseded by `eye_aperture`: it missed shut eyes with dark lashes and refused
            // open ones in the 1927 photo; still measured, and a limit can be configured.
            min_eyes_open: None,
            min_eye_aperture: Some(EYE_APERTURE_MIN),
            max_mouth_open: Some(0.25),
            max_mouth_width: Some(1.1),
        };
        match u {
            CaptureUse::Verify => strict,
            CaptureUse::Enroll => Thresholds { max_roll_deg: Some(15.0), ..strict },
            CaptureUse::Identify => Thresholds {
                min_inter_eye_px: Some(20.0),
                max_yaw_deg: Some(45.0),
                max_pitch_deg: Some(40.0),
                max_roll_deg: Some(45.0),
                min_sharpness: Some(10.0),
                min_exposure: Some(25.0),
                max_exposure: Some(235.0),
                max_clipped: Some(0.5),
                min_illumination_uniformity: None,
                max_occlusion_eyes: Some(0.8),
                max_occlusion_nose: None,
                max_occlusion_mouth: None,
                min_eyes_open: None,
                min_eye_aperture: None,
                max_mouth_open: None,
                max_mouth_width: None,
            },
        }
    }

    /// These limits with every limit `overrides` sets replacing the one here.
    pub fn merged(&self, overrides: &Thresholds) -> Thresholds {
        let pick = |o: Option<f32>, d: Option<f32>| o.or(d);
        Thresholds {
            min_inter_eye_px: pick(overrides.min_inter_eye_px, self.min_inter_eye_px),
            max_yaw_deg: pick(overrides.max_yaw_deg, self.max_yaw_deg),
            max_pitch_deg: pick(overrides.max_pitch_deg, self.max_pitch_deg),
            max_roll_deg: pick(overrides.max_roll_deg, self.max_roll_deg),
            min_sharpness: pick(overrides.min_sharpness, self.min_sharpness),
            min_exposure: pick(overrides.min_exposure, self.min_exposure),
            max_exposure: pick(overrides.max_exposure, self.max_exposure),
            max_clipped: pick(overrides.max_clipped, self.max_clipped),
            min_illumination_uniformity: pick(
                overrides.min_illumination_uniformity,
                self.min_illumination_uniformity,
            ),
            max_occlusion_eyes: pick(overrides.max_occlusion_eyes, self.max_occlusion_eyes),
            max_occlusion_nose: pick(overrides.max_occlusion_nose, self.max_occlusion_nose),
            max_occlusion_mouth: pick(overrides.max_occlusion_mouth, self.max_occlusion_mouth),
            min_eyes_open: pick(overrides.min_eyes_open, self.min_eyes_open),
            min_eye_aperture: pick(overrides.min_eye_aperture, self.min_eye_aperture),
            max_mouth_open: pick(overrides.max_mouth_open, self.max_mouth_open),
            max_mouth_width: pick(overrides.max_mouth_width, self.max_mouth_width),
        }
    }

    /// Every limit is a finite number.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in self.limits() {
            if let Some((l, _)) = v {
                if !l.is_finite() {
                    return Err(format!("{name}: the limit must be a finite number"));
                }
            }
        }
        Ok(())
    }

    /// (measure name, Some((limit, bound)) or None, the measured value).
    fn limits(&self) -> [(&'static str, Option<(f32, Bound)>); 16] {
        let min = |v: Option<f32>| v.map(|l| (l, Bound::Min));
        let max = |v: Option<f32>| v.map(|l| (l, Bound::Max));
        [
            ("inter_eye_px", min(self.min_inter_eye_px)),
            ("yaw_deg", max(self.max_yaw_deg)),
            ("pitch_deg", max(self.max_pitch_deg)),
            ("roll_deg", max(self.max_roll_deg)),
            ("sharpness", min(self.min_sharpness)),
            ("exposure", min(self.min_exposure)),
            ("exposure", max(self.max_exposure)),
            ("clipped", max(self.max_clipped)),
            ("illumination_uniformity", min(self.min_illumination_uniformity)),
            ("occlusion_eyes", max(self.max_occlusion_eyes)),
            ("occlusion_nose", max(self.max_occlusion_nose)),
            ("occlusion_mouth", max(self.max_occlusion_mouth)),
            ("eyes_open", min(self.min_eyes_open)),
            ("eye_aperture", min(self.min_eye_aperture)),
            ("mouth_open", max(self.max_mouth_open)),
            ("mouth_width", max(self.max_mouth_width)),
        ]
    }

    /// The measures outside these limits (empty: the capture passes). Angles are compared by
    /// magnitude; a measure that was not taken (`eye_aperture` without the eye model) is not
    /// checked.
    pub fn check(&self, m: &FaceMeasures) -> Vec<QualityFailure> {
        let mut out = Vec::new();
        for (name, limit) in self.limits() {
            let Some((limit, bound)) = limit else { continue };
            let Some(value) = m.value(name) else { continue };
            let compared = if name.ends_with("_deg") { value.abs() } else { value };
            // A NaN measure (a degenerate crop) fails every limit it has.
            let bad = match bound {
                Bound::Min => compared.is_nan() || compared < limit,
                Bound::Max => compared.is_nan() || compared > limit,
            };
            if bad {
                out.push(QualityFailure {
                    measure: name.to_string(),
                    value,
                    limit,
                    bound,
                    advice: advice(name, bound).to_string(),
                });
            }
        }
        out
    }
}

fn advice(measure: &str, bound: Bound) -> &'static str {
    match (measure, bound) {
        ("inter_eye_px", _) => "move closer to the camera or use a higher resolution",
        ("yaw_deg", _) => "face the camera (the head is turned sideways)",
        ("pitch_deg", _) => "face the camera (the head is tilted up or down)",
        ("roll_deg", _) => "hold the head upright",
        ("sharpness", _) => "hold still and focus: the image is blurred",
        ("exposure", Bound::Min) => "add light: the face is too dark",
        ("exposure", Bound::Max) => "reduce the light: the face is too bright",
        ("clipped", _) => "avoid glare and deep shadow on the face",
        ("illumination_uniformity", _) => "light the face evenly (one side is in shadow)",
        ("occlusion_eyes", _) => "uncover the eyes (glasses, hair, hands)",
        ("occlusion_nose", _) => "uncover the nose (mask, hands)",
        ("occlusion_mouth", _) => "uncover the mouth (mask, hand, scarf)",
        ("eyes_open" | "eye_aperture", _) => "open the eyes and look at the camera",
        ("mouth_open", _) => "close the mouth (neutral expression)",
        ("mouth_width", _) => "keep a neutral expression (no smile)",
        _ => "retake the photo",
    }
}

impl FaceMeasures {
    #[cfg(test)]
    fn zero() -> FaceMeasures {
        FaceMeasures {
            inter_eye_px: 0.0,
            yaw_deg: 0.0,
            pitch_deg: 0.0,
            roll_deg: 0.0,
            sharpness: 0.0,
            exposure: 0.0,
            clipped: 0.0,
            illumination_uniformity: 0.0,
            occlusion_eyes: 0.0,
            occlusion_nose: 0.0,
            occlusion_mouth: 0.0,
            eyes_open: 0.0,
            eye_aperture: None,
            mouth_open: 0.0,
            mouth_width: 0.0,
        }
    }

    /// Measures inside every built-in limit (no eye model).
    #[cfg(test)]
    fn passing() -> FaceMeasures {
        FaceMeasures {
            inter_eye_px: 100.0,
            sharpness: 100.0,
            exposure: 120.0,
            illumination_uniformity: 0.9,
            eyes_open: 1.0,
            mouth_width: 0.8,
            ..FaceMeasures::zero()
        }
    }

    /// A measure by name (NaN for one that was not taken or does not exist).
    pub fn get(&self, name: &str) -> f32 {
        self.value(name).unwrap_or(f32::NAN)
    }

    /// A measure by name; `None` for one that was not taken (`eye_aperture` without the eye
    /// model).
    pub fn value(&self, name: &str) -> Option<f32> {
        if name == "eye_aperture" {
            return self.eye_aperture;
        }
        Some(match name {
            "inter_eye_px" => self.inter_eye_px,
            "yaw_deg" => self.yaw_deg,
            "pitch_deg" => self.pitch_deg,
            "roll_deg" => self.roll_deg,
            "sharpness" => self.sharpness,
            "exposure" => self.exposure,
            "clipped" => self.clipped,
            "illumination_uniformity" => self.illumination_uniformity,
            "occlusion_eyes" => self.occlusion_eyes,
            "occlusion_nose" => self.occlusion_nose,
            "occlusion_mouth" => self.occlusion_mouth,
            "eyes_open" => self.eyes_open,
            "mouth_open" => self.mouth_open,
            "mouth_width" => self.mouth_width,
            _ => f32::NAN,
        })
    }
}

/// Yaw, pitch and roll in degrees from the five landmarks (right eye, left eye, nose tip, right
/// mouth corner, left mouth corner). Positive yaw: the nose points to the image's right; positive
/// pitch: the nose is low (chin down); positive roll: the eye line descends to the image's right.
pub fn pose(lm: &[[f32; 2]; 5]) -> (f32, f32, f32) {
    let [re, le, nose, rm, lm_] = *lm;
    let roll = (le[1] - re[1]).atan2(le[0] - re[0]);
    let (c, s) = (roll.cos(), roll.sin());
    // Rotate by −roll so the eyes lie on a horizontal line.
    let rot = |p: [f32; 2]| [c * p[0] + s * p[1], -s * p[0] + c * p[1]];
    let [re, le, nose, rm, lm_] = [rot(re), rot(le), rot(nose), rot(rm), rot(lm_)];
    let inter_eye = (le[0] - re[0]).abs().max(1e-3);
    let eye_y = (re[1] + le[1]) / 2.0;
    let mouth_y = (rm[1] + lm_[1]) / 2.0;
    let eye_mouth = (mouth_y - eye_y).abs().max(1e-3);
    let cx = (re[0] + le[0] + rm[0] + lm_[0]) / 4.0;
    let cy = (eye_y + mouth_y) / 2.0;
    let yaw = ((nose[0] - cx) / inter_eye / NOSE_DEPTH).atan();
    // The template's own nose sits slightly off the centroid; that is the frontal pose.
    let t = &TEMPLATE;
    let t_cy = (t[0][1] + t[1][1] + t[3][1] + t[4][1]) / 4.0;
    let t_em = (t[3][1] + t[4][1] - t[0][1] - t[1][1]) / 2.0;
    let frontal = (t[2][1] - t_cy) / t_em;
    let pitch = ((nose[1] - cy) / eye_mouth - frontal) / NOSE_DEPTH_VERTICAL;
    (yaw.to_degrees(), pitch.atan().to_degrees(), roll.to_degrees())
}

/// Grey levels (ITU-R 601 luma) of an RGB NCHW crop.
pub fn grey(crop: &[f32]) -> Vec<f32> {
    let plane = SIZE * SIZE;
    (0..plane)
        .map(|i| 0.299 * crop[i] + 0.587 * crop[plane + i] + 0.114 * crop[2 * plane + i])
        .collect()
}

fn percentile(mut v: Vec<f32>, p: f32) -> f32 {
    v.sort_by(f32::total_cmp);
    sorted_percentile(&v, p)
}

/// The nearest-rank percentile `p` of values sorted ascending (NaN when there are none).
fn sorted_percentile(v: &[f32], p: f32) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    v[((v.len() - 1) as f32 * p).round() as usize]
}

fn pixels(g: &[f32], x0: usize, y0: usize, x1: usize, y1: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity((x1 - x0) * (y1 - y0));
    for y in y0..y1 {
        v.extend_from_slice(&g[y * SIZE + x0..y * SIZE + x1]);
    }
    v
}

/// Every measure of a detected face and its aligned crop (RGB NCHW 0–255, [`SIZE`]²).
pub fn measure(face: &Face, crop: &[f32]) -> FaceMeasures {
    let g = grey(crop);
    let (yaw_deg, pitch_deg, roll_deg) = pose(&face.landmarks);
    // Inner face: between the outer eye corners, from the brows to the chin.
    let inner = pixels(&g, 24, 36, 88, 108);
    let exposure = inner.iter().sum::<f32>() / inner.len() as f32;
    let clipped =
        inner.iter().filter(|&&v| !(8.0..=247.0).contains(&v)).count() as f32 / inner.len() as f32;
    let half = |x0, x1| {
        let p = pixels(&g, x0, 36, x1, 108);
        p.iter().sum::<f32>() / p.len() as f32
    };
    let (l, r) = (half(24, 56), half(56, 88));
    let illumination_uniformity = l.min(r) / l.max(r).max(1e-3);
    // Upper cheeks: below each eye, beside the nose.
    let mut cheeks = pixels(&g, 26, 62, 42, 74);
    cheeks.extend(pixels(&g, 70, 62, 86, 74));
    let skin = percentile(cheeks, 0.5).max(1.0);
    // A 16×10 box on each eye, sorted once: its 5th and 95th percentile grey.
    let eye = |c: [f32; 2]| {
        let (cx, cy) = (c[0].round() as usize, c[1].round() as usize);
        let mut p = pixels(&g, cx - 8, cy - 5, cx + 8, cy + 5);
        p.sort_by(f32::total_cmp);
        (sorted_percentile(&p, 0.05), sorted_percentile(&p, 0.95))
    };
    let eyes = [eye(TEMPLATE[0]), eye(TEMPLATE[1])];
    let eyes_open = eyes.iter().map(|(lo, hi)| (hi - lo) / skin).fold(f32::INFINITY, f32::min);
    // A visible pupil/iris or lip line is much darker than the skin around it; a hand, mask,
    // scarf or hair over it is not: the region's 5th-percentile grey over the cheeks' median.
    let dark = |x0: usize, y0: usize, x1: usize, y1: usize| {
        percentile(pixels(&g, x0, y0, x1, y1), 0.05) / skin
    };
    let occlusion_eyes = eyes.iter().map(|(lo, _)| lo / skin).fold(f32::NEG_INFINITY, f32::max);
    let (mx0, mx1) = (TEMPLATE[3][0].round() as usize + 4, TEMPLATE[4][0].round() as usize - 4);
    let my = ((TEMPLATE[3][1] + TEMPLATE[4][1]) / 2.0).round() as usize;
    let mouth = pixels(&g, mx0, my - 6, mx1, my + 8);
    let mouth_open = mouth.iter().filter(|&&v| v < 0.45 * skin).count() as f32 / mouth.len() as f32;
    // Lips are redder than skin (pseudo-hue R/(R+G)), closed light lips included; a hand is the
    // skin's colour and a mask rarely lip-red: the 90th percentile of the mouth band's
    // pseudo-hue above the cheeks' median, LIP_REDNESS meaning fully visible.
    let plane = SIZE * SIZE;
    let hue = |i: usize| crop[i] / (crop[i] + crop[plane + i]).max(1.0);
    let mut cheek_hue = Vec::with_capacity(2 * 16 * 12);
    for y in 62..74 {
        for x in (26..42).chain(70..86) {
            cheek_hue.push(hue(y * SIZE + x));
        }
    }
    let skin_hue = percentile(cheek_hue, 0.5);
    let mut lip_hue = Vec::with_capacity((mx1 - mx0) * 12);
    for y in my - 6..my + 6 {
        for x in mx0..mx1 {
            lip_hue.push(hue(y * SIZE + x) - skin_hue);
        }
    }
    let lips = 1.0 - (percentile(lip_hue, 0.9) / LIP_REDNESS).clamp(0.0, 1.0);
    let occlusion_mouth = dark(mx0, my - 6, mx1, my + 6).min(lips);
    // The nose's sides and shading make vertical edges; a mask or hand over it does not: the
    // nose box's mean horizontal gradient over the inner face's mean gradient, NOSE_EDGES
    // meaning fully visible.
    let grad = |x0: usize, y0: usize, x1: usize, y1: usize, vertical_too: bool| {
        let mut sum = 0f32;
        for y in y0..y1 {
            for x in x0..x1 {
                sum += (g[y * SIZE + x + 1] - g[y * SIZE + x - 1]).abs();
                if vertical_too {
                    sum += (g[(y + 1) * SIZE + x] - g[(y - 1) * SIZE + x]).abs();
                }
            }
        }
        sum / ((x1 - x0) * (y1 - y0)) as f32
    };
    let nose_edges = grad(44, 56, 68, 80, false) / grad(24, 36, 88, 108, true).max(1e-3);
    let occlusion_nose = 1.0 - (nose_edges / NOSE_EDGES).clamp(0.0, 1.0);
    let lm = &face.landmarks;
    let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let inter_eye_px = face.inter_eye();
    FaceMeasures {
        inter_eye_px,
        yaw_deg,
        pitch_deg,
        roll_deg,
        sharpness: super::align::sharpness(crop),
        exposure,
        clipped,
        illumination_uniformity,
        occlusion_eyes,
        occlusion_nose,
        occlusion_mouth,
        eyes_open,
        eye_aperture: None,
        mouth_open,
        mouth_width: dist(lm[3], lm[4]) / inter_eye_px.max(1e-3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face_at(lm: [[f32; 2]; 5]) -> Face {
        Face { score: 0.9, bbox: [0.0, 0.0, 112.0, 112.0], landmarks: lm }
    }

    #[test]
    fn the_template_is_frontal() {
        let (y, p, r) = pose(&TEMPLATE);
        assert!(y.abs() < 1.0 && p.abs() < 0.01 && r.abs() < 0.5, "{y} {p} {r}");
    }

    #[test]
    fn a_nose_shifted_sideways_reads_as_yaw_of_the_generic_head() {
        // Rotate the generic head by 30°: the nose moves by depth·sin, the eyes shrink by cos.
        let a = 30f32.to_radians();
        let mut lm = TEMPLATE;
        let cx = (lm[0][0] + lm[1][0] + lm[3][0] + lm[4][0]) / 4.0;
        for i in [0, 1, 3, 4] {
            lm[i][0] = cx + (lm[i][0] - cx) * a.cos();
        }
        let ie = (TEMPLATE[1][0] - TEMPLATE[0][0]) * a.cos();
        lm[2][0] = cx + NOSE_DEPTH * (ie / a.cos()) * a.sin();
        let (y, p, _) = pose(&lm);
        assert!((y - 30.0).abs() < 1.5 && p.abs() < 2.0, "yaw {y}, pitch {p}");
        // Mirrored: the other way.
        lm[2][0] = 2.0 * cx - lm[2][0];
        assert!((pose(&lm).0 + 30.0).abs() < 1.5);
    }

    #[test]
    fn roll_is_the_eye_line_angle() {
        let a = 25f32.to_radians();
        let lm = TEMPLATE.map(|p| {
            [
                a.cos() * (p[0] - 56.0) - a.sin() * (p[1] - 56.0),
                a.sin() * (p[0] - 56.0) + a.cos() * (p[1] - 56.0),
            ]
        });
        let (y, p, r) = pose(&lm);
        assert!((r - 25.0).abs() < 0.5 && y.abs() < 1.0 && p.abs() < 1.0, "{y} {p} {r}");
    }

    #[test]
    fn the_gate_names_each_measure_outside_its_limits() {
        let t = Thresholds::for_use(CaptureUse::Verify);
        let mut m = FaceMeasures::passing();
        assert_eq!(t.check(&m), vec![]);
        m.yaw_deg = -35.0;
        m.occlusion_mouth = 0.9;
        m.exposure = f32::NAN;
        let names: Vec<String> = t.check(&m).into_iter().map(|f| f.measure).collect();
        assert_eq!(names, ["yaw_deg", "exposure", "exposure", "occlusion_mouth"]);
        // The probe profile tolerates that yaw.
        let probe = Thresholds::for_use(CaptureUse::Identify);
        m.exposure = 120.0;
        assert!(probe.check(&m).is_empty());
    }

    #[test]
    fn eye_aperture_is_checked_only_where_it_was_measured() {
        let t = Thresholds::for_use(CaptureUse::Verify);
        let mut m = FaceMeasures::passing();
        // Without the eye model: nothing to check.
        assert!(t.check(&m).is_empty());
        assert!(m.get("eye_aperture").is_nan());
        m.eye_aperture = Some(0.05);
        let f = t.check(&m);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].measure.as_str(), f[0].bound), ("eye_aperture", Bound::Min));
        assert_eq!(f[0].advice, "open the eyes and look at the camera");
        m.eye_aperture = Some(0.25);
        assert!(t.check(&m).is_empty());
        // A 1:N probe does not ask for open eyes.
        m.eye_aperture = Some(0.0);
        assert!(Thresholds::for_use(CaptureUse::Identify).check(&m).is_empty());
        // Serialised only when measured.
        m.eye_aperture = None;
        assert!(!serde_json::to_string(&m).unwrap().contains("eye_aperture"));
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let base = Thresholds::for_use(CaptureUse::Verify);
        let o = Thresholds { max_yaw_deg: Some(10.0), ..Thresholds::default() };
        let m = base.merged(&o);
        assert_eq!(m.max_yaw_deg, Some(10.0));
        assert_eq!(m.max_pitch_deg, base.max_pitch_deg);
        assert!(Thresholds { min_sharpness: Some(f32::NAN), ..Thresholds::default() }
            .validate()
            .is_err());
    }

    #[test]
    fn a_skin_coloured_patch_over_the_mouth_reads_as_occluded() {
        // A synthetic face: dark pupils, nostrils and lip line on skin-grey.
        let mut g = vec![180f32; SIZE * SIZE];
        for (cx, cy, rx, ry) in
            [(38, 52, 3, 3), (73, 52, 3, 3), (50, 76, 2, 1), (62, 76, 2, 1), (56, 92, 13, 1)]
        {
            for y in cy - ry..=cy + ry {
                for x in cx - rx..=cx + rx {
                    g[y * SIZE + x] = 40.0;
                }
            }
        }
        let face = face_at(TEMPLATE);
        let crop: Vec<f32> = g.iter().chain(&g).chain(&g).copied().collect();
        let m = measure(&face, &crop);
        assert!(
            m.occlusion_mouth < 0.5 && m.occlusion_eyes < 0.5 && m.occlusion_nose < 0.5,
            "{m:?}"
        );
        for y in 80..108 {
            for x in 26..86 {
                g[y * SIZE + x] = 170.0 - (y % 6) as f32;
            }
        }
        let crop: Vec<f32> = g.iter().chain(&g).chain(&g).copied().collect();
        let m = measure(&face, &crop);
        assert!(m.occlusion_mouth > 0.8 && m.occlusion_eyes < 0.5, "{m:?}");
        let failures = Thresholds::for_use(CaptureUse::Verify).check(&m);
        assert!(failures.iter().any(|f| f.measure == "occlusion_mouth"), "{failures:?}");
    }
}
