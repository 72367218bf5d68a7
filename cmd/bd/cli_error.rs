//! CLI errors: a library error (or a local one) plus the exit code its kind picks.

use bd::{Error, ErrorKind};

/// Exit code: something failed.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: bad usage or invalid input.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: refused because of the current state (claim lost, cycle).
pub const EXIT_CONFLICT: i32 = 3;

/// Exit code: done, but weaker than asked: a claim granted provisionally
/// (the relay could not be asked; see `bd claim --help`).
pub const EXIT_PROVISIONAL: i32 = 4;

thread_local! {
    /// The exit code of a command that succeeded (0 unless it said otherwise).
    /// Per thread: `bd mcp` runs commands on threads of their own.
    static SUCCESS_CODE: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Makes a successful command exit with `code` (e.g. [`EXIT_PROVISIONAL`]).
pub fn succeed_with(code: i32) {
    SUCCESS_CODE.with(|c| c.set(code));
}

/// The exit code of a command that succeeded, read once: it goes back to 0.
pub fn success_code() -> i32 {
    SUCCESS_CODE.with(|c| c.replace(0))
}

/// An error on its way to stderr and the exit code.
#[derive(Debug)]
pub struct CliError(pub Error);

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.into())
    }
}

impl CliError {
    /// A command line clap refused, as bd's error: the lines of clap's message
    /// before its usage joined into one, its tips as hints (exit 2).
    pub fn from_clap(e: &clap::Error, hint: &str) -> CliError {
        let text = e.to_string();
        let mut message = Vec::new();
        let mut hints = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with("Usage:") {
                break;
            }
            if let Some(tip) = line.strip_prefix("tip: ") {
                hints.push(tip.to_string());
            } else if !line.is_empty() && !line.starts_with("For more information") {
                message.push(line.trim_start_matches("error: ").to_string());
            }
        }
        let mut err = bd::Error::invalid(message.join(" "));
        for h in hints {
            err = err.hint(h);
        }
        CliError(err.hint(hint))
    }

    /// An invalid-input error with a hint.
    pub fn usage(message: impl Into<String>, hint: impl Into<String>) -> Self {
        CliError(Error::invalid(message).hint(hint))
    }

    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self.0.kind() {
            ErrorKind::Invalid => EXIT_USAGE,
            ErrorKind::Conflict => EXIT_CONFLICT,
            _ => EXIT_ERROR,
        }
    }

    /// The error as `--json` reports it: `{"error": {...}, "exit_code": N}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": &self.0, "exit_code": self.exit_code()})
    }

    /// Prints the error to stderr (one line, then hints) and returns the exit code.
    ///
    /// A closed stdout ends the command quietly where stdout is written
    /// (`output::print`); every other broken pipe is a real failure. Treating them
    /// all as success once made a write whose daemon died before receiving it
    /// exit 0 (found by the kill -9 stress test).
    pub fn report(self, json: bool) -> i32 {
        if json {
            // JSON escapes what a terminal must not see itself.
            crate::output::stderr_data_line(&self.to_json().to_string());
        } else {
            crate::output::stderr_line(&format!(
                "error: {}",
                crate::output::one_line(&self.0.message)
            ));
            for h in &self.0.hints {
                crate::output::stderr_line(&format!("hint: {}", crate::output::one_line(h)));
            }
        }
        self.exit_code()
    }
}
