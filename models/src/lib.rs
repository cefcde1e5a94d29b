//! Feature extractors (face, fingerprint) behind one trait. Arrives with the face/fingerprint issues.
