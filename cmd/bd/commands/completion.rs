use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{ListFilter, Request, Response};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Print a shell completion script: bash, zsh, fish, powershell or elvish
///
/// Load it for this shell session, e.g. `source <(bd completion bash)`, or
/// install it where your shell looks (bash: ~/.local/share/bash-completion/
/// completions/bd; zsh: a file `_bd` on $fpath; fish:
/// ~/.config/fish/completions/bd.fish). Commands, flags and their values
/// complete everywhere; in bash and fish issue ids complete too (from the
/// tracker in the current directory, as you type).
#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Issue ids for shell completion (used by the completion scripts)
#[derive(Args, Debug)]
pub struct CompleteIdsArgs {
    /// Only ids starting with this
    #[arg(default_value = "")]
    pub prefix: String,
    /// The command being completed: `reopen` gets closed issues, the
    /// commands that read any issue get all, the rest open ones
    #[arg(long = "for", value_name = "COMMAND", default_value = "")]
    pub command: String,
}

/// The commands whose arguments are issue ids (after a subcommand word for
/// `dep`, `label`, `comment` and `epic`).
const TAKE_IDS: &str =
    "show update close reopen claim unclaim delete comments resolve graph dep label comment epic";

pub fn cmd_completion(_ctx: &Ctx, a: CompletionArgs) -> Result<(), CliError> {
    let mut command = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut command, "bd", &mut script);
    let mut text = String::from_utf8_lossy(&script).into_owned();
    match a.shell {
        Shell::Bash => text.push_str(&format!(
            r#"
# Issue ids, from the tracker in the current directory.
_bd_with_ids() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    local cmd="${{COMP_WORDS[1]}}" first=2
    case "$cmd" in dep|label|comment|epic) first=3 ;; esac
    if [[ $COMP_CWORD -ge $first && "$cur" != -* && " {TAKE_IDS} " == *" $cmd "* ]]; then
        local prev="${{COMP_WORDS[COMP_CWORD-1]}}"
        if [[ "$prev" != -* || "$prev" == "--claim" ]]; then
            COMPREPLY=( $(compgen -W "$(bd __complete-ids --for "$cmd" -- "$cur" 2>/dev/null)" -- "$cur") )
            return 0
        fi
    fi
    _bd "$@"
}}
complete -F _bd_with_ids -o nosort -o bashdefault -o default bd
"#
        )),
        Shell::Fish => text.push_str(&format!(
            "\n# Issue ids, from the tracker in the current directory.\ncomplete -c bd -n '__fish_seen_subcommand_from {TAKE_IDS}' -f -a '(bd __complete-ids --for (commandline -opc)[2] -- (commandline -ct) 2>/dev/null)'\n"
        )),
        _ => {}
    }
    output::print(&text)
}

pub fn cmd_complete_ids(ctx: &Ctx, a: CompleteIdsArgs) -> Result<(), CliError> {
    let filter = ListFilter {
        all: true,
        limit: Some(0),
        ..Default::default()
    };
    // A key press must never leave a daemon behind: one that runs is used,
    // else the tracker is read in-process.
    let Ok(Response::Issues(issues)) = ctx
        .backend_without_auto_start()?
        .call(Request::List(filter))
    else {
        return Ok(());
    };
    let wanted = |i: &bd::api::Issue| match a.command.as_str() {
        "reopen" => i.status.is_closed(),
        "show" | "comments" | "graph" | "dep" | "label" | "comment" | "delete" | "resolve"
        | "epic" => true,
        _ => !i.status.is_closed(),
    };
    let ids: String = issues
        .iter()
        .filter(|i| i.id.starts_with(&a.prefix) && wanted(i))
        .map(|i| format!("{}\n", i.id))
        .collect();
    output::print(&ids)
}
