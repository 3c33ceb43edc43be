"""`--fail-on` thresholds: `METRIC OP VALUE`, e.g. `removed>0.2`, `added>100`, `leak_drop_rate>0.1`.

OP is one of > >= < <= == !=. Metrics (the report's "metrics" object):

- record kinds: `added`, `removed`, `changed`, `unchanged` and each change kind
  of the artifact (`chosen_changed`, `rejected_changed`, `both_changed`,
  `prompt_changed`, `completion_changed`, `text_changed`, `verdict_changed`,
  `metadata_changed`, `answer_changed`, `context_changed`, `options_changed`).
  A bare name is a **fraction of OLD's records** when VALUE is written with a
  decimal point or a percent sign (`removed>0.2`, `changed>=50%`) and a
  **count** when VALUE is a whole number (`added>100`). `NAME_count` and
  `NAME_fraction` say it outright.
- `leak_drop_rate` (NEW side: hinted samples dropped for a leak / hinted
  samples), `leak_drop_rate_old`, `leak_drop_rate_delta` (NEW - OLD);
  `regeneration_yield` (NEW: kept / hinted), `regeneration_yield_old`,
  `regeneration_yield_delta`;
- `hard_to_easy`, `easy_to_hard`, `hard_questions` (NEW), counts;
- `params_changed` (dotted keys that differ), `records_old`, `records_new`;
- `max_task_share_shift`: the largest change of a task's share of the records
  (0.1 = ten percentage points).

A threshold on a metric a side cannot give (no regenerated file, say) is an
error, not a pass: a CI gate that silently passes gates nothing.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from corpus.errors import CorpusError

OPS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt}
EXPR = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d*)?|-?\.\d+)(%?)\s*$")


class GateError(CorpusError):
    """A --fail-on expression that does not parse or names a metric the report cannot give."""


@dataclass(frozen=True)
class Gate:
    expr: str
    metric: str
    op: str
    threshold: float

    def check(self, metrics: dict) -> dict:
        value = metrics.get(self.metric)
        if value is None:
            raise GateError(f"--fail-on {self.expr!r}: metric {self.metric} is not available for these sides "
                            f"(one side lacks the artifact it comes from)")
        return {"expr": self.expr, "metric": self.metric, "op": self.op, "threshold": self.threshold,
                "value": value, "tripped": bool(OPS[self.op](value, self.threshold))}


def parse_gate(expr: str, metrics: dict) -> Gate:
    match = EXPR.match(expr)
    if not match:
        raise GateError(f"--fail-on {expr!r}: expected METRIC OP VALUE (e.g. removed>0.2), OP one of "
                        f"{' '.join(OPS)}")
    name, op, number, percent = match.groups()
    threshold = float(number) / (100 if percent else 1)
    if f"{name}_count" in metrics:  # a record kind: fraction or count, by how VALUE is written
        name = f"{name}_fraction" if percent or "." in number else f"{name}_count"
    if name not in metrics:
        known = sorted({m.removesuffix("_count").removesuffix("_fraction") for m in metrics} | set(metrics))
        raise GateError(f"--fail-on {expr!r}: unknown metric {name}; known: {', '.join(known)}")
    return Gate(expr, name, op, threshold)


def evaluate(exprs: list[str], metrics: dict) -> list[dict]:
    """Each expression's value and whether it tripped; GateError on a bad or unavailable one."""
    return [parse_gate(expr, metrics).check(metrics) for expr in exprs]
