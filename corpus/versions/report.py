"""Rendering a `corpus diff` report (compare.build_report's dict): a rich terminal report or Markdown.

Both read the same dict the `--json` output prints, so the three never disagree.
"""

from __future__ import annotations

import json
import re

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

PCTS = ("p5", "p25", "p50", "p75", "p95")
SHOWN_IDS = 10
NUMBER = re.compile(r"^([+-]?\d+(\.\d+)?|—)?$")
WORD_CHANGE = re.compile(r"\[-(.*?)-\]|\{\+(.*?)\+\}", re.S)


def _side(side: dict) -> str:
    resolved = side["resolved"][:12] if side["kind"] == "rev" else side["resolved"]
    round_ = f", round {side['round']}" if side.get("round") else ""
    return f"{side['spec']} ({side['kind']} {resolved}{round_})"


def _value(value) -> str:
    return "—" if value is None else (json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value))


def _signed(n) -> str:
    return f"{n:+d}" if isinstance(n, int) else f"{n:+.4g}"


def _rows(report: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every section as (header, rows) of strings: what both renderers lay out."""
    records = report["records"]
    sections: dict[str, tuple[list[str], list[list[str]]]] = {}
    sections["Records"] = (["", "count"], [[k, str(records[k])] for k in
                                           ("old", "new", "unchanged", "added", "removed", "changed")]
                           + [[f"  {k}", str(n)] for k, n in records["changed_by_kind"].items()])
    sections["Per task and label"] = (["task", "label", "old", "new", "delta"],
                                      [[r["task"], r["label"], str(r["old"]), str(r["new"]), _signed(r["delta"])]
                                       for r in report["by_task_label"]])
    length_rows = []
    for field, sides in report["lengths"].items():
        for side in ("old", "new"):
            stats = sides[side] or {}
            length_rows.append([field, side, _value(stats.get("count")), *(_value(stats.get(p)) for p in PCTS),
                                _value(stats.get("mean"))])
    sections["Length (characters)"] = (["text", "side", "n", *PCTS, "mean"], length_rows)
    hard = report["hardness"]
    if hard:
        def ids(key):
            found = hard[key]
            return ", ".join(found[:SHOWN_IDS]) + (f" (+{len(found) - SHOWN_IDS})" if len(found) > SHOWN_IDS else "")
        sections["Hard / easy questions (first pass)"] = (["", "old", "new"], [
            ["hard threshold (accuracy <=)", str(hard["threshold"]["old"]), str(hard["threshold"]["new"])],
            ["hard questions", str(hard["hard"]["old"]), str(hard["hard"]["new"])],
            ["questions sampled", str(hard["questions"]["old"]), str(hard["questions"]["new"])]])
        sections["Questions that moved (sampled on both sides)"] = (["move", "questions", "ids"], [
            ["hard → easy", str(len(hard["hard_to_easy"])), ids("hard_to_easy")],
            ["easy → hard", str(len(hard["easy_to_hard"])), ids("easy_to_hard")]])
    regen = report["regeneration"]
    if regen["old"] or regen["new"]:
        old, new = regen["old"] or {}, regen["new"] or {}
        rows = [[k, _value(old.get(k)), _value(new.get(k))] for k in
                ("hinted", "kept", "yield", "leak_dropped", "leak_drop_rate")]
        for reason in sorted(set(old.get("filter_reasons", {})) | set(new.get("filter_reasons", {}))):
            rows.append([f"reason: {reason}", _value(old.get("filter_reasons", {}).get(reason, 0)),
                         _value(new.get("filter_reasons", {}).get(reason, 0))])
        for rule in sorted(set(old.get("leak_rules", {})) | set(new.get("leak_rules", {}))):
            rows.append([f"leak rule: {rule}", _value(old.get("leak_rules", {}).get(rule, 0)),
                         _value(new.get("leak_rules", {}).get(rule, 0))])
        sections["Regeneration and leak filter"] = (["", "old", "new"], rows)
    params = report["params"]
    sections["Params that differ"] = (["key", "old", "new"],
                                      [[c["key"], _value(c["old"]), _value(c["new"])] for c in params["changed"]])
    gens = report["generators"]
    gen_rows = []
    for artifact in ("samples", "regenerated"):
        gen_rows.append([artifact, ", ".join(gens["old"][artifact]) or "—", ", ".join(gens["new"][artifact]) or "—"])
    keys = sorted(set(gens["old"]["details"] or {}) | set(gens["new"]["details"] or {}))
    for key in keys:
        gen_rows.append([f"sample stage: {key}", _value((gens["old"]["details"] or {}).get(key)),
                         _value((gens["new"]["details"] or {}).get(key))])
    sections["Generator fingerprints"] = (["", "old", "new"], gen_rows)
    return sections


def _example_ids(example: dict) -> str:
    return " → ".join(i for i in (example["old_id"], example["new_id"]) if i)


def _gate_line(gate: dict) -> str:
    state = "TRIPPED" if gate["tripped"] else "ok"
    return f"{gate['expr']}: {gate['metric']} = {gate['value']} ({state})"


# -- rich ---------------------------------------------------------------------------------
def _rich_diff(diff: str) -> Text:
    text, last = Text(), 0
    for match in WORD_CHANGE.finditer(diff):
        text.append(diff[last:match.start()])
        if match.group(1) is not None:
            text.append(match.group(1), style="red strike")
        else:
            text.append(match.group(2), style="green bold")
        last = match.end()
    text.append(diff[last:])
    return text


def render_rich(report: dict, console: Console) -> None:
    console.print(Panel(f"[bold]{report['artifact']}[/]: {_side(report['old'])}  →  {_side(report['new'])}",
                        title="corpus diff", expand=False))
    for title, (header, rows) in _rows(report).items():
        if not rows:
            console.print(f"[bold]{title}[/]: none")
            continue
        table = Table(title=title, title_justify="left", show_edge=False)
        for i, name in enumerate(header):
            numeric = i > 0 and all(NUMBER.match(row[i]) for row in rows)
            table.add_column(name, justify="right" if numeric else "left", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if report["examples"]:
        items = []
        for example in report["examples"]:
            items.append(Text.assemble((f"{example['kind']} ", "bold"), f"{example['question_id']} ",
                                       (_example_ids(example), "dim"), f" [{example['field']}]"))
            # colours only where they show; piped output keeps the [-…-] {+…+} markers
            items.append(_rich_diff(example["diff"]) if console.is_terminal else Text(example["diff"]))
        console.print(Panel(Group(*items), title="Examples (word diff: red removed, green added)", expand=True))
    for gate in report.get("fail_on", []):
        console.print(("[red]" if gate["tripped"] else "[green]") + _gate_line(gate) + "[/]")


# -- markdown -------------------------------------------------------------------------------
def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    records = report["records"]
    lines = [f"### `corpus diff` — {report['artifact']}", "",
             f"**OLD** `{_side(report['old'])}` → **NEW** `{_side(report['new'])}`", "",
             f"{records['old']} → {records['new']} records: **{records['added']} added**, "
             f"**{records['removed']} removed**, **{records['changed']} changed**, {records['unchanged']} unchanged.", ""]
    for title, (header, rows) in _rows(report).items():
        lines.append(f"#### {title}")
        lines.append("")
        if not rows:
            lines += ["none", ""]
            continue
        lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    if report["examples"]:
        lines += ["<details><summary>Examples (word diff: [-removed-] {+added+})</summary>", ""]
        for example in report["examples"]:
            lines += [f"**{example['kind']}** `{example['question_id']}` `{_example_ids(example)}` "
                      f"({example['field']})", "", "```text", example["diff"], "```", ""]
        lines += ["</details>", ""]
    if report.get("fail_on"):
        lines += ["#### Gates", ""] + [f"- {'❌' if g['tripped'] else '✅'} `{_gate_line(g)}`"
                                       for g in report["fail_on"]] + [""]
    return "\n".join(lines)
