//! Crash points for the durability tests (`tests/it/durability.rs`).
//!
//! Built only with the `testing` feature (which `cargo test` turns on through
//! the package's dev-dependency on itself): a process whose `BD_FAULT` names a
//! point aborts there, as a crash would, leaving its files exactly as they are
//! at that instant. A release build has no such points and reads no variable.

/// Aborts the process if `BD_FAULT` names `point` (testing builds only).
#[cfg(feature = "testing")]
pub fn point(point: &str) {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = FAULT.get_or_init(|| std::env::var("BD_FAULT").ok());
    if armed.as_deref() == Some(point) {
        std::process::abort();
    }
}

/// Does nothing outside testing builds.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub fn point(_point: &str) {}
