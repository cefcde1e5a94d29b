//! The biomatch service.
