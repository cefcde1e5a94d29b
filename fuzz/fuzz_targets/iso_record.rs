//! Fuzzes the ISO/IEC 19794-2:2005 and ANSI/INCITS 378-2004 finger minutiae record parsers:
//! no input may panic, and every record that parses must validate and round-trip.
#![no_main]

use biomatch_fingerprint::iso::{
    ansi_angle_to_iso, iso_angle_to_ansi, parse_ansi378, parse_ansi378_views, parse_iso,
    parse_iso_views, parse_record, to_ansi378, to_iso, IsoError, RecordFormat,
};
use biomatch_core::finger::FingerTemplate;
use libfuzzer_sys::fuzz_target;

/// `t` as it comes back from an ANSI record: angles on the 2° grid.
fn ansi_rounded(t: &FingerTemplate) -> FingerTemplate {
    let mut t = t.clone();
    for m in &mut t.minutiae {
        m.angle = ansi_angle_to_iso(iso_angle_to_ansi(m.angle));
    }
    t
}

fn check(t: &FingerTemplate, format: Option<RecordFormat>) {
    t.validate().expect("a parsed template validates");
    assert_eq!(parse_iso(&to_iso(t)).as_ref(), Ok(t), "ISO round trip");
    let ansi = to_ansi378(t);
    assert_eq!(parse_ansi378(&ansi), Ok(ansi_rounded(t)), "ANSI round trip");
    if format == Some(RecordFormat::Ansi378_2004) {
        // Read from ANSI, so its angles are already on the grid: exact.
        assert_eq!(parse_ansi378(&ansi).as_ref(), Ok(t), "exact ANSI round trip");
    }
}

fn no_invalid<T>(r: &Result<T, IsoError>) {
    assert!(
        !matches!(r, Err(IsoError::Invalid { .. })),
        "a field check missed a template invariant"
    );
}

fuzz_target!(|data: &[u8]| {
    let record = parse_record(data);
    no_invalid(&record);
    if let Ok((format, t)) = &record {
        check(t, Some(*format));
    }
    for (format, r) in [
        (RecordFormat::Iso19794_2_2005, parse_iso(data)),
        (RecordFormat::Ansi378_2004, parse_ansi378(data)),
    ] {
        no_invalid(&r);
        if let Ok(t) = &r {
            check(t, Some(format));
            // parse_record must agree with the format-specific parser that accepted the record.
            assert_eq!(record.as_ref().ok(), Some(&(format, t.clone())));
        }
    }
    for views in [parse_iso_views(data), parse_ansi378_views(data)] {
        no_invalid(&views);
        if let Ok(views) = views {
            assert!(!views.is_empty());
            for t in &views {
                check(t, None);
            }
        }
    }
});
