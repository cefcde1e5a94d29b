//! Integration tests of the gallery store: durability, bad input, concurrency, exact search.

mod bad_input;
mod common;
mod concurrency;
mod crash;
mod exact;
mod persistence;
