//! The tracker's configuration: `.beads/config.json`, committed to git so every clone
//! shares it. Keys are flat strings; known keys are validated, and `custom.*` keys
//! are free for users and scripts.

use crate::ids::validate_prefix;
use crate::jsonl::atomic_write;
use crate::{Error, ErrorKind, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Keys bd understands, with a one-line description each.
pub const KNOWN_KEYS: &[(&str, &str)] = &[
    ("prefix", "id prefix for new issues (e.g. bd → bd-a1b2)"),
    (
        "daemon.auto_start",
        "true (default) or false: start the daemon on first use",
    ),
    (
        "claim.ttl",
        "time limit of a claim made without --ttl (e.g. 30m; 10s to 24h; none or unset: no limit)",
    ),
    (
        "mesh.relay",
        "the relay's URLs, comma-separated (set by `bd mesh join`; never secrets)",
    ),
    (
        "mesh.repo_id",
        "the repository's mesh id (made by the first `bd mesh join`; keep it)",
    ),
];

/// Key namespace left to users.
pub const CUSTOM_PREFIX: &str = "custom.";

/// Parsed configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    values: BTreeMap<String, String>,
}

impl Config {
    /// A configuration holding only the id prefix.
    pub fn with_prefix(prefix: &str) -> Self {
        let mut values = BTreeMap::new();
        values.insert("prefix".to_string(), prefix.to_string());
        Config { values }
    }

    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(crate::jsonl::io_at(path, e)),
        };
        let bad = |e: String| {
            Error::new(ErrorKind::Corrupt, format!("{}: {e}", path.display()))
                .hint("fix the JSON by hand; it must be an object of string values")
        };
        let raw: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        // A boolean or a number written by hand ("daemon.auto_start": false)
        // means what its text does.
        let mut values = BTreeMap::new();
        for (k, v) in raw {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                other => {
                    return Err(bad(format!(
                        "{k} is {other}; a setting is a string, true/false or a number"
                    )));
                }
            };
            values.insert(k, text);
        }
        Ok(Config { values })
    }

    /// Like [`Config::load`], but a process that reads the same unchanged file
    /// again (the daemon, once per create) gets a copy of what it parsed last
    /// time. "Unchanged": same device, inode, length and modification time; saving
    /// replaces the file (new inode), so an edit is always seen.
    pub fn load_cached(path: &Path) -> Result<Config> {
        use std::os::unix::fs::MetadataExt;
        type Key = (std::path::PathBuf, u64, u64, u64, i64, i64);
        static CACHE: std::sync::Mutex<Option<(Key, Config)>> = std::sync::Mutex::new(None);
        let key = match std::fs::metadata(path) {
            Ok(m) => (
                path.to_path_buf(),
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
            ),
            Err(_) => return Config::load(path),
        };
        if let Ok(guard) = CACHE.lock()
            && let Some((k, c)) = guard.as_ref()
            && *k == key
        {
            return Ok(c.clone());
        }
        let config = Config::load(path)?;
        if let Ok(mut guard) = CACHE.lock() {
            *guard = Some((key, config.clone()));
        }
        Ok(config)
    }

    /// Writes the configuration atomically, keys sorted, one per line.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(&self.values)?;
        text.push('\n');
        atomic_write(path, text.as_bytes())
    }

    /// The id prefix (`bd` when unset).
    pub fn prefix(&self) -> &str {
        self.values
            .get("prefix")
            .map(String::as_str)
            .unwrap_or("bd")
    }

    /// A value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Every key and value, sorted.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Validates and sets a value.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        check_key(key)?;
        if key == "prefix" {
            validate_prefix(value)?;
        }
        if key == "daemon.auto_start" && !matches!(value, "true" | "false") {
            return Err(Error::invalid(format!(
                "daemon.auto_start must be true or false, not {value:?}"
            )));
        }
        if key == "claim.ttl" && value != "none" {
            claim_ttl_ms(value)?;
        }
        self.values.insert(key.to_string(), value.to_string());
        Ok(())
    }
}

/// A claim's time limit as written (`30m`) in ms: 10 s to 24 h.
pub fn claim_ttl_ms(value: &str) -> Result<u64> {
    crate::clock::parse_duration_ms(value)
        .filter(|ms| crate::api::CLAIM_TTL_MS.contains(ms))
        .ok_or_else(|| {
            Error::invalid(format!(
                "a claim's time limit is a duration from 10s to 24h, not {value:?}"
            ))
            .hint("e.g. bd config set claim.ttl 30m (none: no limit)")
        })
}

/// Checks that `key` is known or in the custom namespace.
pub fn check_key(key: &str) -> Result<()> {
    let custom_ok = key.strip_prefix(CUSTOM_PREFIX).is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    if KNOWN_KEYS.iter().any(|(k, _)| *k == key) || custom_ok {
        Ok(())
    } else {
        let known: Vec<&str> = KNOWN_KEYS.iter().map(|(k, _)| *k).collect();
        Err(
            Error::invalid(format!("unknown config key {key:?}")).hint(format!(
                "known keys: {}; use `custom.<name>` for your own",
                known.join(", ")
            )),
        )
    }
}
