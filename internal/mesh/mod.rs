//! Joining a relay (the mesh, part 1): the repository's mesh identity, this
//! replica's signing key, the members file, and reaching the relay.
//!
//! - **Repo id** (`mesh.repo_id` in `.beads/config.json`, committed): made once
//!   by the first clone to join; every clone of the repository meets in the
//!   streams named after it, and no other repository's clones do.
//! - **Relay** (`mesh.relay` in the config, committed: URLs, never secrets).
//! - **Secrets** (`--creds`, `--token-file`) stay outside `.beads/`: a 0600
//!   file in the user's config directory names them
//!   (`<config>/bd/mesh/<repo id>-<replica>.json`).
//! - **Key**: an Ed25519 key per replica, made on first join, 0600 in
//!   `<config>/bd/keys/<replica>.ed25519`; its public half is appended to
//!   `.beads/members.jsonl`, which travels through git, so trust arrives the
//!   way the code does.
//! - Whether this clone takes part is the clone's own (the database's `meta`),
//!   so `bd mesh leave` on one clone leaves the others as they are.

pub mod lease;
pub mod query;

use crate::config::Config;
use crate::jsonl::{FlushLock, atomic_write, io_at};
use crate::storage::{BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The committed config key holding the repository's mesh id.
pub const REPO_ID_KEY: &str = "mesh.repo_id";
/// The committed config key holding the relay's URLs (comma-separated).
pub const RELAY_KEY: &str = "mesh.relay";
/// The members file inside `.beads/`.
pub const MEMBERS_FILE: &str = "members.jsonl";
/// The `meta` key saying this clone takes part.
const JOINED: &str = "mesh.joined";

/// How to join.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// Relay URLs: `nats://HOST:PORT` or `tls://HOST:PORT` (a cluster: several).
    pub urls: Vec<String>,
    /// A NATS credentials file (`.creds`).
    pub creds: Option<PathBuf>,
    /// A file holding a token.
    pub token_file: Option<PathBuf>,
    /// Require TLS.
    pub tls: bool,
    /// The user's config directory (`$XDG_CONFIG_HOME`, or `~/.config`).
    pub config_dir: PathBuf,
    /// Who joins (recorded in the members file).
    pub actor: String,
    /// This machine's name (recorded in the members file).
    pub host: String,
}

/// One line of the members file: a replica and its public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The replica id.
    pub replica: String,
    /// Its Ed25519 public key, hex.
    pub key: String,
    /// Who joined it.
    pub actor: String,
    /// The machine it joined from.
    pub host: String,
    /// When (RFC 3339).
    pub added: String,
}

/// What the relay said when asked (a TCP connection and its `INFO` line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayProbe {
    /// The URL probed.
    pub url: String,
    /// It answered as a NATS server.
    pub reachable: bool,
    /// The server's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// JetStream is enabled on it (bd needs it).
    pub jetstream: bool,
    /// It asks clients for credentials.
    #[serde(default)]
    pub auth_required: bool,
    /// It speaks only TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// Why not reachable or not usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Where the mesh stands for this clone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// This clone takes part.
    pub joined: bool,
    /// The repository's mesh id, if any clone joined.
    pub repo_id: Option<String>,
    /// The relay's URLs from the config.
    pub relay: Vec<String>,
    /// This replica.
    pub replica: String,
    /// This replica's public key, if it has one.
    pub key: Option<String>,
    /// The file naming this clone's secrets, if any.
    pub secrets: Option<String>,
    /// Every member the members file lists.
    pub members: Vec<Member>,
    /// The relay as probed now (when asked).
    pub probes: Vec<RelayProbe>,
    /// Relay batches refused and kept (`bd conflicts` lists them).
    #[serde(default)]
    pub quarantined: u64,
    /// Other replicas' relay batches kept until an earlier op of theirs
    /// arrives (acknowledged 0 TRANSIT).
    #[serde(default)]
    pub in_transit: u64,
    /// The running daemon's link to the relay (`None`: no daemon runs, or it
    /// was started before this clone joined: restart it).
    #[serde(default)]
    pub daemon: Option<crate::rpc::RelayState>,
    /// Things the user should know.
    pub notes: Vec<String>,
    /// The breaker over the git remote `bd sync` uses, once it has failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_breaker: Option<crate::rpc::BreakerView>,
}

/// The secrets file's content: paths only (the secrets stay where they are).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Secrets {
    /// A NATS credentials file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds: Option<PathBuf>,
    /// A file holding a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Require TLS.
    #[serde(default)]
    pub tls: bool,
}

/// Connects to the relay at `urls` with this clone's secrets (token or
/// credentials file, TLS), as `name`: the daemon's link and `bd mesh ping`.
pub async fn connect(urls: &[String], s: &Secrets, name: &str) -> Result<async_nats::Client> {
    connect_watched(urls, s, name, None).await
}

/// [`connect`], telling `events` of every disconnect and reconnect (the
/// client reconnects by itself: the daemon's relay breaker counts them).
pub async fn connect_watched(
    urls: &[String],
    s: &Secrets,
    name: &str,
    events: Option<tokio::sync::mpsc::UnboundedSender<async_nats::Event>>,
) -> Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .require_tls(s.tls)
        .connection_timeout(Duration::from_secs(2));
    if let Some(tx) = events {
        opts = opts.event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        });
    }
    if let Some(f) = &s.token_file {
        let token = std::fs::read_to_string(f).map_err(|e| io_at(f, e))?;
        opts = opts.token(token.trim().to_string());
    }
    if let Some(c) = &s.creds {
        opts = opts
            .credentials_file(c)
            .await
            .map_err(|e| Error::new(ErrorKind::Io, format!("reading the credentials: {e}")))?;
    }
    opts.connect(urls.to_vec()).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot reach the relay: {e}"),
        )
        .hint("`bd mesh status` probes it")
    })
}

/// This clone's secrets file (empty when it has none).
pub fn secrets(config_dir: &Path, repo_id: &str, replica: &str) -> Result<Secrets> {
    let path = secrets_path(config_dir, repo_id, replica);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            Error::new(ErrorKind::Corrupt, format!("{}: {e}", path.display()))
                .hint("run `bd mesh join` again to rewrite it")
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Secrets::default()),
        Err(e) => Err(io_at(&path, e)),
    }
}

/// Checks a relay URL: `nats://HOST:PORT` or `tls://HOST:PORT`, where HOST is
/// a host name, an IPv4 address or a bracketed IPv6 address.
pub fn check_url(url: &str) -> Result<(String, u16)> {
    let bad = || {
        Error::invalid(format!("bad relay URL {url:?}"))
            .hint("use nats://HOST:PORT (or tls://HOST:PORT), e.g. nats://127.0.0.1:4222")
    };
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(bad)?;
        inner.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        inner
    } else {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad());
        }
        host
    };
    Ok((host.to_string(), port))
}

/// Checks a secret file given to `bd mesh join`: a readable, non-empty
/// regular file; a credentials file must hold a NATS user JWT.
fn check_secret(file: &Path, creds: bool) -> Result<()> {
    let meta = std::fs::metadata(file).map_err(|e| io_at(file, e))?;
    let what = if creds { "credentials" } else { "token" };
    if !meta.is_file() {
        return Err(Error::invalid(format!("{} is not a file", file.display()))
            .hint(format!("give the file that holds the {what}")));
    }
    let text = std::fs::read_to_string(file).map_err(|e| io_at(file, e))?;
    if text.trim().is_empty() {
        return Err(Error::invalid(format!("{} is empty", file.display()))
            .hint(format!("give the file that holds the {what}")));
    }
    if creds && !text.contains("BEGIN NATS USER JWT") {
        return Err(Error::invalid(format!("{} is not a NATS credentials file", file.display()))
            .hint("a .creds file (from `nsc`) holds a user JWT and its seed"));
    }
    Ok(())
}

/// Connects to the relay with these secrets (3 s at most) when it answers
/// at all: a relay that refuses them (wrong token, no token where one is
/// required, TLS on one side only) is an error before anything is recorded.
fn check_credentials(urls: &[String], secrets: &Secrets, probes: &[RelayProbe]) -> Result<()> {
    if !probes.iter().any(|p| p.reachable) {
        return Ok(()); // nothing to ask now: the daemon connects when it can
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            connect(urls, secrets, "bd mesh join"),
        )
        .await;
        match attempt {
            Ok(Ok(client)) => {
                drop(client);
                Ok(())
            }
            Ok(Err(e)) => Err(Error::invalid(format!(
                "the relay answers but refused the connection: {}",
                e.message.trim_start_matches("cannot reach the relay: ")
            ))
            .hint("check --token-file/--creds and tls:// against how the server is set up; nothing was recorded")),
            Err(_) => Ok(()), // slow, not refused: the daemon retries
        }
    })
}

/// Asks the relay at `url` who it is: connects and reads the `INFO` line a
/// NATS server sends first. Never fails: what went wrong is in the answer.
pub fn probe(url: &str, timeout: Duration) -> RelayProbe {
    let mut out = RelayProbe {
        url: url.to_string(),
        ..Default::default()
    };
    let answer = (|| -> std::result::Result<serde_json::Value, String> {
        let (host, port) = check_url(url).map_err(|e| e.message)?;
        use std::net::ToSocketAddrs;
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("cannot resolve {host}"))?;
        let stream = std::net::TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        // At most 64 KiB: an INFO line is far shorter, and a server that
        // sends an endless line must not make bd read forever.
        BufReader::new(std::io::Read::take(stream, 64 * 1024))
            .read_line(&mut line)
            .map_err(|e| format!("no greeting from {host}:{port}: {e}"))?;
        let info = line
            .strip_prefix("INFO ")
            .ok_or_else(|| format!("{host}:{port} is not a NATS server (it said {:?})", line.trim()))?;
        serde_json::from_str(info.trim()).map_err(|e| format!("unreadable INFO from {host}:{port}: {e}"))
    })();
    match answer {
        Ok(info) => {
            out.reachable = true;
            out.version = info["version"].as_str().map(str::to_string);
            out.jetstream = info["jetstream"].as_bool().unwrap_or(false);
            out.auth_required = info["auth_required"].as_bool().unwrap_or(false);
            out.tls_required = info["tls_required"].as_bool().unwrap_or(false);
            let tls_offered = out.tls_required || info["tls_available"].as_bool().unwrap_or(false);
            if url.starts_with("tls://") && !tls_offered {
                out.problem = Some("the server does not offer TLS (the URL says tls://)".into());
            } else if out.tls_required && !url.starts_with("tls://") {
                out.problem = Some("the server requires TLS: use tls://HOST:PORT".into());
            } else if !out.jetstream {
                out.problem = Some("JetStream is off on this server (start it with -js)".into());
            }
        }
        Err(problem) => out.problem = Some(problem),
    }
    out
}

fn key_path(config_dir: &Path, replica: &str) -> PathBuf {
    config_dir
        .join("bd")
        .join("keys")
        .join(format!("{replica}.ed25519"))
}

fn secrets_path(config_dir: &Path, repo_id: &str, replica: &str) -> PathBuf {
    config_dir
        .join("bd")
        .join("mesh")
        .join(format!("{repo_id}-{replica}.json"))
}

/// Makes `dir` (and its parents) private to this user.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_at(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_at(dir, e))
}

/// Writes `bytes` to `path`, readable by this user only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_at(&tmp, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all())
        .map_err(|e| io_at(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_at(path, e))
}

/// This replica's signing key (`bd mesh join` makes it).
pub fn signing_key(config_dir: &Path, replica: &str) -> Result<SigningKey> {
    let path = key_path(config_dir, replica);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = crate::model::unhex(text.trim())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    Error::new(ErrorKind::Corrupt, format!("{}: not a key", path.display()))
                        .hint("restore it from a backup, or move it aside and run `bd mesh join` again (a new key, added to the members file)")
                })?;
            let mut seed = [0u8; 32];
            seed.copy_from_slice(&bytes);
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
            ErrorKind::NotFound,
            format!("this replica's key {} is missing", path.display()),
        )
        .hint("restore it from a backup, or run `bd mesh join` again (a new key, added to the members file; commit it)")),
        Err(e) => Err(io_at(&path, e)),
    }
}

/// This replica's key, made now when it has none (only `bd mesh join` makes
/// one: a daemon never replaces a lost key behind the members file's back).
fn make_key(config_dir: &Path, replica: &str) -> Result<SigningKey> {
    let path = key_path(config_dir, replica);
    if path.exists() {
        return signing_key(config_dir, replica);
    }
    let mut seed = [0u8; 32];
    crate::ids::fill_random(&mut seed)?;
    write_private(&path, crate::model::hex_bytes(&seed).as_bytes())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The highest seq of each member replica's ops held in this clone's
/// database (what `bd mesh query watermarks` answers, and how a scenario
/// sees clones converge without hashing their whole state).
pub fn watermarks(paths: &BeadsPaths) -> Result<std::collections::BTreeMap<String, u64>> {
    let store = crate::storage::Store::open(&paths.db)?;
    let mut stmt = store
        .conn()
        .prepare("SELECT MAX(seq) FROM ops WHERE replica = ?1")?;
    let mut out = std::collections::BTreeMap::new();
    for m in members(paths)? {
        let seq: Option<i64> = stmt.query_row([&m.replica], |r| r.get(0))?;
        out.insert(m.replica, seq.unwrap_or(0).max(0) as u64);
    }
    Ok(out)
}

/// The members file's entries, in file order (a line that does not read is
/// skipped: `bd doctor` reports it).
pub fn members(paths: &BeadsPaths) -> Result<Vec<Member>> {
    let path = paths.dir.join(MEMBERS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(&path, e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Joins this clone to the relay (see the module docs): makes the repo id and
/// this replica's key when missing, adds it to the members file, records the
/// relay in the config and the secrets outside `.beads/`, and marks the clone
/// as taking part. Probes the relay; one that cannot be reached now is a note,
/// not an error (the daemon connects when it can).
pub fn join(paths: &BeadsPaths, opts: &JoinOptions) -> Result<MeshStatus> {
    if opts.urls.is_empty() {
        return Err(Error::invalid("no relay URL given").hint("bd mesh join nats://HOST:PORT"));
    }
    for url in &opts.urls {
        check_url(url)?;
    }
    if opts.creds.is_some() && opts.token_file.is_some() {
        return Err(Error::invalid("give --creds or --token-file, not both")
            .hint("a .creds file carries its own identity; a token is the simpler set-up"));
    }
    for (file, creds) in opts
        .creds
        .iter()
        .map(|f| (f, true))
        .chain(opts.token_file.iter().map(|f| (f, false)))
    {
        check_secret(file, creds)?;
        let inside = match (std::fs::canonicalize(file), std::fs::canonicalize(&paths.dir)) {
            (Ok(f), Ok(d)) => f.starts_with(d),
            _ => absolute(file).starts_with(absolute(&paths.dir)),
        };
        if inside {
            return Err(Error::invalid(format!(
                "{} is inside .beads/, which git carries to every clone",
                file.display()
            ))
            .hint("keep secrets outside the repository (e.g. in ~/.config/bd/)"));
        }
    }
    let mut urls: Vec<String> = Vec::new();
    for u in &opts.urls {
        if !urls.contains(u) {
            urls.push(u.clone());
        }
    }
    let secrets = Secrets {
        creds: opts.creds.as_ref().map(|p| absolute(p)),
        token_file: opts.token_file.as_ref().map(|p| absolute(p)),
        tls: opts.tls,
    };
    let probes: Vec<RelayProbe> = urls.iter().map(|u| probe(u, Duration::from_secs(2))).collect();
    check_credentials(&urls, &secrets, &probes)?;
    let mut store = Store::open(&paths.db)?;
    let replica = store.replica().to_string();
    let mut notes = Vec::new();
    {
        let _lock = FlushLock::acquire(paths)?;
        let path = paths.config();
        let mut config = Config::load(&path)?;
        if config.get(REPO_ID_KEY).is_none() {
            config.set(REPO_ID_KEY, &crate::ids::new_replica_id()?)?;
            notes.push("made the repository's mesh id (commit .beads/config.json)".into());
        }
        config.set(RELAY_KEY, &urls.join(","))?;
        config.save(&path)?;
    }
    let repo_id = Config::load(&paths.config())?
        .get(REPO_ID_KEY)
        .map(str::to_string)
        .ok_or_else(|| Error::internal("the mesh id was not saved"))?;
    let key = make_key(&opts.config_dir, &replica)?;
    let public = crate::model::hex_bytes(key.verifying_key().as_bytes());
    let known = members(paths)?;
    if let Some(other) = known.iter().find(|m| m.replica == replica && m.key != public) {
        notes.push(format!(
            "the members file already lists replica {replica} with another key ({}…): its ops will not verify; remove that line if this clone's key was replaced",
            &other.key[..other.key.len().min(12)]
        ));
    }
    if !known.iter().any(|m| m.replica == replica && m.key == public) {
        let member = Member {
            replica: replica.clone(),
            key: public,
            actor: opts.actor.clone(),
            host: opts.host.clone(),
            added: crate::clock::format_rfc3339(crate::clock::Clock::now_ms(
                &crate::clock::SystemClock,
            )),
        };
        let _lock = FlushLock::acquire(paths)?;
        let path = paths.dir.join(MEMBERS_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&serde_json::to_string(&member)?);
        text.push('\n');
        atomic_write(&path, text.as_bytes())?;
        notes.push("added this replica's public key to .beads/members.jsonl (commit it)".into());
    }
    write_private(
        &secrets_path(&opts.config_dir, &repo_id, &replica),
        serde_json::to_string_pretty(&secrets)?.as_bytes(),
    )?;
    store.set_meta(JOINED, "1")?;
    let mut st = status(paths, &opts.config_dir, false)?;
    st.probes = probes;
    st.notes.clear();
    st = st.checked(true);
    st.notes.splice(0..0, notes);
    if st.probes.iter().all(|p| !p.reachable) {
        st.notes.push(
            "the relay cannot be reached now: joined anyway; the daemon connects when it can"
                .into(),
        );
    }
    Ok(st)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Stops this clone taking part (the repo id, the relay in the config, the key
/// and the members line stay: other clones keep using them, and joining again
/// needs nothing new).
pub fn leave(paths: &BeadsPaths, config_dir: &Path) -> Result<MeshStatus> {
    let mut store = Store::open(&paths.db)?;
    let was = store.meta(JOINED)?.is_some();
    store.delete_meta(JOINED)?;
    let mut st = status(paths, config_dir, false)?;
    if !was {
        st.notes.push("this clone had not joined".into());
    }
    Ok(st)
}

/// The relay's URLs the config names (`mesh.relay`, comma-separated).
pub fn relay_urls(config: &Config) -> Vec<String> {
    let split = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    // This machine reaches the relay some other way (a tunnel, a proxy): the
    // environment says how, for this process and the daemon it starts.
    if let Ok(v) = std::env::var(RELAY_ENV)
        && !split(&v).is_empty()
        && config.get(RELAY_KEY).is_some()
    {
        return split(&v);
    }
    config.get(RELAY_KEY).map(split).unwrap_or_default()
}

/// The environment variable that overrides the committed relay URLs on this
/// machine (comma-separated), for a clone that joined.
pub const RELAY_ENV: &str = "BD_RELAY_URLS";

/// Where the mesh stands for this clone; `probe` also asks the relay.
pub fn status(paths: &BeadsPaths, config_dir: &Path, probe_relay: bool) -> Result<MeshStatus> {
    let store = Store::open(&paths.db)?;
    let replica = store.replica().to_string();
    let config = Config::load(&paths.config())?;
    let repo_id = config.get(REPO_ID_KEY).map(str::to_string);
    let relay = relay_urls(&config);
    let key = match std::fs::read_to_string(key_path(config_dir, &replica)) {
        Ok(_) => Some(crate::model::hex_bytes(
            signing_key(config_dir, &replica)?.verifying_key().as_bytes(),
        )),
        Err(_) => None,
    };
    let secrets = repo_id
        .as_deref()
        .map(|r| secrets_path(config_dir, r, &replica))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string());
    let probes = if probe_relay {
        relay
            .iter()
            .map(|u| probe(u, Duration::from_secs(2)))
            .collect()
    } else {
        Vec::new()
    };
    let joined = store.meta(JOINED)?.is_some();
    Ok(MeshStatus {
        joined,
        repo_id,
        relay,
        replica,
        key,
        secrets,
        members: members(paths)?,
        probes,
        quarantined: crate::storage::sqlite::cached_row(
            store.conn(),
            "SELECT COUNT(*) FROM quarantine",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64,
        in_transit: crate::engine::transit_len(&store)?,
        daemon: None,
        notes: Vec::new(),
        git_breaker: None,
    }
    .checked(joined))
}

impl MeshStatus {
    /// Adds what makes a joined clone's relay traffic fail for sure: a key
    /// that is missing or not the one the members file lists, a relay that
    /// wants credentials this clone has none of.
    fn checked(mut self, joined: bool) -> MeshStatus {
        if !joined {
            return self;
        }
        let listed: Vec<&Member> = self.members.iter().filter(|m| m.replica == self.replica).collect();
        match &self.key {
            None => self.notes.push(format!(
                "this replica's key is missing from the config directory: its batches cannot be signed; restore {}.ed25519 from a backup, or run `bd mesh join` again and commit the new members line",
                self.replica
            )),
            Some(k) if !listed.is_empty() && !listed.iter().any(|m| &m.key == k) => {
                self.notes.push(
                    "this replica's key is not the one the members file lists: peers refuse its batches; restore the old key, or run `bd mesh join` again and commit the new members line".into(),
                )
            }
            Some(_) if listed.is_empty() => self.notes.push(
                "the members file does not list this replica: run `bd mesh join` again and commit .beads/members.jsonl".into(),
            ),
            Some(_) => {}
        }
        if self.secrets.is_none() && self.probes.iter().any(|p| p.auth_required) {
            self.notes.push(
                "the relay asks for credentials and this clone has none: join again with --token-file or --creds".into(),
            );
        }
        self
    }
}

/// One member's answer to [`ping`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PingResult {
    /// The member.
    pub replica: String,
    /// The round trip through the relay to its daemon, ms (`None`: no answer).
    pub rtt_ms: Option<f64>,
    /// Its smoothed time to apply a batch, ms, as it reports.
    pub apply_ms: Option<f64>,
    /// Writes waiting in its queue, as it reports.
    pub queue: Option<u64>,
    /// Why there was no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Pings every other member's daemon through the relay now (request/reply,
/// `timeout` each), from this process.
pub fn ping(paths: &BeadsPaths, config_dir: &Path, timeout: Duration) -> Result<Vec<PingResult>> {
    let st = status(paths, config_dir, false)?;
    let Some(repo_id) = st.repo_id.clone().filter(|_| !st.relay.is_empty()) else {
        return Err(Error::invalid("no relay is configured here")
            .hint("bd mesh join nats://HOST:PORT"));
    };
    if !st.joined {
        return Err(Error::invalid("this clone has not joined the mesh (or left it)")
            .hint(format!("bd mesh join {}", st.relay.join(" "))));
    }
    let s = secrets(config_dir, &repo_id, &st.replica)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = connect(&st.relay, &s, &format!("bd mesh ping {}", st.replica)).await?;
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for m in st.members.iter().filter(|m| m.replica != st.replica) {
            if !seen.insert(m.replica.clone()) {
                continue;
            }
            let start = std::time::Instant::now();
            let subject = format!("bd.{repo_id}.ping.{}", m.replica);
            let mut r = PingResult {
                replica: m.replica.clone(),
                ..Default::default()
            };
            match tokio::time::timeout(timeout, client.request(subject, "".into())).await {
                Ok(Ok(answer)) => {
                    r.rtt_ms = Some(start.elapsed().as_secs_f64() * 1e3);
                    let v: serde_json::Value =
                        serde_json::from_slice(&answer.payload).unwrap_or_default();
                    r.apply_ms = v["apply_ms"].as_f64();
                    r.queue = v["queue"].as_u64();
                }
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    r.problem = Some("no daemon of it is connected to the relay".into())
                }
                Ok(Err(e)) => r.problem = Some(format!("no daemon answers for it ({e})")),
                Err(_) => r.problem = Some(format!("no answer within {} ms", timeout.as_millis())),
            }
            out.push(r);
        }
        Ok(out)
    })
}
