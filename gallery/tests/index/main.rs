//! Integration tests of the sharded ANN index: recall against exact search, live updates, crash
//! during a build, memory budget, damaged files, misuse.

mod build_crash;
mod common;
mod fingers;
mod live;
mod recall;
mod refusals;
