//! Global flags and what every command needs: where the tracker is, who is acting,
//! how to print. This is the only place that reads the environment.

use crate::cli_error::CliError;
use bd::client::BeadsPaths;
use bd::client::{AutoStart, Backend, ConnectOptions, connect};
use bd::{Error, ErrorKind};
use clap::Args;
use std::path::PathBuf;

// Flags accepted by every command. (A plain comment: a doc comment here would become
// the about text of every command these are added to; see `commands::Lazy`.)
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Print machine-readable JSON on stdout
    #[arg(long)]
    pub json: bool,
    /// Who is acting (default: $BD_ACTOR, then $USER)
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// Print only essential output
    #[arg(short, long)]
    pub quiet: bool,
    /// Use this database file (its directory is the tracker directory)
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// Use this tracker directory (a .beads/ directory, or a repository holding one)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Never use the daemon; run in this process (also BD_NO_DAEMON=1)
    #[arg(long)]
    pub no_daemon: bool,
    /// Seconds to wait for the outcome (at most 86400); a write not committed by then is not applied
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = parse_timeout)]
    pub timeout: f64,
    /// Make a write exactly-once: sent again with the same id (within 24 h), it returns the first answer instead of applying again
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
}

/// Parses `--timeout`: a finite number of seconds, above 0 and at most a day.
fn parse_timeout(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!(
            "{s} is out of range: give seconds above 0 and at most 86400"
        ));
    }
    Ok(secs)
}

/// The ids of [`GlobalArgs`]' arguments (clap's derive names them after the fields).
pub const GLOBAL_ARG_IDS: [&str; 8] = [
    "json",
    "actor",
    "quiet",
    "db",
    "dir",
    "no_daemon",
    "timeout",
    "request_id",
];

impl GlobalArgs {
    /// Takes what the command line gave at one subcommand's level: flags set there
    /// turn on, values given there replace those given further left.
    ///
    /// The flags are defined at the top level and again on each command (see
    /// `commands::Lazy`) rather than with clap's `global`, which copies them into
    /// every one of ~30 commands on every run, a quarter of `bd version`'s
    /// instructions.
    pub fn merge_command_line(&mut self, m: &clap::ArgMatches) {
        use clap::parser::ValueSource;
        let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
        self.json |= given("json");
        self.quiet |= given("quiet");
        self.no_daemon |= given("no_daemon");
        if given("actor") {
            self.actor = m.get_one::<String>("actor").cloned();
        }
        if given("db") {
            self.db = m.get_one::<PathBuf>("db").cloned();
        }
        if given("dir") {
            self.dir = m.get_one::<PathBuf>("dir").cloned();
        }
        if given("timeout")
            && let Some(t) = m.get_one::<f64>("timeout")
        {
            self.timeout = *t;
        }
        if given("request_id") {
            self.request_id = m.get_one::<String>("request_id").cloned();
        }
    }
}

/// Resolved global settings.
pub struct Ctx {
    pub json: bool,
    pub quiet: bool,
    pub actor: String,
    /// Whether the actor was named (`--actor`, `$BD_ACTOR`) rather than
    /// guessed from the login name: `bd mcp` prefers the client's name to a
    /// guess.
    pub actor_named: bool,
    pub no_daemon: bool,
    pub timeout: std::time::Duration,
    /// `--request-id`: the caller's id for this command's write.
    pub request_id: Option<String>,
    db: Option<PathBuf>,
    dir: Option<PathBuf>,
    /// Notes about the daemon already printed by this command.
    notes_shown: std::cell::RefCell<std::collections::HashSet<String>>,
}

/// See [`Ctx::call_settings`].
#[derive(Debug, Clone)]
pub struct CallSettings {
    no_daemon: bool,
    timeout: std::time::Duration,
    db: Option<PathBuf>,
    dir: Option<PathBuf>,
}

impl CallSettings {
    /// The context of one call: JSON output, `actor`, the call's request id.
    pub fn ctx(&self, actor: String, request_id: Option<String>) -> Ctx {
        Ctx {
            json: true,
            quiet: false,
            actor,
            actor_named: true,
            no_daemon: self.no_daemon,
            timeout: self.timeout,
            request_id,
            db: self.db.clone(),
            dir: self.dir.clone(),
            notes_shown: Default::default(),
        }
    }
}

impl Ctx {
    pub fn new(g: GlobalArgs) -> Ctx {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let named = g.actor.or_else(|| env("BD_ACTOR"));
        let actor_named = named.is_some();
        let actor = named
            .or_else(|| env("USER"))
            .or_else(|| env("USERNAME"))
            .unwrap_or_else(|| "unknown".to_string());
        let no_daemon = g.no_daemon || env("BD_NO_DAEMON").is_some_and(|v| v != "0");
        let timeout = std::time::Duration::from_secs_f64(g.timeout.clamp(0.001, 86_400.0));
        Ctx {
            json: g.json,
            quiet: g.quiet,
            actor,
            actor_named,
            no_daemon,
            timeout,
            request_id: g.request_id,
            db: g.db,
            dir: g.dir,
            notes_shown: Default::default(),
        }
    }

    /// What the commands `bd mcp` runs for its client share with it: this
    /// tracker, pinned (so it never depends on where the server's working
    /// directory or environment point later), the daemon choice and the timeout.
    pub fn call_settings(&self) -> Result<CallSettings, CliError> {
        let (db, dir) = match &self.db {
            Some(db) => (Some(std::path::absolute(db)?), None),
            None => (None, Some(std::path::absolute(self.paths()?.dir)?)),
        };
        Ok(CallSettings {
            no_daemon: self.no_daemon,
            timeout: self.timeout,
            db,
            dir,
        })
    }

    /// The directory `bd init` works in: `--dir` (or its parent when it names a
    /// `.beads/` directory), else the current directory.
    pub fn init_root(&self) -> Result<PathBuf, CliError> {
        match &self.dir {
            Some(d) if d.file_name().is_some_and(|n| n == bd::client::BEADS_DIR) => Ok(d
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))),
            Some(d) => Ok(d.clone()),
            None => Ok(std::env::current_dir()?),
        }
    }

    /// Where the tracker is: `--db`, `--dir`, `$BEADS_DIR`, or the nearest `.beads/`
    /// above the current directory.
    pub fn paths(&self) -> Result<BeadsPaths, CliError> {
        if let Some(db) = &self.db {
            return Ok(BeadsPaths::with_db(db));
        }
        let dir = self
            .dir
            .clone()
            .or_else(|| std::env::var_os("BEADS_DIR").map(PathBuf::from));
        if let Some(d) = dir {
            let beads =
                if d.join(bd::client::DB_FILE).exists() || d.ends_with(bd::client::BEADS_DIR) {
                    d
                } else {
                    d.join(bd::client::BEADS_DIR)
                };
            return Ok(BeadsPaths::new(beads));
        }
        let cwd = std::env::current_dir()?;
        BeadsPaths::discover(&cwd).ok_or_else(|| {
            CliError(
                Error::new(
                    ErrorKind::NotInitialized,
                    format!("no .beads/ directory in {} or any parent", cwd.display()),
                )
                .hint("run `bd init` in your repository first"),
            )
        })
    }

    /// Whether to start a daemon when none runs: yes, unless BD_AUTO_START=0, the
    /// config says `daemon.auto_start=false`, or CI is set (then only with
    /// BD_AUTO_START=1).
    fn auto_start_wanted(&self, paths: &BeadsPaths) -> bool {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match var("BD_AUTO_START").as_deref() {
            Some("0") | Some("false") => return false,
            Some(_) => return true,
            None => {}
        }
        if var("CI").is_some_and(|v| v != "0" && v != "false") {
            return false;
        }
        bd::client::auto_start_configured(paths)
    }

    /// A client for the tracker: its daemon (started on demand), else in-process.
    /// Says once on stderr when a daemon was wanted but could not be used.
    pub fn backend(&self) -> Result<Box<dyn Backend>, CliError> {
        self.backend_with(true)
    }

    /// Like [`Ctx::backend`], but never starts a daemon: uses one that runs, else
    /// works in-process (git hooks: a `git commit` should not leave a daemon
    /// behind).
    pub fn backend_without_auto_start(&self) -> Result<Box<dyn Backend>, CliError> {
        self.backend_with(false)
    }

    fn backend_with(&self, may_start: bool) -> Result<Box<dyn Backend>, CliError> {
        let paths = self.paths()?;
        let auto_start = match may_start && self.auto_start_wanted(&paths) {
            true => Some(AutoStart {
                exe: std::env::current_exe()?,
                wait: std::time::Duration::from_secs(3),
                idle_timeout_s: 1800,
            }),
            false => None,
        };
        let opts = ConnectOptions {
            actor: self.actor.clone(),
            no_daemon: self.no_daemon,
            timeout: self.timeout,
            auto_start,
        };
        let conn = connect(paths, &opts)?;
        // A warning, not status: shown even with --quiet (stdout stays clean),
        // once per command however often it retries, and not for a daemon
        // that is leaving (a restart or an upgrade: running directly meanwhile
        // is the normal course).
        if let Some(note) = conn.note
            && note.kind != bd::ErrorKind::Unavailable
            && self.notes_shown.borrow_mut().insert(note.message.clone())
        {
            crate::output::stderr_line(&format!("bd: {}", note.message));
        }
        Ok(conn.backend)
    }

    /// Where this user's short socket paths go (only asked for when
    /// `.beads/bd.sock` would be too long a path): `$XDG_RUNTIME_DIR` when it is
    /// ours, else `$TMPDIR/bd-<uid>` (or `/tmp`), private
    /// (`bd::client::daemon::private_runtime_dir`).
    pub fn runtime_dir(&self) -> Result<PathBuf, bd::Error> {
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        // SAFETY: getuid has no failure modes and touches no memory.
        let uid = unsafe { libc::getuid() };
        bd::client::daemon::private_runtime_dir(xdg.as_deref(), &std::env::temp_dir(), uid)
    }
}
