//! bd: a local-first issue tracker and shared work queue for AI coding agents.
//!
//! The library owns every rule; the `bd` binary only parses arguments, calls
//! [`client`] and renders. Nothing in here prints, reads environment variables or
//! exits the process: time, actor, randomness and paths arrive as values.
//!
//! **The public surface** is what a program embedding bd uses, and all the
//! binary may use (the compiler enforces it: everything else is private):
//! - [`api`]: the contract, every operation as a [`api::Request`] and every
//!   answer as a [`api::Response`], with the types they carry;
//! - [`client`]: reaching a tracker ([`client::connect`], [`client::Backend`],
//!   locating, creating and rebuilding it, git set-up) and its daemon (serving as
//!   one, and controlling one: [`client::daemon`]);
//! - [`Error`] and [`ErrorKind`].
//!
//! ```
//! use bd::api::{CreateRequest, Request, Response};
//! use bd::client::{self, Backend, BeadsPaths, ConnectOptions, InitOptions};
//!
//! let repo = tempfile::tempdir()?;
//! let made = client::init(
//!     repo.path(),
//!     &InitOptions {
//!         prefix: Some("demo".into()),
//!         replica: client::new_replica_id()?,
//!     },
//! )?;
//! let opts = ConnectOptions {
//!     actor: "planner".into(),
//!     no_daemon: false, // use the tracker's daemon if one runs
//!     timeout: std::time::Duration::from_secs(10),
//!     auto_start: None, // and never start one
//! };
//! let mut bd = client::connect(BeadsPaths::new(&made.beads_dir), &opts)?.backend;
//! let created = bd.call(Request::Create(CreateRequest {
//!     title: "Write the design".into(),
//!     ..Default::default()
//! }))?;
//! let Response::Issue(issue) = created else { unreachable!() };
//! assert!(issue.id.starts_with("demo-"));
//! # Ok::<(), bd::Error>(())
//! ```
//!
//! Layers below it, top to bottom (nothing imports upward):
//! `client` → `daemon` → `rpc` → `engine` → `service` → `query` / `jsonl` /
//! `config` → `storage` → `merge` → `ids` / `clock` → `model`, with `api`
//! beside them as the contract `rpc`, `engine` and `client` share.
//!
//! Built with the `testing` feature (`cargo test` and `cargo bench` turn it on),
//! the private modules are also reachable, hidden, for bd's own tests and
//! benchmarks, with the test-only [`fixture`] and [`merge_simulation`].

// Without the `testing` feature the private modules' items that only bd's
// tests and benchmarks use would each be reported as unused. They are checked
// where it matters: clippy builds every target with the feature on.
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

pub mod api;
pub mod client;
pub mod error;
pub mod progress;
pub mod scenario;

pub use error::{Error, ErrorKind, Result};

/// Declares modules private to the library, reachable (hidden) only from
/// bd's own tests and benchmarks (the `testing` feature).
macro_rules! internal {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "testing")]
            #[doc(hidden)]
            pub mod $name;
            #[cfg(not(feature = "testing"))]
            mod $name;
        )*
    };
}

internal!(
    breaker, clock, config, daemon, doctor, engine, exchange, gitsync, ids, jsonl, merge, mesh,
    model, query, rpc, service, storage,
);

#[cfg(feature = "testing")]
pub mod fixture;
#[cfg(feature = "testing")]
pub mod merge_simulation;
