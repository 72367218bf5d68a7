#!/usr/bin/env python3
"""Prints criterion's latest estimates for `cargo bench --bench service` as a
Markdown table (median of each benchmark), for README.md and DAEMON_DESIGN.md."""
import json, pathlib, sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
ops = ["create", "update", "update_hot_issue", "show", "list_50", "list_label_50", "ready_10", "ready_all"]
sizes = [100, 10_000, 100_000]

def median_ns(group, name):
    f = root / group / name / "new" / "estimates.json"
    if not f.exists():
        return None
    return json.loads(f.read_text())["median"]["point_estimate"]

def fmt(ns):
    if ns is None:
        return "–"
    return f"{ns / 1e3:.0f} µs" if ns < 1e6 else f"{ns / 1e6:.2f} ms"

print("| operation | " + " | ".join(f"{n:,} issues" for n in sizes) + " |")
print("|---|" + "---:|" * len(sizes))
for op in ops:
    print(f"| {op} | " + " | ".join(fmt(median_ns(f"at_{n}", f"{op}/{n}") if (root / f"at_{n}" / op).exists() else median_ns(f"at_{n}", op)) for n in sizes) + " |")
print()
print("| bulk, 10,000 issues | median |")
print("|---|---:|")
for name in ["import", "export", "flush_snapshot"]:
    print(f"| {name} | {fmt(median_ns('bulk_10000', name))} |")
