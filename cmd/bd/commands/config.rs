use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::CONFIG_KEYS as KNOWN_KEYS;
use bd::api::{Request, Response};
use clap::{Args, Subcommand};

/// Read and change the tracker's configuration (.beads/config.json, committed)
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print one value
    Get(ConfigKeyArgs),
    /// Set one value
    Set(ConfigSetArgs),
    /// Print every value, and the keys bd knows
    List,
}

#[derive(Args, Debug)]
pub struct ConfigKeyArgs {
    /// The key (e.g. prefix, or custom.<name>)
    pub key: String,
}

#[derive(Args, Debug)]
pub struct ConfigSetArgs {
    /// The key (e.g. prefix, or custom.<name>)
    pub key: String,
    /// The value
    pub value: String,
}

pub fn cmd_config(ctx: &Ctx, c: ConfigCommand) -> Result<(), CliError> {
    let req = match c {
        ConfigCommand::Get(a) => Request::ConfigGet { key: a.key },
        ConfigCommand::Set(a) => Request::ConfigSet {
            key: a.key,
            value: a.value,
        },
        ConfigCommand::List => Request::ConfigList,
    };
    match call(ctx, req)? {
        Response::ConfigValue { key, value } if ctx.json => {
            output::json(&serde_json::json!({"key": key, "value": value}))
        }
        // Quiet: the value alone, for scripts (`$(bd config get prefix -q)`).
        Response::ConfigValue { value: Some(v), .. } if ctx.quiet => {
            output::print(&format!("{v}\n"))
        }
        Response::ConfigValue {
            key,
            value: Some(v),
        } => output::print(&format!("{key} = {v}\n")),
        Response::ConfigValue { key, value: None } => {
            output::status(ctx.quiet, &format!("{key} is not set"));
            Ok(())
        }
        Response::Config(map) if ctx.json => output::json(&map),
        Response::Config(map) => {
            let mut s: String = map.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            if !ctx.quiet {
                s.push_str("\nKnown keys:\n");
                for (k, what) in KNOWN_KEYS {
                    s.push_str(&format!("  {k}: {what}\n"));
                }
                s.push_str("  custom.<name>: free for your own scripts\n");
            }
            output::print(&s)
        }
        other => Err(unexpected(other)),
    }
}
