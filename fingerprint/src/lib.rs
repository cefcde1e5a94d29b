//! biomatch-fingerprint: the algorithms on finger minutiae templates.
//!
//! The template itself ([`biomatch_core::finger::FingerTemplate`]) is a core domain type; this
//! crate holds what is done with it:
//!
//! - [`iso`]: the ISO/IEC 19794-2:2005 and ANSI/INCITS 378-2004 record codec (untrusted bytes in,
//!   validated templates out);
//! - [`mcc`]: the Minutia Cylinder-Code 1:1 matcher (template preparation, comparison kernels);
//! - [`index`]: the 1:N pre-selection index over cylinder bit vectors (it does not depend on MCC).
//!
//! Like `core`, everything here is plain data and arithmetic: no files, no threads of its own, no
//! async runtime. The gallery keeps fingers in memory with these structures, the service parses
//! records with [`iso`], and the benches and examples measure them.

pub mod code;
pub mod index;
pub mod iso;
pub mod mcc;
