//! Integration tests of the gallery store: durability, bad input, concurrency, exact search, a
//! full disk.

mod bad_input;
mod common;
mod concurrency;
mod crash;
mod diskfull;
mod exact;
mod persistence;
