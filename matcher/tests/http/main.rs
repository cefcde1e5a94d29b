//! HTTP tests of every route: `app(state)` driven with `tower::ServiceExt::oneshot`, no socket.

mod audit;
mod backlog;
mod builds;
mod common;
mod conns;
mod dedup;
mod errors;
mod faces;
mod fingers;
mod flows;
mod jobs;
mod monitor;
mod ops;
mod roles;
