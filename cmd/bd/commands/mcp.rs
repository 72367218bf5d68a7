//! `bd mcp`: the tracker as a Model Context Protocol server on stdio.
//!
//! Each tool call becomes the `bd` command line an agent would have typed,
//! parsed by the same parser and run by the same command in this process,
//! with `--json` on and its output captured (`output::captured`): the answer
//! is exactly what `bd ... --json` prints, through the same client (the
//! daemon, started on demand, else in-process), with the same validation,
//! errors and hints. Input a command would read from stdin (a comment's
//! text, a batch's operations) is handed to it directly: stdin is the
//! protocol here.

use crate::cli_error::CliError;
use crate::context::{CallSettings, Ctx};
use crate::output;
use clap::{Args, CommandFactory};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::sync::Arc;

/// Serve the tracker to an agent over the Model Context Protocol (stdio)
///
/// Register it with your agent client as a stdio server whose command is
/// `bd mcp` (see README.md for the JSON to paste). Tools: prime, ready, show,
/// list, search, create, update, claim, unclaim, close, reopen, comment,
/// dep_add, dep_remove, blocked, batch, stale, epic_status, conflicts,
/// resolve, sync. Each answers
/// with the JSON `bd <command> --json` prints; a refusal or bad input is a
/// tool error carrying bd's message, hints and exit code.
///
/// The tracker is the one found from the working directory, or --dir / --db.
/// The acting agent is --actor or $BD_ACTOR when set; else the name the MCP
/// client gives when it connects, with a tag of this session
/// (claude-code-3f2a9c01): two sessions are two agents, and one cannot take
/// over the other's claims.
#[derive(Args, Debug)]
pub struct McpArgs {}

pub fn cmd_mcp(ctx: &Ctx, _a: McpArgs) -> Result<(), CliError> {
    if ctx.request_id.is_some() {
        return Err(CliError::usage(
            "--request-id names one write; bd mcp serves many",
            "give each tool call its own request_id argument",
        ));
    }
    // Found now: a server that cannot answer anything should fail at once.
    let paths = ctx.paths()?;
    if !paths.db.exists() {
        return Err(CliError(
            bd::Error::new(
                bd::ErrorKind::NotInitialized,
                format!("no tracker in {}", paths.dir.display()),
            )
            .hint("run `bd init` in the repository, or point --dir at one"),
        ));
    }
    let settings = ctx.call_settings()?;
    let server = Server {
        tools: Arc::new(tools()),
        settings,
        actor: ctx.actor.clone(),
        actor_named: ctx.actor_named,
        session: bd::client::new_request_id()?[..8].to_string(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = server.serve(rmcp::transport::stdio()).await.map_err(|e| {
            bd::Error::new(
                bd::ErrorKind::Io,
                format!("mcp: the client's handshake failed: {e}"),
            )
        })?;
        running.waiting().await.map_err(|e| {
            bd::Error::new(
                bd::ErrorKind::Io,
                format!("mcp: the session ended with an error: {e}"),
            )
        })?;
        Ok::<(), bd::Error>(())
    })?;
    Ok(())
}

/// The server: its tools and what every call shares.
#[derive(Clone)]
struct Server {
    tools: Arc<Vec<ToolDef>>,
    settings: CallSettings,
    /// `--actor` / `$BD_ACTOR` when `actor_named`, else the login name.
    actor: String,
    actor_named: bool,
    /// This session's tag on the actor: 8 random hex digits (4 collided once
    /// in ~350 live sessions; 8 once in ~77,000).
    session: String,
}

/// A client's name as an actor: letters, digits, `.`, `_` and `-` kept,
/// anything else as `-`, at most 40 characters.
fn actor_name(name: &str) -> String {
    let mapped: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    mapped.trim_matches('-').to_string()
}

/// What a tool call runs: a `bd` command line, and the text it reads in
/// place of stdin.
struct Invocation {
    argv: Vec<String>,
    stdin: Option<(String, &'static str)>,
    request_id: Option<String>,
}

type Build = Box<dyn Fn(JsonObject) -> Result<Invocation, CliError> + Send + Sync>;

struct ToolDef {
    tool: Tool,
    build: Build,
}

/// How a tool changes the tracker, for the client's annotations.
#[derive(Clone, Copy)]
enum Effect {
    /// Reads only.
    Read,
    /// Adds or changes; the same call twice changes nothing more.
    Idempotent,
    /// Adds something each time (an issue, a comment).
    Additive,
    /// May overwrite or drop what others wrote.
    Destructive,
}

fn def<T: DeserializeOwned + JsonSchema + 'static>(
    name: &'static str,
    description: &'static str,
    effect: Effect,
    build: fn(T) -> Invocation,
) -> ToolDef {
    let annotations = match effect {
        Effect::Read => ToolAnnotations::new().read_only(true),
        Effect::Idempotent => ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(true),
        Effect::Additive => ToolAnnotations::new()
            .read_only(false)
            .destructive(false)
            .idempotent(false),
        Effect::Destructive => ToolAnnotations::new()
            .read_only(false)
            .destructive(true)
            .idempotent(false),
    }
    .open_world(false);
    let tool = Tool::new(name, description, Arc::new(JsonObject::new()))
        .with_input_schema::<T>()
        .with_annotations(annotations);
    ToolDef {
        tool,
        build: Box::new(move |args| {
            let parsed: T =
                serde_json::from_value(serde_json::Value::Object(args)).map_err(|e| {
                    CliError::usage(
                        format!("invalid arguments for {name}: {e}"),
                        "the tool's input schema lists its arguments and their types",
                    )
                })?;
            Ok(build(parsed))
        }),
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("bd", env!("CARGO_PKG_VERSION")).with_title("bd issue tracker"),
            )
            .with_instructions(instructions())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            self.tools.iter().map(|t| t.tool.clone()).collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools
            .iter()
            .find(|t| t.tool.name == name)
            .map(|t| t.tool.clone())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(index) = self.tools.iter().position(|t| t.tool.name == request.name) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "bd has no tool {:?}; tools/list names them",
                    request.name.as_ref()
                ),
                None,
            ));
        };
        let actor = self.actor_for(&context);
        let args = request.arguments.unwrap_or_default();
        let server = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own: the command blocks (socket, SQLite, git), and
        // a panic in it must not take the server down.
        let spawned = std::thread::Builder::new()
            .name(format!("bd-mcp-{}", request.name))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    server.run(index, args, actor)
                }));
                let _ = tx.send(result.unwrap_or_else(|_| {
                    error_result(&CliError(bd::Error::internal(
                        "the command panicked; the daemon log or a bug report should say why",
                    )))
                }));
            });
        if let Err(e) = spawned {
            return Ok(error_result(&CliError::from(e)).into());
        }
        match rx.await {
            Ok(result) => Ok(result.into()),
            Err(_) => Ok(error_result(&CliError(bd::Error::internal(
                "the command's thread ended without an answer",
            )))
            .into()),
        }
    }
}

impl Server {
    /// `--actor` / `$BD_ACTOR`, else the client's name with this session's
    /// tag (`claude-code-3f2a9c01`), else the login name with it. Two sessions of
    /// one client are two agents: under one name, each could take over the
    /// other's claims.
    fn actor_for(&self, context: &RequestContext<RoleServer>) -> String {
        if self.actor_named {
            return self.actor.clone();
        }
        let client = context
            .peer
            .peer_info()
            .map(|p| actor_name(&p.client_info.name))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| actor_name(&self.actor));
        format!("{client}-{}", self.session)
    }

    /// Runs one tool call on this thread.
    fn run(&self, index: usize, args: JsonObject, actor: String) -> CallToolResult {
        let inv = match (self.tools[index].build)(args) {
            Ok(inv) => inv,
            Err(e) => return error_result(&e),
        };
        if inv.argv.iter().any(|a| a.contains('\0')) {
            return error_result(&CliError::usage(
                "an argument contains the NUL character (U+0000)",
                "remove it: no command line can carry it, and text ends there for search",
            ));
        }
        let mut command = crate::Cli::command();
        let argv = std::iter::once("bd".to_string()).chain(inv.argv);
        let cli = match crate::parse_cli(&mut command, argv) {
            Ok(cli) => cli,
            Err(e) => return error_result(&clap_error(&e)),
        };
        let ctx = self.settings.ctx(actor, inv.request_id);
        let (stdin, stdin_name) = inv.stdin.unzip();
        let capture = output::Capture {
            stdin,
            stdin_name: stdin_name.unwrap_or("stdin").to_string(),
            ..Default::default()
        };
        let (result, captured) = output::captured(capture, || {
            let r = super::run(&ctx, cli.command);
            // Read (and reset) on every call: a provisional claim shows in its JSON.
            crate::cli_error::success_code();
            r
        });
        // Notes (a daemon that could not be used, an answer after the
        // timeout) go to the server's stderr, which clients keep as its log:
        // the result holds the command's JSON alone.
        if !captured.stderr.is_empty() {
            use std::io::Write;
            let _ = std::io::stderr()
                .lock()
                .write_all(captured.stderr.as_bytes());
        }
        match result {
            Ok(()) => CallToolResult::success(vec![ContentBlock::text(captured.stdout)]),
            Err(e) => error_result(&e),
        }
    }
}

/// A tool error: bd's `--json` error (`{"error": {kind, message, hints},
/// "exit_code": N}`).
fn error_result(e: &CliError) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(e.to_json().to_string())])
}

/// Arguments the command line refused (a bad ttl, ids missing), in the
/// tool's words: `'--ttl <DURATION>'` is `'ttl'`, `<IDS>...` is `ids`.
fn clap_error(e: &clap::Error) -> CliError {
    let mut err = CliError::from_clap(
        e,
        "the tool's input schema lists its arguments and their types",
    );
    err.0.message = tool_words(&err.0.message);
    err.0.hints = err.0.hints.iter().map(|h| tool_words(h)).collect();
    err
}

/// Rewrites the CLI's names of arguments as the tools' names: a flag
/// (`--ttl`, `'--ttl <DURATION>'`, `--value <VALUE>`) becomes `'ttl'`, a
/// positional (`<IDS>...`) `'ids'`.
fn tool_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at_word = |i: usize| i == 0 || text[..i].ends_with([' ', '\'', ':', '(']);
    while i < text.len() {
        let rest = &text[i..];
        let quoted = rest.starts_with("'--");
        if quoted || (rest.starts_with("--") && at_word(i)) {
            let from = if quoted { 3 } else { 2 };
            let len = rest[from..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(rest.len() - from);
            if len > 0 {
                let name = rest[from..from + len].replace('-', "_");
                let mut next = i + from + len;
                if text[next..].starts_with(" <")
                    && let Some(close) = text[next..].find('>')
                {
                    next += close + 1; // the flag's value placeholder
                }
                if text[next..].starts_with("...") {
                    next += 3;
                }
                if quoted && text[next..].starts_with('\'') {
                    next += 1;
                }
                out.push_str(&format!("'{name}'"));
                i = next;
                continue;
            }
        }
        if rest.starts_with('<')
            && let Some(close) = rest.find('>')
            && close > 1
            && rest[1..close]
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
        {
            out.push_str(&format!("'{}'", rest[1..close].to_lowercase()));
            i += close + 1;
            if text[i..].starts_with("...") {
                i += 3;
            }
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// What `initialize` tells the client about using these tools.
fn instructions() -> String {
    let mut s = String::from(
        "bd is this repository's issue tracker and shared work queue. The workflow:\n",
    );
    for (i, step) in super::prime::WORKFLOW.iter().enumerate() {
        s.push_str(&format!("{}. {step}\n", i + 1));
    }
    s.push_str(
        "Here each `bd X` is the tool X (dep add is dep_add). Answers are the JSON of `bd X --json`. \
         A refusal is a tool error with bd's message and exit_code: 3 means a conflict (someone holds the \
         issue, a cycle), 2 bad input. Call prime first for the live state.",
    );
    s
}

/// A `bd` command line under construction. Options are written `--flag=value`
/// so that a value starting with `-` stays a value; positionals come last,
/// after `--`.
struct Argv(Vec<String>);

impl Argv {
    fn new(words: &[&str]) -> Argv {
        Argv(words.iter().map(|w| w.to_string()).collect())
    }
    fn opt(mut self, flag: &str, value: Option<impl Display>) -> Argv {
        if let Some(v) = value {
            self.0.push(format!("--{flag}={v}"));
        }
        self
    }
    fn flag(mut self, flag: &str, on: bool) -> Argv {
        if on {
            self.0.push(format!("--{flag}"));
        }
        self
    }
    fn each(mut self, flag: &str, values: &[String]) -> Argv {
        for v in values {
            self.0.push(format!("--{flag}={v}"));
        }
        self
    }
    fn positionals<S: AsRef<str>>(mut self, values: &[S]) -> Invocation {
        self.0.push("--".into());
        self.0.extend(values.iter().map(|v| v.as_ref().to_string()));
        self.done()
    }
    fn done(self) -> Invocation {
        Invocation {
            argv: self.0,
            stdin: None,
            request_id: None,
        }
    }
}

impl Invocation {
    fn request_id(mut self, id: Option<String>) -> Invocation {
        self.request_id = id;
        self
    }
}

/// Labels, each its own string: a comma would split one into two on the
/// command line.
fn labels<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if let Some(l) = v.iter().find(|l| l.contains(',')) {
        return Err(serde::de::Error::custom(format!(
            "label {l:?} holds a comma: give each label as a string of its own"
        )));
    }
    Ok(v)
}

/// [`labels`], optional.
fn some_labels<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    labels(d).map(Some)
}

/// A priority: 0-4, or "P0"-"P4".
#[derive(JsonSchema, Debug)]
#[serde(untagged)]
enum Priority {
    Number(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) if n.as_u64().is_some() => {
                Ok(Priority::Number(n.as_u64().unwrap_or_default()))
            }
            serde_json::Value::String(s) => Ok(Priority::Text(s)),
            other => Err(serde::de::Error::custom(format!(
                "priority {other} is not 0-4 or \"P0\"-\"P4\""
            ))),
        }
    }
}

impl Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Priority::Number(n) => write!(f, "{n}"),
            Priority::Text(s) => f.write_str(s),
        }
    }
}

/// Declares a tool's argument struct with the filters every listing takes.
macro_rules! listing {
    ($(#[$m:meta])* struct $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Deserialize, JsonSchema, Debug)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($(#[$fm])* $f: $t,)*
            /// Exactly this priority: 0-4 or "P0"-"P4"
            #[serde(default)]
            priority: Option<Priority>,
            /// Lowest priority number to include
            #[serde(default)]
            priority_min: Option<Priority>,
            /// Highest priority number to include
            #[serde(default)]
            priority_max: Option<Priority>,
            /// Only these types: bug, feature, task, epic, chore
            #[serde(default, rename = "type")]
            issue_type: Vec<String>,
            /// Assigned to this actor
            #[serde(default)]
            assignee: Option<String>,
            /// Only issues nobody is assigned to
            #[serde(default)]
            unassigned: bool,
            /// Carrying all of these labels
            #[serde(default, deserialize_with = "labels")]
            labels: Vec<String>,
            /// Carrying any of these labels
            #[serde(default, deserialize_with = "labels")]
            labels_any: Vec<String>,
            /// At most this many issues (0: all)
            #[serde(default)]
            limit: Option<u64>,
            /// Sort by priority, created, updated, id, title or status
            #[serde(default)]
            sort: Option<String>,
            /// Reverse the sort order
            #[serde(default)]
            reverse: bool,
        }

        impl $name {
            fn filters(&self, a: Argv) -> Argv {
                a.opt("priority", self.priority.as_ref())
                    .opt("priority-min", self.priority_min.as_ref())
                    .opt("priority-max", self.priority_max.as_ref())
                    .each("type", &self.issue_type)
                    .opt("assignee", self.assignee.as_ref())
                    .flag("unassigned", self.unassigned)
                    .each("label", &self.labels)
                    .each("label-any", &self.labels_any)
                    .opt("limit", self.limit)
                    .opt("sort", self.sort.as_ref())
                    .flag("reverse", self.reverse)
            }
        }
    };
}

listing! {
    /// Arguments of `ready`.
    struct ReadyParams {
        /// Also list issues assigned to others (by default: unassigned ones and your own)
        #[serde(default)]
        any_assignee: bool,
    }
}

listing! {
    /// Arguments of `list`.
    struct ListParams {
        /// Only these statuses: open, in_progress, blocked, deferred, closed (default: all but closed)
        #[serde(default)]
        status: Vec<String>,
        /// Include closed issues
        #[serde(default)]
        all: bool,
        /// Case-insensitive text in id, title, description or notes
        #[serde(default)]
        text: Option<String>,
    }
}

listing! {
    /// Arguments of `search`.
    struct SearchParams {
        /// Text to look for (case-insensitive) in id, title, description and notes
        query: String,
        /// Only these statuses (default: every status)
        #[serde(default)]
        status: Vec<String>,
    }
}

listing! {
    /// Arguments of `blocked`.
    struct BlockedParams {}
}

/// Issue ids (a unique prefix or suffix is enough).
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct IdsParams {
    /// Issue ids (a unique prefix or suffix is enough)
    ids: Vec<String>,
}

/// Arguments of `create`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    /// One-line title
    title: String,
    /// Description
    #[serde(default)]
    description: Option<String>,
    /// Design notes
    #[serde(default)]
    design: Option<String>,
    /// Acceptance criteria
    #[serde(default)]
    acceptance: Option<String>,
    /// Notes
    #[serde(default)]
    notes: Option<String>,
    /// Priority 0-4 or "P0"-"P4" (0 is most urgent; default 2)
    #[serde(default)]
    priority: Option<Priority>,
    /// bug, feature, task, epic or chore (default task)
    #[serde(default, rename = "type")]
    issue_type: Option<String>,
    /// Assignee
    #[serde(default)]
    assignee: Option<String>,
    /// Reference in another tracker, e.g. gh-123
    #[serde(default)]
    external_ref: Option<String>,
    /// Labels
    #[serde(default, deserialize_with = "labels")]
    labels: Vec<String>,
    /// Dependencies as "TYPE:ID": blocks:ID (the new issue waits for ID),
    /// discovered-from:ID, related:ID; a bare ID means blocks
    #[serde(default)]
    deps: Vec<String>,
    /// Parent (an epic): the new issue becomes its child PARENT.N
    #[serde(default)]
    parent: Option<String>,
    /// Use this id instead of a generated one
    #[serde(default)]
    id: Option<String>,
    /// Makes the call exactly-once: sent again with the same id (within 24 h), it answers as the first time and creates nothing
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `update`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct UpdateParams {
    /// Issues to change (all or none change)
    ids: Vec<String>,
    /// New title
    #[serde(default)]
    title: Option<String>,
    /// New status: open, in_progress, blocked, deferred, closed
    #[serde(default)]
    status: Option<String>,
    /// Description
    #[serde(default)]
    description: Option<String>,
    /// Design notes
    #[serde(default)]
    design: Option<String>,
    /// Acceptance criteria
    #[serde(default)]
    acceptance: Option<String>,
    /// Notes
    #[serde(default)]
    notes: Option<String>,
    /// Priority 0-4 or "P0"-"P4"
    #[serde(default)]
    priority: Option<Priority>,
    /// bug, feature, task, epic or chore
    #[serde(default, rename = "type")]
    issue_type: Option<String>,
    /// Assignee ("" unassigns)
    #[serde(default)]
    assignee: Option<String>,
    /// Reference in another tracker ("" clears)
    #[serde(default)]
    external_ref: Option<String>,
    /// Labels to add
    #[serde(default, deserialize_with = "labels")]
    add_labels: Vec<String>,
    /// Labels to remove
    #[serde(default, deserialize_with = "labels")]
    remove_labels: Vec<String>,
    /// Replace all labels with these ([] for none)
    #[serde(default, deserialize_with = "some_labels")]
    set_labels: Option<Vec<String>>,
    /// Take the issue as `claim` does (refused if someone else has it)
    #[serde(default)]
    claim: bool,
    /// With claim: the claim lapses after this long without a write by you to the issue (e.g. "30m"; 10s to 24h)
    #[serde(default)]
    ttl: Option<String>,
    /// Move under this parent ("" takes the issues out from under their parent);
    /// refused (exit_code 3) if the parent lies under one of them
    #[serde(default)]
    parent: Option<String>,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `claim`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct ClaimParams {
    /// Issues to claim (all or none)
    ids: Vec<String>,
    /// The claim lapses after this long without a write by you to the issue, and the issue is ready again (e.g. "30m"; 10s to 24h; default: the tracker's claim.ttl, else none)
    #[serde(default)]
    ttl: Option<String>,
    /// Only renew claims you hold (refused with exit_code 3 otherwise, or when the claim lapsed)
    #[serde(default)]
    renew: bool,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `unclaim` and `reopen`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct IdsWriteParams {
    /// Issue ids (a unique prefix or suffix is enough)
    ids: Vec<String>,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `close`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct CloseParams {
    /// Issues to close
    ids: Vec<String>,
    /// What was done (recorded as close_reason)
    #[serde(default)]
    reason: Option<String>,
    /// Close a parent whose children are still open
    #[serde(default)]
    force: bool,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `comment`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct CommentParams {
    /// The issue
    id: String,
    /// The comment (any text, several lines allowed)
    text: String,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `dep_add`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct DepAddParams {
    /// The dependent issue
    issue: String,
    /// The issue it depends on
    depends_on: String,
    /// blocks (default), parent-child, related, discovered-from
    #[serde(default, rename = "type")]
    dep_type: Option<String>,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `dep_remove`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct DepRemoveParams {
    /// The dependent issue
    issue: String,
    /// The issue it depends on
    depends_on: String,
    /// Only this type (default: every type)
    #[serde(default, rename = "type")]
    dep_type: Option<String>,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `batch`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct BatchParams {
    /// The operations, in order: each the JSON form of a request, e.g.
    /// {"op":"create","title":"Epic","issue_type":"epic"},
    /// {"op":"create","title":"Child","parent":"$1"},
    /// {"op":"update","ids":["$2"],"claim":true}. A string that is exactly
    /// "$N" names the issue operation N created.
    operations: Vec<JsonObject>,
    /// Makes the batch exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `resolve`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct ResolveParams {
    /// The issue
    id: String,
    /// The conflicted field as `conflicts` lists it (title, status, assignee, ...;
    /// deleted, clock_skew, id, claim, quarantine)
    field: String,
    /// The value to keep (field deleted: "deleted"; clock_skew: "apply"; id: "ack";
    /// claim and quarantine: "drop"); give value or take
    #[serde(default)]
    value: Option<String>,
    /// Keep one contender's value: its op id, actor or replica (a prefix is enough)
    #[serde(default)]
    take: Option<String>,
    /// Makes the call exactly-once (see create)
    #[serde(default)]
    request_id: Option<String>,
}

/// Arguments of `sync`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct SyncParams {
    /// Commit and integrate, but do not push
    #[serde(default)]
    no_push: bool,
    /// Commit (and push) without fetching the remote first
    #[serde(default)]
    no_pull: bool,
    /// Say what would be committed and exchanged; change nothing
    #[serde(default)]
    dry_run: bool,
    /// Only report the branch, its upstream, what is unsynced and open conflicts
    #[serde(default)]
    status: bool,
    /// Commit message for bd's files
    #[serde(default)]
    message: Option<String>,
}

/// Arguments of `stale`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct StaleParams {
    /// Idle at least this long (e.g. "30m", "2h"; default 30m)
    #[serde(default)]
    idle: Option<String>,
    /// Claims that lapse within this long (e.g. "5m"; default 5m; lapsed ones always show)
    #[serde(default)]
    within: Option<String>,
    /// Only this actor's work
    #[serde(default)]
    assignee: Option<String>,
    /// At most this many (0: all; default 50)
    #[serde(default)]
    limit: Option<u64>,
}

/// Arguments of `epic_status`.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct EpicStatusParams {
    /// One issue (an epic or any parent) instead of every open epic
    #[serde(default)]
    id: Option<String>,
    /// Include closed epics
    #[serde(default)]
    all: bool,
}

/// No arguments.
#[derive(Deserialize, JsonSchema, Debug)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Every tool, in the order `tools/list` gives them.
fn tools() -> Vec<ToolDef> {
    use Effect::*;
    vec![
        def::<NoParams>(
            "prime",
            "Start here: the workflow, the commands, and the live state (how many issues are ready, what you hold, conflicts waiting).",
            Read,
            |_| Argv::new(&["prime"]).done(),
        ),
        def::<ReadyParams>(
            "ready",
            "Issues ready to work on: open, nothing open blocking them, highest priority first, then oldest. By default those you can take (unassigned or yours), 10 of them. Answers a JSON array of issues.",
            Read,
            |p| {
                p.filters(Argv::new(&["ready"]).flag("any-assignee", p.any_assignee))
                    .done()
            },
        ),
        def::<IdsParams>(
            "show",
            "Issues in full: fields, labels, dependencies, dependents and comments. Answers a JSON array.",
            Read,
            |p| Argv::new(&["show"]).positionals(&p.ids),
        ),
        def::<ListParams>(
            "list",
            "List issues (every status but closed by default) with filters. Answers a JSON array of issues.",
            Read,
            |p| {
                p.filters(
                    Argv::new(&["list"])
                        .each("status", &p.status)
                        .flag("all", p.all)
                        .opt("text", p.text.as_ref()),
                )
                .done()
            },
        ),
        def::<SearchParams>(
            "search",
            "Search issues of every status by text in id, title, description and notes. Answers a JSON array of issues.",
            Read,
            |p| {
                p.filters(Argv::new(&["search"]).each("status", &p.status))
                    .positionals(&[&p.query])
            },
        ),
        def::<CreateParams>(
            "create",
            "Create an issue. Record what you discover while working with deps [\"discovered-from:ID\"]. Answers the new issue.",
            Additive,
            |p| {
                Argv::new(&["create"])
                    .opt("description", p.description)
                    .opt("design", p.design)
                    .opt("acceptance", p.acceptance)
                    .opt("notes", p.notes)
                    .opt("priority", p.priority)
                    .opt("type", p.issue_type)
                    .opt("assignee", p.assignee)
                    .opt("external-ref", p.external_ref)
                    .each("labels", &p.labels)
                    .each("deps", &p.deps)
                    .opt("parent", p.parent)
                    .opt("id", p.id)
                    .positionals(&[p.title])
                    .request_id(p.request_id)
            },
        ),
        def::<UpdateParams>(
            "update",
            "Change issues' fields and labels (all or none). Answers each issue with changed true or false.",
            Idempotent,
            |p| {
                Argv::new(&["update"])
                    .opt("title", p.title)
                    .opt("status", p.status)
                    .opt("description", p.description)
                    .opt("design", p.design)
                    .opt("acceptance", p.acceptance)
                    .opt("notes", p.notes)
                    .opt("priority", p.priority)
                    .opt("type", p.issue_type)
                    .opt("assignee", p.assignee)
                    .opt("external-ref", p.external_ref)
                    .each("add-label", &p.add_labels)
                    .each("remove-label", &p.remove_labels)
                    .opt("set-labels", p.set_labels.map(|l| l.join(",")))
                    .flag("claim", p.claim)
                    .opt("ttl", p.ttl)
                    .opt("parent", p.parent)
                    .positionals(&p.ids)
                    .request_id(p.request_id)
            },
        ),
        def::<ClaimParams>(
            "claim",
            "Take issues: assign them to you and start them, only if nobody has them, atomically (all or none). Refused with exit_code 3, naming the holder, if someone has one: pick another. With ttl the claim lapses after that long without a write by you to the issue (any update or comment renews it, as does renew: true) and the issue returns to ready. Where the repository joined a relay the claim is a lease across machines; lease.provisional true means the relay could not be asked yet.",
            Idempotent,
            |p| {
                Argv::new(&["claim"])
                    .opt("ttl", p.ttl)
                    .flag("renew", p.renew)
                    .positionals(&p.ids)
                    .request_id(p.request_id)
            },
        ),
        def::<IdsWriteParams>(
            "unclaim",
            "Give claims up: unassign and reopen issues you hold, and return their leases.",
            Idempotent,
            |p| {
                Argv::new(&["unclaim"])
                    .positionals(&p.ids)
                    .request_id(p.request_id)
            },
        ),
        def::<CloseParams>(
            "close",
            "Close finished issues, saying what was done in reason.",
            Idempotent,
            |p| {
                Argv::new(&["close"])
                    .opt("reason", p.reason)
                    .flag("force", p.force)
                    .positionals(&p.ids)
                    .request_id(p.request_id)
            },
        ),
        def::<IdsWriteParams>("reopen", "Reopen closed issues.", Idempotent, |p| {
            Argv::new(&["reopen"])
                .positionals(&p.ids)
                .request_id(p.request_id)
        }),
        def::<CommentParams>(
            "comment",
            "Add a comment to an issue: progress, findings, hand-over notes. Answers the comment.",
            Additive,
            |p| Invocation {
                stdin: Some((p.text, "text")),
                ..Argv::new(&["comment", "add"])
                    .positionals(&[p.id.as_str(), "-"])
                    .request_id(p.request_id)
            },
        ),
        def::<DepAddParams>(
            "dep_add",
            "Make issue depend on depends_on (type blocks: issue waits until depends_on is closed). Refused with exit_code 3 if it would close a cycle.",
            Idempotent,
            |p| {
                Argv::new(&["dep", "add"])
                    .opt("type", p.dep_type)
                    .positionals(&[p.issue, p.depends_on])
                    .request_id(p.request_id)
            },
        ),
        def::<DepRemoveParams>(
            "dep_remove",
            "Remove a dependency (every type unless type is given).",
            Destructive,
            |p| {
                Argv::new(&["dep", "remove"])
                    .opt("type", p.dep_type)
                    .positionals(&[p.issue, p.depends_on])
                    .request_id(p.request_id)
            },
        ),
        def::<BlockedParams>(
            "blocked",
            "Issues held back by open blockers, each with what blocks it.",
            Read,
            |p| p.filters(Argv::new(&["blocked"])).done(),
        ),
        def::<BatchParams>(
            "batch",
            "Run many writes as one unit: all of them or none. Each operation is the JSON form of a request ({\"op\":\"create\",...}, {\"op\":\"update\",...}, close, reopen, comment_add, dep_add, dep_remove, delete); \"$N\" names what operation N created. Answers one result per operation.",
            Additive,
            |p| {
                let text: String = p
                    .operations
                    .into_iter()
                    .map(|op| serde_json::Value::Object(op).to_string() + "\n")
                    .collect();
                Invocation {
                    stdin: Some((text, "operations")),
                    ..Argv::new(&["batch"]).done().request_id(p.request_id)
                }
            },
        ),
        def::<StaleParams>(
            "stale",
            "Claims about to lapse or lapsed (claim_lapses_in_ms, negative once lapsed: claim it), then in-progress work nobody has touched for a while (default 30m), longest idle first, with its assignee and idle_ms: what an agent that died left behind.",
            Read,
            |p| {
                Argv::new(&["stale"])
                    .opt("idle", p.idle)
                    .opt("within", p.within)
                    .opt("assignee", p.assignee)
                    .opt("limit", p.limit)
                    .done()
            },
        ),
        def::<EpicStatusParams>(
            "epic_status",
            "How far each open epic (or id) has got: total and closed under it (grandchildren too), ready, in progress, percent, done, and the open issues outside it that block it.",
            Read,
            |p| {
                let a = Argv::new(&["epic", "status"]).flag("all", p.all);
                match p.id {
                    Some(id) => a.positionals(&[id]),
                    None => a.done(),
                }
            },
        ),
        def::<NoParams>(
            "conflicts",
            "Fields written concurrently by different writers (each contender with its op id, actor and replica), ops held for clock skew, ids two clones created, late writes under a lapsed lease.",
            Read,
            |_| Argv::new(&["conflicts"]).done(),
        ),
        def::<ResolveParams>(
            "resolve",
            "Settle a conflicted field with one value (value) or one contender's (take); it supersedes every contender on every clone.",
            Destructive,
            |p| {
                Argv::new(&["resolve"])
                    .opt("field", Some(p.field))
                    .opt("value", p.value)
                    .opt("take", p.take)
                    .positionals(&[p.id])
                    .request_id(p.request_id)
            },
        ),
        def::<SyncParams>(
            "sync",
            "Exchange issues with the git remote: commit bd's files, pull, apply other clones' changes, push. Only bd's files are committed.",
            Idempotent,
            |p| {
                Argv::new(&["sync"])
                    .flag("no-push", p.no_push)
                    .flag("no-pull", p.no_pull)
                    .flag("dry-run", p.dry_run)
                    .flag("status", p.status)
                    .opt("message", p.message)
                    .done()
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::tool_words;

    #[test]
    fn the_command_lines_names_become_the_tools() {
        assert_eq!(
            tool_words("the argument '--value <VALUE>' cannot be used with '--take <CONTENDER>'"),
            "the argument 'value' cannot be used with 'take'"
        );
        assert_eq!(
            tool_words("the following required arguments were not provided: <IDS>..."),
            "the following required arguments were not provided: 'ids'"
        );
        assert_eq!(
            tool_words("invalid value '3 weeks' for '--ttl <DURATION>': no"),
            "invalid value '3 weeks' for 'ttl': no"
        );
        assert_eq!(
            tool_words("the following required arguments were not provided: --value <VALUE>"),
            "the following required arguments were not provided: 'value'"
        );
        assert_eq!(
            tool_words("the following required arguments were not provided: --claim"),
            "the following required arguments were not provided: 'claim'"
        );
        assert_eq!(tool_words("a <b> 'c x--y é"), "a <b> 'c x--y é");
    }
}
