//! How programs reach bd: the [`Backend`] trait, and [`Direct`], which runs every
//! request in-process through [`service::execute`]. (The daemon backend, speaking
//! the same [`Request`]s over a socket, arrives with the daemon.) Also [`init`],
//! which creates a tracker.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::ids;
use crate::service::{self, Context, Request, Response};
use crate::storage::{BEADS_DIR, BeadsPaths, Store};
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Something that answers [`Request`]s.
pub trait Backend {
    /// Runs one request.
    fn call(&mut self, req: Request) -> Result<Response>;

    /// How requests are served (`direct`, later `daemon`).
    fn mode(&self) -> &'static str;
}

/// Runs requests in this process against the tracker's database.
pub struct Direct {
    store: Store,
    paths: BeadsPaths,
    actor: String,
    clock: Arc<dyn Clock>,
}

impl Direct {
    /// Opens the tracker at `paths` for `actor`, using the system clock.
    pub fn open(paths: BeadsPaths, actor: &str) -> Result<Direct> {
        Self::open_with_clock(paths, actor, Arc::new(SystemClock))
    }

    /// Opens the tracker with an explicit clock (tests, benchmarks).
    pub fn open_with_clock(
        paths: BeadsPaths,
        actor: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Direct> {
        let store = Store::open(&paths.db)?;
        Ok(Direct {
            store,
            paths,
            actor: actor.to_string(),
            clock,
        })
    }

    /// The tracker's files.
    pub fn paths(&self) -> &BeadsPaths {
        &self.paths
    }

    /// The underlying store (benchmarks and tests inspect it).
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }
}

impl Backend for Direct {
    fn call(&mut self, req: Request) -> Result<Response> {
        let ctx = Context {
            actor: &self.actor,
            clock: self.clock.as_ref(),
            paths: &self.paths,
        };
        service::execute(&mut self.store, &ctx, req)
    }

    fn mode(&self) -> &'static str {
        "direct"
    }
}

/// What `bd init` needs.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Id prefix; `None` keeps a committed config's prefix or derives one from the
    /// repository directory's name.
    pub prefix: Option<String>,
    /// This clone's replica id (random, made by the caller).
    pub replica: String,
}

/// What `bd init` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitReport {
    /// The `.beads/` directory.
    pub beads_dir: String,
    /// The database.
    pub database: String,
    /// Id prefix in use.
    pub prefix: String,
    /// Replica id of this clone.
    pub replica: String,
    /// True when `.beads/` already held committed files (a fresh clone).
    pub adopted_existing: bool,
}

/// Lines bd adds to `.beads/.gitignore`: the per-clone files.
pub const BEADS_GITIGNORE: &str = "# bd: per-clone files (the database and daemon state) stay out of git\n*.db\n*.db-*\n*.lock\nbd.sock\ndaemon.*\n.bd-tmp-*\n";

/// Creates a tracker in `<root>/.beads/`. Refuses if a database is already there.
pub fn init(root: &Path, opts: &InitOptions) -> Result<InitReport> {
    let paths = BeadsPaths::new(root.join(BEADS_DIR));
    if paths.db.exists() {
        return Err(Error::new(
            ErrorKind::Exists,
            format!("bd is already initialised in {}", paths.dir.display()),
        )
        .hint("nothing to do; run `bd info` to see it"));
    }
    if let Some(p) = &opts.prefix {
        ids::validate_prefix(p)?;
    }
    std::fs::create_dir_all(paths.ops_dir())?;
    let existing = Config::load(&paths.config())?;
    let adopted_existing = existing.get("prefix").is_some();
    let prefix = match (&opts.prefix, existing.get("prefix")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.to_string(),
        (None, None) => ids::prefix_from_dir_name(
            &root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    };
    let mut config = existing;
    config.set("prefix", &prefix)?;
    config.save(&paths.config())?;
    let gitignore = paths.dir.join(".gitignore");
    if !gitignore.exists() {
        crate::jsonl::atomic_write(&gitignore, BEADS_GITIGNORE.as_bytes())?;
    }
    let mut store = Store::create(&paths, &opts.replica)?;
    crate::jsonl::flush_own_ops(&store, &paths)?;
    crate::jsonl::write_snapshot(&mut store, &paths)?;
    Ok(InitReport {
        beads_dir: paths.dir.display().to_string(),
        database: paths.db.display().to_string(),
        prefix,
        replica: opts.replica.clone(),
        adopted_existing,
    })
}
