//! ISO/IEC 19794-2:2005 and ANSI/INCITS 378-2004 finger minutiae records (to be written).

use thiserror::Error;

/// A finger minutiae record that cannot be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IsoError {
    #[error("record is truncated")]
    Truncated,
}
