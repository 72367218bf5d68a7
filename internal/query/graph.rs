//! The dependency graph: cycle checks, cycle listing and trees.

use crate::Result;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Whether adding "`from` depends on `to`" would close a cycle of gating edges
/// (`blocks`, `parent-child`): true iff `from` is reachable from `to`.
pub fn would_cycle(conn: &Connection, from: &str, to: &str) -> Result<bool> {
    if from == to {
        return Ok(true);
    }
    let found: Option<i64> = conn
        .prepare_cached(
            "WITH RECURSIVE reach(id) AS (
                 SELECT ?1
                 UNION
                 SELECT d.depends_on_id FROM deps d JOIN reach r ON d.issue_id = r.id
                 WHERE d.type IN ('blocks', 'parent-child'))
             SELECT 1 FROM reach WHERE id = ?2 LIMIT 1",
        )?
        .query_row(params![to, from], |r| r.get(0))
        .optional()?;
    Ok(found.is_some())
}

/// Every cycle of gating edges, as the sorted ids of each strongly connected
/// component with more than one issue (or a self-loop), sorted.
pub fn cycles(conn: &Connection) -> Result<Vec<Vec<String>>> {
    let mut adj: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut self_loops = BTreeSet::new();
    let mut stmt = conn.prepare(
        "SELECT issue_id, depends_on_id FROM deps WHERE type IN ('blocks', 'parent-child')",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (a, b) = row?;
        if a == b {
            self_loops.insert(a.clone());
        }
        adj.entry(b.clone()).or_default();
        adj.entry(a).or_default().push(b);
    }
    let mut out: Vec<Vec<String>> = tarjan(&adj)
        .into_iter()
        .filter(|c| c.len() > 1 || self_loops.contains(&c[0]))
        .collect();
    out.sort();
    Ok(out)
}

/// Strongly connected components (iterative Tarjan, so deep graphs cannot overflow
/// the stack). Each component is sorted.
fn tarjan(adj: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let names: Vec<&String> = adj.keys().collect();
    let index_of: BTreeMap<&String, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            adj[*n]
                .iter()
                .filter_map(|m| index_of.get(m).copied())
                .collect()
        })
        .collect();
    let n = names.len();
    let (mut index, mut low, mut on_stack) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut comps, mut next) = (Vec::new(), Vec::new(), 0usize);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if *i < edges[v].len() {
                let w = edges[v][*i];
                *i += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(names[w].clone());
                        if w == v {
                            break;
                        }
                    }
                    comp.sort();
                    comps.push(comp);
                }
            }
        }
    }
    comps
}

/// One line of a dependency tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeNode {
    /// Distance from the root (0 for the root).
    pub depth: usize,
    /// Issue id.
    pub id: String,
    /// Title, or empty when the issue is not known here.
    pub title: String,
    /// Status; `deleted` for a deleted issue, `missing` for one not known
    /// here (yet).
    pub status: String,
    /// Priority; none for a deleted or missing issue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// The edge type that led here (`None` for the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dep_type: Option<String>,
    /// Shown already higher up; its subtree is not repeated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
}

/// The tree of what `root` depends on (or, with `reverse`, what depends on it), depth
/// first, at most `max_depth` levels below the root.
pub fn dependency_tree(
    conn: &Connection,
    root: &str,
    reverse: bool,
    max_depth: usize,
) -> Result<Vec<TreeNode>> {
    let edge_sql = if reverse {
        "SELECT issue_id, type FROM deps WHERE depends_on_id = ?1 ORDER BY issue_id, type"
    } else {
        "SELECT depends_on_id, type FROM deps WHERE issue_id = ?1 ORDER BY depends_on_id, type"
    };
    let mut edges = conn.prepare_cached(edge_sql)?;
    let mut info =
        conn.prepare_cached("SELECT title, status, priority FROM issues WHERE id = ?1")?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<(usize, String, Option<String>)> = vec![(0, root.to_string(), None)];
    while let Some((depth, id, dep_type)) = todo.pop() {
        let found = info
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let (title, status, priority) = match found {
            Some((title, status, priority)) => (title, status, Some(priority)),
            None if super::is_deleted(conn, &id)? => (String::new(), "deleted".into(), None),
            None => (String::new(), "missing".into(), None),
        };
        let repeated = !seen.insert(id.clone());
        if !repeated && depth < max_depth {
            let next: Vec<(String, String)> = edges
                .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (child, kind) in next.into_iter().rev() {
                todo.push((depth + 1, child, Some(kind)));
            }
        }
        out.push(TreeNode {
            depth,
            id,
            title,
            status,
            priority,
            dep_type,
            repeated,
        });
    }
    Ok(out)
}
