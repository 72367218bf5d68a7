//! Issue ids: `<prefix>-<base36 hash>` with a length that grows with the number of
//! issues, children `<parent>.<n>`, and resolution of short ids.
//!
//! Ids are made from a hash of content and time, so two replicas creating issues
//! offline rarely collide; the length is chosen so that the chance of any collision
//! among `n` issues stays under 1% (birthday bound), never shorter than 4 digits.

use sha2::{Digest, Sha256};

/// Shortest hash part.
pub const MIN_HASH_LEN: usize = 4;
/// Longest hash part.
pub const MAX_HASH_LEN: usize = 12;

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The hash length for a tracker that already holds `n` issues.
pub fn hash_len_for(n: u64) -> usize {
    // Birthday bound: P(collision) ≈ n² / (2·36^len) ≤ 0.01  ⇔  36^len ≥ 50·n².
    let need = 50.0 * (n.max(1) as f64).powi(2);
    let mut len = MIN_HASH_LEN;
    while len < MAX_HASH_LEN && 36f64.powi(len as i32) < need {
        len += 1;
    }
    len
}

/// A candidate id for `seed` (any bytes unique to this creation) of `len` digits.
pub fn hashed_id(prefix: &str, seed: &[u8], len: usize) -> String {
    let digest = Sha256::digest(seed);
    let mut n = u128::from_be_bytes(digest[..16].try_into().unwrap_or([0; 16]));
    let mut out = String::with_capacity(prefix.len() + 1 + len);
    out.push_str(prefix);
    out.push('-');
    for _ in 0..len {
        out.push(BASE36[(n % 36) as usize] as char);
        n /= 36;
    }
    out
}

/// The id of the `n`th child of `parent`.
pub fn child_id(parent: &str, n: u64) -> String {
    format!("{parent}.{n}")
}

/// Checks an id prefix: 1-20 characters, lower-case letters, digits, `_`; starting
/// with a letter.
pub fn validate_prefix(prefix: &str) -> crate::Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 20
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(
            crate::Error::invalid(format!("invalid id prefix {prefix:?}"))
                .hint("use 1-20 lower-case letters, digits or '_', starting with a letter"),
        )
    }
}

/// Turns a directory name into a usable prefix (`My Repo` → `my_repo`), or `bd`.
pub fn prefix_from_dir_name(name: &str) -> String {
    let mut p: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    p = p.trim_matches('_').to_string();
    while p.starts_with(|c: char| c.is_ascii_digit()) {
        p.remove(0);
    }
    p.truncate(20);
    if validate_prefix(&p).is_ok() {
        p
    } else {
        "bd".into()
    }
}

/// Checks an explicit id (from `--id` or an import): non-empty, at most 100
/// characters of letters, digits, `-`, `_`, `.`.
pub fn validate_id(id: &str) -> crate::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(crate::Error::invalid(format!("invalid issue id {id:?}"))
            .hint("ids are 1-100 characters: letters, digits, '-', '_' and '.'"))
    }
}

/// Checks an id in an import file: as [`validate_id`], and `~` is allowed too
/// (an export holds the ids bd gave displaced creates, `<id>~<suffix>`).
pub fn validate_imported_id(id: &str) -> crate::Result<()> {
    if validate_id(&id.replace('~', "-")).is_ok() {
        Ok(())
    } else {
        Err(crate::Error::invalid(format!("invalid issue id {id:?}"))
            .hint("ids use letters, digits, '-', '_', '.' and '~'"))
    }
}

/// Whether `id` is matched by the short form `query`: equal, a prefix of the id, a
/// prefix of its hash part, or a suffix of it.
pub fn short_id_matches(id: &str, query: &str) -> bool {
    id == query
        || id.starts_with(query)
        || id.ends_with(query)
        || id
            .split_once('-')
            .is_some_and(|(_, hash)| hash.starts_with(query))
}

/// A fresh random replica id: 16 hex digits from the OS's random source.
pub fn new_replica_id() -> crate::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(crate::model::hex_bytes(&bytes))
}

/// A fresh request id for a write (see `service::Context::request_id`): 128
/// random bits, hex.
pub fn new_request_id() -> crate::Result<String> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    Ok(crate::model::hex_bytes(&bytes))
}

/// Fills `bytes` from the OS's randomness (`getrandom`).
pub fn fill_random(bytes: &mut [u8]) -> crate::Result<()> {
    let mut got = 0;
    while got < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled part of `bytes`.
        let n = unsafe { libc::getrandom(bytes[got..].as_mut_ptr().cast(), bytes.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        got += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_grows_with_count() {
        assert_eq!(hash_len_for(0), 4);
        assert_eq!(hash_len_for(100), 4);
        assert!(hash_len_for(1_000) >= 5);
        assert!(hash_len_for(100_000) > hash_len_for(1_000));
        assert!(hash_len_for(u64::MAX) <= MAX_HASH_LEN);
    }

    #[test]
    fn hashed_ids_are_deterministic_and_shaped() {
        let a = hashed_id("bd", b"seed", 6);
        assert_eq!(a, hashed_id("bd", b"seed", 6));
        assert_ne!(a, hashed_id("bd", b"seed2", 6));
        assert_eq!(a.len(), 9);
        assert!(a.starts_with("bd-"));
        assert!(
            a[3..]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_from_dir_name("My Repo"), "my_repo");
        assert_eq!(prefix_from_dir_name("123"), "bd");
        assert!(validate_prefix("Bad").is_err());
        assert!(validate_prefix("ok_1").is_ok());
    }

    #[test]
    fn short_ids() {
        assert!(short_id_matches("bd-a1b2", "a1b"));
        assert!(short_id_matches("bd-a1b2", "b2"));
        assert!(short_id_matches("bd-a1b2", "bd-a1"));
        assert!(!short_id_matches("bd-a1b2", "zz"));
        assert!(short_id_matches("bd-a1b2.3", ".3"));
    }
}
