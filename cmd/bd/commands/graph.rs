use super::{call, unexpected};
use crate::cli_error::CliError;
use crate::context::Ctx;
use crate::output;
use bd::api::{DepType, Issue, ListFilter, Request, Response};
use clap::{Args, ValueEnum};
use std::collections::{BTreeMap, BTreeSet};

/// The dependency graph of an epic (ID and everything under it) or of every
/// open issue, as Mermaid or Graphviz dot
///
/// Arrows point from the blocker (or parent) to what waits for it. Ready
/// issues are marked (green), closed ones greyed, in-progress ones show
/// their assignee. Paste Mermaid into a Markdown file; render dot with
/// `dot -Tsvg`. With --json: `{"nodes": [{id, title, status, assignee,
/// state}], "edges": [{from, to, type}]}`, state being ready, working,
/// waiting or closed.
#[derive(Args, Debug)]
pub struct GraphArgs {
    /// An epic (or any issue): it and its descendants (default: every open issue)
    pub id: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Mermaid)]
    pub format: Format,
    /// Include closed issues
    #[arg(long)]
    pub all: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Mermaid,
    Dot,
}

/// Every issue (closed ones too) and the ids of those ready to take, for
/// the views drawn from the whole tracker (`graph`, `epic status`).
pub(super) fn issues_and_ready(ctx: &Ctx) -> Result<(Vec<Issue>, BTreeSet<String>), CliError> {
    let everything = ListFilter {
        all: true,
        limit: Some(0),
        ..Default::default()
    };
    let Response::Issues(issues) = call(ctx, Request::List(everything))? else {
        return Err(CliError(bd::Error::internal("unexpected answer to list")));
    };
    let ready = match call(
        ctx,
        Request::Ready(ListFilter {
            limit: Some(0),
            ..Default::default()
        }),
    )? {
        Response::Issues(r) => r.into_iter().map(|i| i.id).collect(),
        other => return Err(unexpected(other)),
    };
    Ok((issues, ready))
}

/// Who is under whom: parents' children through parent-child edges.
pub(super) struct Family<'a> {
    children: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Family<'a> {
    pub(super) fn of(issues: &'a [Issue]) -> Family<'a> {
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for i in issues {
            for d in i
                .dependencies
                .iter()
                .filter(|d| d.dep_type == DepType::ParentChild)
            {
                children
                    .entry(d.depends_on_id.as_str())
                    .or_default()
                    .push(i.id.as_str());
            }
        }
        Family { children }
    }

    /// Everything under `root` (children, their children, ...), not `root`
    /// itself; each once (an imported file may hold a cycle: the seen set
    /// ends the walk anyway).
    pub(super) fn under(&self, root: &str) -> BTreeSet<&'a str> {
        let mut under = BTreeSet::new();
        let mut todo = vec![root];
        while let Some(id) = todo.pop() {
            for &c in self.children.get(id).map(Vec::as_slice).unwrap_or_default() {
                if c != root && under.insert(c) {
                    todo.push(c);
                }
            }
        }
        under
    }
}

pub fn cmd_graph(ctx: &Ctx, a: GraphArgs) -> Result<(), CliError> {
    let (issues, ready) = issues_and_ready(ctx)?;
    let by_id: BTreeMap<&str, &Issue> = issues.iter().map(|i| (i.id.as_str(), i)).collect();
    let shown: BTreeSet<&str> = match &a.id {
        Some(q) => {
            let root = resolve(&by_id, q)?;
            let mut set = Family::of(&issues).under(root);
            set.insert(root);
            set
        }
        None => issues.iter().map(|i| i.id.as_str()).collect(),
    };
    let shown: BTreeSet<&str> = shown
        .into_iter()
        .filter(|id| a.all || a.id.as_deref() == Some(*id) || !by_id[id].status.is_closed())
        .collect();
    let mut edges = Vec::new();
    for id in &shown {
        for d in &by_id[id].dependencies {
            if shown.contains(d.depends_on_id.as_str()) {
                edges.push((d.depends_on_id.as_str(), *id, &d.dep_type));
            }
        }
    }
    if ctx.json {
        // The graph as data: nodes with their state, edges blocker → waiter.
        let nodes: Vec<serde_json::Value> = shown
            .iter()
            .map(|id| {
                let i = by_id[id];
                serde_json::json!({
                    "id": i.id,
                    "title": i.title,
                    "status": i.status.to_string(),
                    "assignee": i.assignee,
                    "state": class(i, &ready),
                })
            })
            .collect();
        let edges: Vec<serde_json::Value> = edges
            .iter()
            .map(|(from, to, t)| serde_json::json!({"from": from, "to": to, "type": t.as_str()}))
            .collect();
        return output::json(&serde_json::json!({"nodes": nodes, "edges": edges}));
    }
    let text = match a.format {
        Format::Mermaid => mermaid(&shown, &edges, &by_id, &ready),
        Format::Dot => dot(&shown, &edges, &by_id, &ready),
    };
    output::print(&text)
}

/// The issue `q` names: exactly, or by a unique prefix.
fn resolve<'a>(by_id: &BTreeMap<&'a str, &Issue>, q: &str) -> Result<&'a str, CliError> {
    if let Some((id, _)) = by_id.get_key_value(q) {
        return Ok(id);
    }
    let hits: Vec<&&str> = by_id.keys().filter(|k| k.starts_with(q)).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(CliError(
            bd::Error::not_found(format!("no issue {q}")).hint("`bd list --all` shows the ids"),
        )),
        _ => Err(CliError::usage(
            format!("{q} matches {} issues", hits.len()),
            "give more of the id",
        )),
    }
}

fn label(i: &Issue) -> String {
    let mut l = format!("{}: {}", i.id, i.title);
    if l.chars().count() > 60 {
        l = l.chars().take(57).collect::<String>() + "...";
    }
    if let Some(a) = i
        .assignee
        .as_deref()
        .filter(|_| i.status.as_str() == "in_progress")
    {
        l.push_str(&format!(" ({a})"));
    }
    l
}

fn class(i: &Issue, ready: &BTreeSet<String>) -> &'static str {
    if i.status.is_closed() {
        "closed"
    } else if ready.contains(&i.id) {
        "ready"
    } else if i.status.as_str() == "in_progress" {
        "working"
    } else {
        "waiting"
    }
}

fn mermaid(
    shown: &BTreeSet<&str>,
    edges: &[(&str, &str, &DepType)],
    by_id: &BTreeMap<&str, &Issue>,
    ready: &BTreeSet<String>,
) -> String {
    // Node names are positions: ids may hold characters Mermaid reads.
    let name: BTreeMap<&str, usize> = shown.iter().enumerate().map(|(n, id)| (*id, n)).collect();
    let mut s = String::from("graph TD\n");
    for id in shown {
        let i = by_id[id];
        let text = label(i).replace('"', "#quot;");
        s.push_str(&format!(
            "  n{}[\"{text}\"]:::{}\n",
            name[id],
            class(i, ready)
        ));
    }
    for (from, to, kind) in edges {
        let arrow = if kind.gates() { "-->" } else { "-.->" };
        s.push_str(&format!(
            "  n{} {arrow}|{kind}| n{}\n",
            name[from], name[to]
        ));
    }
    s.push_str("  classDef ready fill:#d4f7d4,stroke:#2e7d32\n");
    s.push_str("  classDef working fill:#fff3c4,stroke:#b58900\n");
    s.push_str("  classDef waiting fill:#f0f0f0,stroke:#888\n");
    s.push_str("  classDef closed fill:#fafafa,stroke:#bbb,color:#999\n");
    s
}

fn dot(
    shown: &BTreeSet<&str>,
    edges: &[(&str, &str, &DepType)],
    by_id: &BTreeMap<&str, &Issue>,
    ready: &BTreeSet<String>,
) -> String {
    let quote = |t: &str| t.replace('\\', "\\\\").replace('"', "\\\"");
    let mut s = String::from(
        "digraph bd {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"sans\"];\n",
    );
    for id in shown {
        let i = by_id[id];
        let fill = match class(i, ready) {
            "ready" => "#d4f7d4",
            "working" => "#fff3c4",
            "closed" => "#fafafa",
            _ => "#f0f0f0",
        };
        s.push_str(&format!(
            "  \"{}\" [label=\"{}\", fillcolor=\"{fill}\"];\n",
            quote(id),
            quote(&label(i))
        ));
    }
    for (from, to, kind) in edges {
        let style = if kind.gates() { "solid" } else { "dashed" };
        s.push_str(&format!(
            "  \"{}\" -> \"{}\" [label=\"{kind}\", style={style}];\n",
            quote(from),
            quote(to)
        ));
    }
    s.push_str("}\n");
    s
}
