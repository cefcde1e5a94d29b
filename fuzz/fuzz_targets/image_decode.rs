//! Fuzzes the service's bounded image decoding (`biomatch_models::imageio`): the header probe,
//! the JPEG structural check and the JPEG/PNG decoders behind it. No input may panic or allocate
//! past its header's declared cost; whatever decodes has the header's dimensions, passed the
//! limits, and (JPEG) passed the structural check.
#![no_main]

use biomatch_models::imageio::{self, ImageFormat, ImageLimits};
use libfuzzer_sys::fuzz_target;

/// Small limits keep each run fast; the checks are the same at any size.
const LIMITS: ImageLimits = ImageLimits { max_bytes: 1 << 20, max_side: 2048, max_pixels: 1 << 20 };

fuzz_target!(|data: &[u8]| {
    let header = imageio::probe(data, &LIMITS);
    let structure = imageio::jpeg::verify(data);
    let rgb = imageio::decode_rgb(data, &LIMITS);
    let grey = imageio::decode_gray(data, &LIMITS);
    assert_eq!(rgb.is_ok(), grey.is_ok(), "RGB and grey decodes disagree");
    if let Ok(img) = &rgb {
        let h = header.as_ref().expect("a decoded image has a valid header");
        assert_eq!(img.dimensions(), (h.width, h.height));
        assert_eq!(grey.as_ref().unwrap().dimensions(), (h.width, h.height));
        assert!(u64::from(h.width) * u64::from(h.height) <= LIMITS.max_pixels);
        assert!(h.width <= LIMITS.max_side && h.height <= LIMITS.max_side);
        assert!(h.decode_cost <= LIMITS.worst_decode_cost());
        if h.format == ImageFormat::Jpeg {
            let f = structure.as_ref().expect("a decoded JPEG passed the structural check");
            assert_eq!((u32::from(f.width), u32::from(f.height)), (h.width, h.height));
        }
    }
    if let Ok(f) = &structure {
        // The structural check and the header reader agree on the frame.
        assert_eq!(imageio::jpeg::header(data).as_ref(), Ok(f));
    }
});
