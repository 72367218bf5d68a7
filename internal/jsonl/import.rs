//! Reading beads-format JSONL for import: a file's issue objects, and the lines
//! that could not be read.

use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// One issue object read from a JSONL file, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// 1-based line number in the source file.
    pub line: usize,
    /// The object's fields.
    pub fields: Map<String, Value>,
}

/// A line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Splits beads-format JSONL into issue objects and per-line errors. Blank lines are
/// skipped; a line that is not a JSON object, or lacks a string `id`, is an error.
pub fn parse_issue_lines(text: &str) -> (Vec<ImportRecord>, Vec<LineError>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with("<<<<<<<") || trimmed.starts_with(">>>>>>>") || trimmed == "======="
        {
            errors.push(LineError {
                line,
                message: "git conflict marker".into(),
            });
            continue;
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(fields)) => {
                if fields
                    .get("id")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    errors.push(LineError {
                        line,
                        message: "missing string field \"id\"".into(),
                    });
                } else {
                    records.push(ImportRecord { line, fields });
                }
            }
            Ok(_) => errors.push(LineError {
                line,
                message: "not a JSON object".into(),
            }),
            Err(e) => errors.push(LineError {
                line,
                message: format!("invalid JSON: {e}"),
            }),
        }
    }
    (records, errors)
}

/// Reads a whole import file, with a clear error when it cannot be read.
pub fn read_import_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}
