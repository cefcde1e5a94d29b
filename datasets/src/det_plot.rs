//! DET (detection error trade-off) plots as PNG files, for evaluation reports.
//!
//! Standard DET axes: the false match rate on a log10 axis from 10⁻⁶ to 1 (x), the false non-match
//! rate on a normal-deviate (probit) axis (y), so that Gaussian score distributions give straight
//! lines. Rendering uses plotters' bitmap backend; text is drawn with ab_glyph from the DejaVu Sans
//! TTF file at [`DEJAVU_SANS`] (Debian/Ubuntu package `fonts-dejavu-core`), registered once per
//! process. There is no system font lookup. This module writes exactly one file, the PNG asked for.

use biomatch_core::metrics::normal_quantile as probit;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// The font every label is drawn with.
pub const DEJAVU_SANS: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Size of the PNG [`det_png`] writes, in pixels.
pub const DET_PNG_SIZE: (u32, u32) = (1000, 800);
/// Curve colours, in curve order (repeating after eight): the Okabe–Ito colour-blind-safe set.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
    (0, 0, 0),
    (240, 228, 66),
];
/// Smallest FMR on the x axis; the axis ends at 1.
pub const MIN_FMR: f64 = 1e-6;

/// Font family name the DejaVu face is registered under (what plotters asks for by default).
const FAMILY: &str = "sans-serif";
/// Lowest and highest FNMR the y axis may span; the actual span adapts to the curves.
const MIN_FNMR: f64 = 1e-5;
const FNMR_TOPS: [f64; 4] = [0.5, 0.8, 0.95, 0.99];

/// One curve: operating points of one system.
#[derive(Clone, Debug, PartialEq)]
pub struct DetCurve {
    pub label: String,
    /// `(fmr, fnmr)` pairs, both in [0, 1], in any order (they are sorted by FMR to draw).
    pub points: Vec<(f64, f64)>,
}

/// Why a DET plot could not be written.
#[derive(Debug, Error)]
pub enum DetPlotError {
    #[error("font file {path} cannot be read (install the fonts-dejavu-core package): {source}")]
    FontMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("font file {path} is not a usable TrueType font")]
    BadFont { path: PathBuf },
    #[error("curve {curve}, point {point}: FMR and FNMR must be finite and within [0, 1]")]
    BadPoint { curve: usize, point: usize },
    #[error("drawing the DET plot failed: {0}")]
    Draw(String),
}

/// Draws `curves` on DET axes with a title, grid and legend, and writes a PNG of
/// [`DET_PNG_SIZE`] to `path`. Each curve joins its points in FMR order and is clipped where it
/// leaves the axes (an FMR below 10⁻⁶, an FNMR of 0 or below the y axis); a curve of one point is
/// drawn as a dot.
pub fn det_png(path: &Path, title: &str, curves: &[DetCurve]) -> Result<(), DetPlotError> {
    for (curve, c) in curves.iter().enumerate() {
        for (point, &(fmr, fnmr)) in c.points.iter().enumerate() {
            if !(0.0..=1.0).contains(&fmr) || !(0.0..=1.0).contains(&fnmr) {
                return Err(DetPlotError::BadPoint { curve, point });
            }
        }
    }
    ensure_font(Path::new(DEJAVU_SANS))?;
    draw(path, title, curves).map_err(|e| DetPlotError::Draw(e.to_string()))
}

/// Registers [`DEJAVU_SANS`] with plotters once per process (the bytes are leaked on success, as
/// plotters wants them `'static`).
fn ensure_font(path: &Path) -> Result<(), DetPlotError> {
    static REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if *registered {
        return Ok(());
    }
    let bytes = load_font(path)?;
    register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| DetPlotError::BadFont { path: path.to_owned() })?;
    *registered = true;
    Ok(())
}

fn load_font(path: &Path) -> Result<&'static [u8], DetPlotError> {
    let bytes = std::fs::read(path)
        .map_err(|source| DetPlotError::FontMissing { path: path.to_owned(), source })?;
    // TrueType and OpenType magics; anything else would only fail later, less clearly.
    if !matches!(bytes.get(..4), Some([0, 1, 0, 0] | b"OTTO" | b"true")) {
        return Err(DetPlotError::BadFont { path: path.to_owned() });
    }
    Ok(Box::leak(bytes.into_boxed_slice()))
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

fn draw(path: &Path, title: &str, curves: &[DetCurve]) -> DrawResult<()> {
    let root = BitMapBackend::new(path, DET_PNG_SIZE).into_drawing_area();
    root.fill(&WHITE)?;

    let x_axis = DetAxis::log10(MIN_FMR, 1.0);
    let y_axis = DetAxis::probit(fnmr_span(curves));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 28))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(x_axis.clone(), y_axis.clone())?;

    chart
        .configure_mesh()
        .x_labels(32)
        .y_labels(32)
        .x_desc("False match rate (FMR)")
        .y_desc("False non-match rate (FNMR)")
        .axis_desc_style((FAMILY, 20))
        .label_style((FAMILY, 16))
        .bold_line_style(RGBColor(170, 170, 170))
        .light_line_style(RGBColor(225, 225, 225))
        .x_label_formatter(&|v| format_fmr(*v))
        .y_label_formatter(&|v| format_percent(*v))
        .draw()?;

    for (i, c) in curves.iter().enumerate() {
        let (r, g, b) = PALETTE[i % PALETTE.len()];
        let colour = RGBColor(r, g, b);
        let pieces = visible_pieces(&c.points, &x_axis, &y_axis);
        // The first (possibly empty) series carries the legend entry.
        let first = pieces.first().cloned().unwrap_or_default();
        chart
            .draw_series(LineSeries::new(first, colour.stroke_width(3)))?
            .label(c.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
            });
        for piece in pieces.iter().skip(1) {
            chart.draw_series(LineSeries::new(piece.iter().copied(), colour.stroke_width(3)))?;
        }
        // A lone operating point has no line to show: mark it.
        for piece in pieces.iter().filter(|p| p.len() == 1) {
            chart.draw_series(piece.iter().map(|&p| Circle::new(p, 5, colour.filled())))?;
        }
    }

    if !curves.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 18))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The parts of a curve inside the axes, as polylines of (FMR, FNMR): points sorted by FMR, each
/// segment clipped to the axes in the plot's own (log10 × probit) coordinates, so a curve leaving
/// the plot ends at the edge where it crosses it.
fn visible_pieces(points: &[(f64, f64)], x: &DetAxis, y: &DetAxis) -> Vec<Vec<(f64, f64)>> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    // Finite stand-ins for 0 and 1, far outside any axis.
    let to_plot = |&(fmr, fnmr): &(f64, f64)| {
        (x.transform(fmr.max(1e-300)), y.transform(fnmr.clamp(1e-300, 1.0 - f64::EPSILON)))
    };
    let from_plot = |(u, v): (f64, f64)| (x.inverse(u), y.inverse(v));
    let bounds = [x.transform(x.lo), x.transform(x.hi), y.transform(y.lo), y.transform(y.hi)];
    // The point at parameter t of segment a–b: the input point itself at either end (no
    // round-off through the transforms), interpolated in plot coordinates inside.
    let at = |a: &(f64, f64), b: &(f64, f64), t: f64| {
        if t == 0.0 {
            *a
        } else if t == 1.0 {
            *b
        } else {
            let (pa, pb) = (to_plot(a), to_plot(b));
            from_plot((pa.0 + t * (pb.0 - pa.0), pa.1 + t * (pb.1 - pa.1)))
        }
    };
    let mut pieces = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    if let [only] = sorted.as_slice() {
        if clip_segment(to_plot(only), to_plot(only), bounds).is_some() {
            pieces.push(vec![*only]);
        }
        return pieces;
    }
    for w in sorted.windows(2) {
        match clip_segment(to_plot(&w[0]), to_plot(&w[1]), bounds) {
            Some((t0, t1)) => {
                let (a, b) = (at(&w[0], &w[1], t0), at(&w[0], &w[1], t1));
                if current.last() != Some(&a) && !current.is_empty() {
                    pieces.push(std::mem::take(&mut current));
                }
                if current.is_empty() {
                    current.push(a);
                }
                current.push(b);
            }
            None if !current.is_empty() => pieces.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Liang–Barsky: the parameters `t0 ≤ t1` in [0, 1] of the part of segment `a`–`b` inside
/// `[x0, x1] × [y0, y1]`, if any.
fn clip_segment(a: (f64, f64), b: (f64, f64), [x0, x1, y0, y1]: [f64; 4]) -> Option<(f64, f64)> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, a.0 - x0), (dx, x1 - a.0), (-dy, a.1 - y0), (dy, y1 - a.1)] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some((t0, t1))
}

/// FNMR range of the y axis: from the decade below the smallest positive FNMR (at least 10⁻⁵, at
/// most 1%) to the smallest of 50/80/95/99% above the largest.
fn fnmr_span(curves: &[DetCurve]) -> (f64, f64) {
    let all = || curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let min_pos = all().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min);
    let lo = if min_pos.is_finite() {
        10f64.powf(min_pos.log10().floor()).clamp(MIN_FNMR, 0.01)
    } else {
        0.001
    };
    let max = all().fold(0.0, f64::max);
    let hi = FNMR_TOPS.into_iter().find(|&t| t >= max).unwrap_or(FNMR_TOPS[FNMR_TOPS.len() - 1]);
    (lo, hi)
}

/// `10⁻ⁿ` for decades, plain decimals otherwise.
fn format_fmr(v: f64) -> String {
    let e = v.log10().round();
    if (v - 10f64.powf(e)).abs() > 1e-9 * v {
        return format!("{v}");
    }
    if e == 0.0 {
        return "1".to_owned();
    }
    const SUPERSCRIPT: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let digits: String =
        format!("{}", (-e) as u32).bytes().map(|d| SUPERSCRIPT[usize::from(d - b'0')]).collect();
    format!("10⁻{digits}")
}

/// Percentages with no more digits than the value needs: 0.001 → "0.1%", 0.2 → "20%".
fn format_percent(v: f64) -> String {
    let p = v * 100.0;
    let mut s = format!("{p:.4}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{s}%")
}

/// One DET axis: log10 or probit, with the standard tick values.
#[derive(Clone, Debug)]
struct DetAxis {
    scale: Scale,
    lo: f64,
    hi: f64,
    /// Labelled ticks (bold grid lines) and the rest of the grid.
    major: Vec<f64>,
    minor: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
enum Scale {
    Log10,
    Probit,
}

impl DetAxis {
    fn log10(lo: f64, hi: f64) -> Self {
        let (mut major, mut minor) = (Vec::new(), Vec::new());
        for e in lo.log10().round() as i32..=hi.log10().round() as i32 {
            let decade = 10f64.powi(e);
            major.push(decade);
            minor.extend((2..10).map(|k| k as f64 * decade));
        }
        let keep = |v: &f64| (lo..=hi).contains(v);
        minor.retain(keep);
        DetAxis { scale: Scale::Log10, lo, hi, major, minor }
    }

    fn probit((lo, hi): (f64, f64)) -> Self {
        const MAJOR: [f64; 14] =
            [1e-5, 1e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8, 0.95, 0.99];
        const MINOR: [f64; 16] = [
            2e-5, 5e-5, 2e-4, 5e-4, 3e-3, 4e-3, 0.03, 0.04, 0.3, 0.4, 0.6, 0.7, 0.9, 0.98, 0.15,
            0.07,
        ];
        let keep = |v: &f64| (lo..=hi).contains(v);
        let major = MAJOR.into_iter().filter(keep).collect();
        let minor = MINOR.into_iter().filter(keep).collect();
        DetAxis { scale: Scale::Probit, lo, hi, major, minor }
    }

    fn transform(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Log10 => v.log10(),
            Scale::Probit => probit(v),
        }
    }

    fn inverse(&self, t: f64) -> f64 {
        match self.scale {
            Scale::Log10 => 10f64.powf(t),
            Scale::Probit => normal_cdf(t),
        }
    }

    /// `v` moved into the axis range.
    fn clip(&self, v: f64) -> f64 {
        v.clamp(self.lo, self.hi)
    }
}

impl Ranged for DetAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.transform(self.lo), self.transform(self.hi));
        let t = (self.transform(self.clip(*value)) - a) / (b - a);
        let t = if t.is_finite() { t } else { 0.0 };
        (f64::from(limit.0) + t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let mut points = self.major.clone();
        if hint.weight().allow_light_points() {
            points.extend_from_slice(&self.minor);
        }
        let max = hint.max_num_points().max(1);
        if points.len() > max {
            let step = points.len().div_ceil(max);
            points = points.into_iter().step_by(step).collect();
        }
        points
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for DetAxis {
    fn format(value: &f64) -> String {
        format!("{value}")
    }
}

/// The standard normal distribution function Φ(z).
fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DET curve of two Gaussian score distributions `d'` apart, as (FMR, FNMR) pairs.
    fn gaussian_curve(label: &str, d_prime: f64) -> DetCurve {
        // FMR = Φ(−t), FNMR = Φ(t − d'): sample t and invert through a bisection on probit.
        let phi = |z: f64| {
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            for _ in 0..100 {
                let mid = 0.5 * (lo + hi);
                if probit(mid) < z {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            0.5 * (lo + hi)
        };
        let points = (0..=80).map(|i| -1.0 + i as f64 * 0.075).map(|t| (phi(-t), phi(t - d_prime)));
        DetCurve { label: label.to_owned(), points: points.collect() }
    }

    #[test]
    fn labels_read_as_on_a_det_plot() {
        assert_eq!(format_fmr(1e-6), "10⁻⁶");
        assert_eq!(format_fmr(0.01), "10⁻²");
        assert_eq!(format_fmr(1.0), "1");
        assert_eq!(format_percent(0.001), "0.1%");
        assert_eq!(format_percent(0.2), "20%");
        assert_eq!(format_percent(1e-5), "0.001%");
    }

    #[test]
    fn axes_map_monotonically_and_clip() {
        let x = DetAxis::log10(MIN_FMR, 1.0);
        assert_eq!(x.map(&1e-6, (0, 600)), 0);
        assert_eq!(x.map(&1e-3, (0, 600)), 300);
        assert_eq!(x.map(&1.0, (0, 600)), 600);
        assert_eq!(x.map(&0.0, (0, 600)), 0);
        let y = DetAxis::probit((1e-3, 0.5));
        assert_eq!(y.map(&0.5, (700, 100)), 100);
        assert_eq!(y.map(&1e-3, (700, 100)), 700);
        assert_eq!(y.map(&0.0, (700, 100)), 700);
        let mid = y.map(&0.02, (700, 100));
        assert!(100 < mid && mid < 700);
        assert_eq!(x.major.len(), 7);
        assert_eq!(fnmr_span(&[gaussian_curve("a", 3.0)]), (1e-5, 0.99));
        assert_eq!(fnmr_span(&[]), (1e-3, 0.5));
    }

    #[test]
    fn curves_are_clipped_at_the_axes() {
        let x = DetAxis::log10(MIN_FMR, 1.0);
        let y = DetAxis::probit((1e-3, 0.5));
        // Enters from the left (FMR 1e-8), leaves at the bottom (FNMR 0).
        let pieces = visible_pieces(&[(0.1, 0.0), (1e-8, 0.4), (1e-4, 0.1)], &x, &y);
        assert_eq!(pieces.len(), 1);
        let p = &pieces[0];
        assert!((p[0].0 - 1e-6).abs() < 1e-12 && p[0].1 < 0.4 && p[0].1 > 0.1, "{p:?}");
        assert_eq!(p[1], (1e-4, 0.1));
        assert!((p[2].1 - 1e-3).abs() < 1e-9 && p[2].0 > 1e-4 && p[2].0 < 0.1, "{p:?}");
        // Entirely outside, and a single point inside.
        assert!(visible_pieces(&[(1e-9, 0.3), (1e-8, 0.2)], &x, &y).is_empty());
        assert_eq!(visible_pieces(&[(0.01, 0.05)], &x, &y).len(), 1);
        assert!((normal_cdf(probit(0.02)) - 0.02).abs() < 1e-9);
    }

    #[test]
    fn refuses_points_outside_the_unit_square() {
        let bad = DetCurve { label: "x".into(), points: vec![(0.1, 0.1), (0.1, f64::NAN)] };
        let dir = tempfile::tempdir().unwrap();
        let err = det_png(&dir.path().join("x.png"), "t", &[bad]).unwrap_err();
        assert!(matches!(err, DetPlotError::BadPoint { curve: 0, point: 1 }));
    }

    #[test]
    fn missing_font_is_a_typed_error() {
        let err = load_font(Path::new("/nonexistent/DejaVuSans.ttf")).unwrap_err();
        assert!(matches!(err, DetPlotError::FontMissing { .. }));
        assert!(err.to_string().contains("fonts-dejavu-core"));
        let dir = tempfile::tempdir().unwrap();
        let not_a_font = dir.path().join("f.ttf");
        std::fs::write(&not_a_font, b"hello").unwrap();
        assert!(matches!(load_font(&not_a_font), Err(DetPlotError::BadFont { .. })));
    }

    #[test]
    fn renders_two_curves_to_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("det.png");
        let curves = [gaussian_curve("model A (d' = 3.5)", 3.5), gaussian_curve("model B", 2.5)];
        det_png(&path, "DET: synthetic Gaussian scores", &curves).unwrap();
        if let Ok(out) = std::env::var("BIOMATCH_DET_PNG_OUT") {
            std::fs::copy(&path, out).unwrap();
        }

        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), DET_PNG_SIZE);
        for (r, g, b) in &PALETTE[..2] {
            let n = img.pixels().filter(|p| p.0 == [*r, *g, *b]).count();
            assert!(n > 500, "colour ({r}, {g}, {b}) has only {n} pixels");
        }
        // Text was drawn: dark pixels outside the plot lines (labels, title, legend).
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
        assert!(dark > 2_000, "only {dark} dark pixels: no text?");
    }
}
