//! A hermetic environment per test: a temp git repository, a fixed actor, no
//! inherited bd or git configuration.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BD: &str = env!("CARGO_BIN_EXE_bd");

/// The `id` of every line of a JSONL text (export, snapshot).
pub fn jsonl_ids(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("JSON line")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect()
}

/// Waits for a spawned command (stdout and stderr piped); asserts it succeeded and
/// printed nothing on stderr (so no direct-mode fallback note). Returns stdout.
pub fn wait_clean(child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(out.stderr.is_empty(), "no fallback: {stderr}");
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Starts `sh -c script` in `dir` as agent `actor`, with the built `bd` as `$0` and
/// `args` as `$1`...; no auto-started daemon; stdout and stderr piped (for
/// [`wait_clean`] or `wait_with_output`).
pub fn spawn_script(dir: &Path, script: &str, args: &[&str], actor: &str) -> std::process::Child {
    Command::new("sh")
        .args(["-c", script, BD])
        .args(args)
        .current_dir(dir)
        .env("BD_ACTOR", actor)
        .env("BD_AUTO_START", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh")
}

/// Runs a shell script in `dir` with the built `bd` first on PATH; asserts success.
pub fn run_shell(dir: &Path, script: &str) -> String {
    let bin_dir = Path::new(BD).parent().expect("bin dir");
    let out = Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("BD_ACTOR", "reader")
        .env("BD_AUTO_START", "0")
        .env_remove("BEADS_DIR")
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "script failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How tests start a daemon: long idle timeout, and a snapshot debounce long
/// enough that snapshot freshness is the same in both modes.
pub const DAEMON_START: &[&str] = &[
    "daemon",
    "start",
    "-q",
    "--idle-timeout",
    "300",
    "--flush-debounce",
    "600000",
];

pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

/// How a test's commands reach the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In-process (no daemon runs).
    Direct,
    /// Through a daemon started for the test.
    Daemon,
}

impl Mode {
    /// What `bd info` reports in this mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Daemon => "daemon",
        }
    }
}

/// Runs each named test function (taking a [`Mode`]) once per mode, as
/// `direct::<name>` and `daemon::<name>`.
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod direct {
            $(#[test] fn $name() { super::$name($crate::common::Mode::Direct) })*
        }
        mod daemon {
            $(#[test] fn $name() { super::$name($crate::common::Mode::Daemon) })*
        }
    };
}

impl Drop for TestEnv {
    /// Never leave a daemon behind, even when the test failed.
    fn drop(&mut self) {
        if self.beads().join("daemon.lock").exists() {
            let _ = self
                .command(&["daemon", "stop", "-q", "--timeout", "5"])
                .output();
        }
    }
}

impl TestEnv {
    /// An empty repository (git-initialised when git is available).
    pub fn empty() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("bd-it-")
            .tempdir()
            .expect("tempdir");
        let env = TestEnv { dir };
        let _ = env.git(&["init", "-q"]);
        env
    }

    /// A repository with `bd init --prefix t` done.
    pub fn new() -> TestEnv {
        TestEnv::new_in(Mode::Direct)
    }

    /// A repository with `bd init --prefix t` done, served in `mode`. The daemon's
    /// snapshot debounce is long so snapshot freshness is the same in both modes.
    pub fn new_in(mode: Mode) -> TestEnv {
        let env = TestEnv::empty();
        env.ok(&["init", "--prefix", "t"]);
        if mode == Mode::Daemon {
            env.ok(DAEMON_START);
        }
        assert_eq!(
            env.json(&["info"])["mode"],
            mode.name(),
            "commands are served in the mode asked for"
        );
        env
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn beads(&self) -> PathBuf {
        self.root().join(".beads")
    }

    pub fn git(&self, args: &[&str]) -> Option<Output> {
        Command::new("git")
            .args(args)
            .current_dir(self.root())
            .env("HOME", self.root())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            // bd's hooks run inside git: no daemon behind the test's back.
            .env("BD_AUTO_START", "0")
            .stdin(Stdio::null())
            .output()
            .ok()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BD);
        c.args(args)
            .current_dir(self.root())
            .env("BD_ACTOR", "tester")
            // Each test picks its mode: no daemon unless it starts one (or sets
            // BD_AUTO_START=1 itself).
            .env("BD_AUTO_START", "0")
            .env_remove("BEADS_DIR")
            // `bd mesh` keeps keys in the user's config directory: the test's own.
            .env("XDG_CONFIG_HOME", self.root().join(".config-test"))
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run bd")
    }

    /// Runs bd, asserts exit 0, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "bd {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs bd with `--json`, asserts exit 0, parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bd {args:?}: bad JSON ({e}): {out}"))
    }

    /// Runs bd, asserts exit `code`, returns stderr; stdout must be empty.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "bd {args:?}: stderr: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "bd {args:?} printed to stdout on error: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        stderr
    }

    /// Creates an issue and returns its id.
    pub fn create(&self, args: &[&str]) -> String {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        self.json(&all)["id"].as_str().expect("id").to_string()
    }

    /// Ids from a JSON array of issues.
    pub fn ids(&self, args: &[&str]) -> Vec<String> {
        self.json(args)
            .as_array()
            .expect("array")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// Every line of this clone's op file, parsed (asserts there is exactly one file
    /// and that every line is a whole JSON object).
    pub fn op_lines(&self) -> Vec<Value> {
        let files: Vec<PathBuf> = std::fs::read_dir(self.beads().join("ops"))
            .expect("ops dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "one op file per replica: {files:?}");
        std::fs::read_to_string(&files[0])
            .expect("op file")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn op line ({e}): {l}")))
            .collect()
    }

    /// The state of the database as bytes that must not change on a refused command.
    pub fn fingerprint(&self) -> String {
        format!("{}\n{}", self.ok(&["export"]), self.json(&["stats"])["ops"])
    }
}

/// The pid the running daemon wrote into `.beads/daemon.lock`, if any.
pub fn daemon_pid(env: &TestEnv) -> Option<u64> {
    let text = std::fs::read_to_string(env.beads().join("daemon.lock")).ok()?;
    serde_json::from_str::<Value>(&text).ok()?["pid"].as_u64()
}
