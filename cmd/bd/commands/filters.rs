//! Filter flags shared by list, search, ready and blocked.

use super::split_list;
use crate::cli_error::CliError;
use bd::api::parse_priority;
use bd::api::time::{now_ms, parse_rfc3339};
use bd::api::{ListFilter, SortKey};
use clap::Args;

/// Filters common to every issue listing.
#[derive(Args, Debug, Default)]
pub struct FilterArgs {
    /// Lowest priority number to include: 0-4 or P0-P4
    #[arg(long, value_name = "P")]
    pub priority_min: Option<String>,
    /// Highest priority number to include
    #[arg(long, value_name = "P")]
    pub priority_max: Option<String>,
    /// Exactly this priority
    #[arg(short, long, value_name = "P")]
    pub priority: Option<String>,
    /// Only these types (comma-separated or repeated)
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub issue_type: Vec<String>,
    /// Assigned to this actor
    #[arg(short, long)]
    pub assignee: Option<String>,
    /// Only issues nobody is assigned to
    #[arg(long, alias = "no-assignee")]
    pub unassigned: bool,
    /// Carrying all of these labels (comma-separated or repeated)
    #[arg(short, long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// Carrying any of these labels
    #[arg(long = "label-any", value_name = "LABEL")]
    pub labels_any: Vec<String>,
    /// At most this many issues (0: all)
    #[arg(short = 'n', long)]
    pub limit: Option<usize>,
    /// Sort by priority, created, updated, id, title or status
    #[arg(long, value_name = "KEY")]
    pub sort: Option<String>,
    /// Reverse the sort order
    #[arg(short, long)]
    pub reverse: bool,
    /// Output: table (for people; coloured and fitted on a terminal) or tsv (for scripts)
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<crate::output::Format>,
}

/// Date filters (list and search only).
#[derive(Args, Debug, Default)]
pub struct DateArgs {
    /// Created on or after: 2026-01-31, RFC 3339, or an age like 7d / 12h
    #[arg(long, value_name = "WHEN")]
    pub created_after: Option<String>,
    /// Created before
    #[arg(long, value_name = "WHEN")]
    pub created_before: Option<String>,
    /// Updated on or after
    #[arg(long, value_name = "WHEN")]
    pub updated_after: Option<String>,
    /// Updated before
    #[arg(long, value_name = "WHEN")]
    pub updated_before: Option<String>,
    /// Closed on or after
    #[arg(long, value_name = "WHEN")]
    pub closed_after: Option<String>,
    /// Closed before
    #[arg(long, value_name = "WHEN")]
    pub closed_before: Option<String>,
}

/// The most labels one listing filters on (each is a clause of its query).
const MAX_FILTER_LABELS: usize = 100;

/// `values` once each, in their first order.
fn distinct(values: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    values
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .collect()
}

fn priority(s: &Option<String>) -> Result<Option<i64>, CliError> {
    Ok(s.as_deref().map(parse_priority).transpose()?)
}

/// Parses a date, a timestamp or an age (`30m`, `12h`, `7d`, `2w`) into epoch ms.
pub fn parse_when(s: &str) -> Result<i64, CliError> {
    if let Some(ms) = parse_rfc3339(s) {
        return Ok(ms);
    }
    let t = s.trim();
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let unit_ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => 0,
    };
    match num.parse::<i64>() {
        Ok(n) if unit_ms > 0 && n >= 0 => Ok(now_ms() as i64 - n * unit_ms),
        _ => Err(CliError::usage(
            format!("invalid date {s:?}"),
            "use 2026-01-31, 2026-01-31T12:00:00Z, or an age like 30m, 12h, 7d, 2w",
        )),
    }
}

fn when(s: &Option<String>) -> Result<Option<i64>, CliError> {
    s.as_deref().map(parse_when).transpose()
}

impl FilterArgs {
    /// The filter these flags describe (statuses and text are added by the caller).
    pub fn to_filter(&self, default_limit: Option<usize>) -> Result<ListFilter, CliError> {
        let exact = priority(&self.priority)?;
        let labels_all = distinct(split_list(&self.labels));
        let labels_any = distinct(split_list(&self.labels_any));
        if labels_all.len() + labels_any.len() > MAX_FILTER_LABELS {
            return Err(CliError::usage(
                format!(
                    "{} labels in one filter; at most {MAX_FILTER_LABELS}",
                    labels_all.len() + labels_any.len()
                ),
                "filter on fewer labels (a label shared by the issues you want)",
            ));
        }
        Ok(ListFilter {
            priority_min: exact.or(priority(&self.priority_min)?),
            priority_max: exact.or(priority(&self.priority_max)?),
            issue_type: split_list(&self.issue_type),
            assignee: self.assignee.clone(),
            unassigned: self.unassigned,
            labels_all,
            labels_any,
            limit: self.limit.or(default_limit),
            sort: self
                .sort
                .as_deref()
                .map(SortKey::parse)
                .transpose()?
                .unwrap_or_default(),
            reverse: self.reverse,
            ..Default::default()
        })
    }
}

impl DateArgs {
    /// Adds the date bounds to `f`.
    pub fn apply(&self, f: &mut ListFilter) -> Result<(), CliError> {
        f.created_after = when(&self.created_after)?;
        f.created_before = when(&self.created_before)?;
        f.updated_after = when(&self.updated_after)?;
        f.updated_before = when(&self.updated_before)?;
        f.closed_after = when(&self.closed_after)?;
        f.closed_before = when(&self.closed_before)?;
        Ok(())
    }
}
