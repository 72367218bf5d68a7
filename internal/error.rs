//! The umbrella error type: every library error carries a kind (which picks the exit
//! code and crosses the wire to clients unchanged), one message line and hints.

use serde::{Deserialize, Serialize};

/// What went wrong, coarsely; the CLI maps each kind to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input from the caller: a value out of range, an unknown status, ...
    Invalid,
    /// The named issue (or other object) does not exist.
    NotFound,
    /// A short id matched more than one issue.
    Ambiguous,
    /// No `.beads/` directory or database where one was expected.
    NotInitialized,
    /// Already initialised, already exists.
    Exists,
    /// The request conflicts with the current state (a lost claim, a cycle).
    Conflict,
    /// The database is corrupt, unreadable, or of a newer schema.
    Corrupt,
    /// The database stayed locked by other writers past the busy timeout.
    Busy,
    /// The request's deadline passed; nothing it asked for was done.
    Timeout,
    /// An I/O failure outside the database.
    Io,
    /// The daemon could not be reached in time, went away, or is shutting
    /// down. Says nothing of whether a request sent to it was applied: the
    /// client resends writes by their request id (which cannot apply twice)
    /// and learns the outcome.
    Unavailable,
    /// Anything else: a bug or an unexpected failure of a dependency.
    Internal,
}

/// A library error: kind, one-line message, and hints on what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Coarse classification, used for exit codes.
    pub kind: ErrorKind,
    /// One line, no trailing period.
    pub message: String,
    /// Suggestions shown after the message ("run `bd init` first").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
}

/// Result alias for library calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an error of `kind` with `message` and no hints.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hints: Vec::new(),
        }
    }

    /// Shorthand for an [`ErrorKind::Invalid`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    /// Shorthand for an [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for an [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The error for a request whose deadline passed before its work could be
    /// committed (it was not started, or its work was undone).
    pub fn deadline_passed() -> Self {
        Self::new(
            ErrorKind::Timeout,
            "the request's deadline passed before it could be committed; nothing was changed",
        )
        .hint("try again, or raise --timeout")
    }

    /// Adds a hint and returns the error.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    /// The error kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            // Socket read/write timeouts surface as these.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                Error::new(ErrorKind::Timeout, "timed out waiting for an answer")
                    .hint("raise --timeout, or run with --no-daemon")
            }
            _ => Error::new(ErrorKind::Io, e.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::internal(format!("json: {e}"))
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                Error::new(ErrorKind::Busy, format!("database is busy: {e}"))
                    .hint("another bd process held the write lock too long; try again")
            }
            Some(ErrorCode::DiskFull) | Some(ErrorCode::SystemIoFailure) => {
                Error::new(ErrorKind::Io, format!("sqlite: {e}"))
            }
            Some(ErrorCode::CannotOpen)
            | Some(ErrorCode::PermissionDenied)
            | Some(ErrorCode::ReadOnly) => Error::new(ErrorKind::Io, format!("sqlite: {e}"))
                .hint("check that you may read and write .beads/ and its files"),
            Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
                Error::new(ErrorKind::Corrupt, format!("database is corrupt: {e}"))
                    .hint("`bd rebuild` makes a new database from the op files (the damaged one is kept beside it)")
            }
            _ => Error::internal(format!("sqlite: {e}")),
        }
    }
}
