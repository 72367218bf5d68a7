//! Issue field flags shared by `create` and `update`.

use crate::cli_error::CliError;
use clap::Args;

/// Scalar fields settable from the command line.
#[derive(Args, Debug, Default)]
pub struct FieldArgs {
    /// Description
    #[arg(short, long)]
    pub description: Option<String>,
    /// Design notes
    #[arg(long)]
    pub design: Option<String>,
    /// Acceptance criteria
    #[arg(long)]
    pub acceptance: Option<String>,
    /// Notes
    #[arg(long)]
    pub notes: Option<String>,
    /// Priority 0-4 or P0-P4 (0 is most urgent; new issues get 2)
    #[arg(short, long)]
    pub priority: Option<String>,
    /// Type: bug, feature, task, epic, chore (new issues get task)
    #[arg(short = 't', long = "type")]
    pub issue_type: Option<String>,
    /// Assignee ('' unassigns)
    #[arg(short, long)]
    pub assignee: Option<String>,
    /// Reference in another tracker, e.g. gh-123 ('' clears)
    #[arg(long)]
    pub external_ref: Option<String>,
}

impl FieldArgs {
    /// The priority as a number, validated.
    pub fn priority(&self) -> Result<Option<i64>, CliError> {
        Ok(self
            .priority
            .as_deref()
            .map(bd::api::parse_priority)
            .transpose()?)
    }
}
