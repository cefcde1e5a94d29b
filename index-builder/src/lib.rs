//! Offline index rebuild. Arrives with the sharded-index issue.
