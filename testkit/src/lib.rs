//! biomatch-testkit: what the tests, examples and benches of several crates share.
//!
//! Only ever a `[dev-dependencies]` entry (or a dependency of `benches`): nothing here may reach a
//! shipped binary, and library code never depends on it.
//!
//! - [`SplitMix64`]: the small seeded generator of test data (tests whose data and measured bounds
//!   were drawn with it keep their exact sequences);
//! - [`crash`]: the SIGKILL crash-test harness (a writer in a child process, killed at random
//!   moments; the parent checks what the child acknowledged);
//! - [`fixtures`]: where the fetched fixture files (`.setup/`) are;
//! - [`fingers`]: seeded synthetic minutiae templates (no images needed);
//! - [`http`]: a blocking HTTP/1.1 client for tests that drive a real server over loopback;
//! - [`tmpfs`]: a small tmpfs of a test's own, to fill up (disk-full tests; needs root);
//! - [`vectors`]: seeded random vector templates and other captures of one.

pub mod crash;
pub mod faces;
pub mod fingers;
pub mod fixtures;
pub mod http;
mod rng;
pub mod tmpfs;
pub mod vectors;

pub use rng::SplitMix64;

/// A loopback TCP port free right now (bound and released), for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
