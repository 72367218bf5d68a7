//! bd: a local-first issue tracker and shared work queue for AI coding agents.
//!
//! The library owns every rule; the `bd` binary only parses arguments, calls
//! [`client`] and renders. Nothing in here prints, reads environment variables or
//! exits the process: time, actor, randomness and paths arrive as values.
//!
//! Layers, top to bottom (nothing imports upward):
//! `client` → `daemon` → `rpc` → `service` → `query` / `jsonl` / `config` →
//! `storage` → `merge` → `ids` / `clock` → `model`. (`client` speaks `rpc` to a
//! daemon process; in-process it calls `service` directly.)

pub mod agentsync;
pub mod api;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod exchange;
pub mod fixture;
pub mod gitsync;
pub mod ids;
pub mod jsonl;
pub mod merge;
pub mod model;
pub mod query;
pub mod rpc;
pub mod service;
pub mod storage;

pub use error::{Error, ErrorKind, Result};
