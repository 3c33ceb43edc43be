"""Sampling policies: which cohort rows become questions, per task.

- `kare` (KARE / ReMedi): classes in order of rarity (for Yes/No: positives
  first); within a class, rows in a seeded random order; at most one sample
  per patient across classes; at most `max_per_class` per class; stop at
  `total`.
- `balanced`: the same number of rows for every class (the smallest class
  size, capped by `max_per_class` and `total // classes`); several samples of
  one patient allowed.
- `natural`: a seeded random subset of `total` rows (all rows when `total` is
  null), label proportions as they come.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl

from corpus.errors import ConfigError

POLICIES = ("kare", "balanced", "natural")


@dataclass(frozen=True)
class SamplingPolicy:
    policy: str = "natural"
    max_per_class: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"sampling policy: expected one of {', '.join(POLICIES)}, found {self.policy!r}")
        for name in ("max_per_class", "total"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"sampling {name}: expected a positive number or null, found {value}")


def _shuffled(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Rows in a seeded order that depends only on the rows' keys, not on their input order.

    sha256 rather than polars' hash: the order must be the same on any machine and version.
    """
    keys = [
        hashlib.sha256(f"{seed}:{subject}:{hadm}".encode()).hexdigest()
        for subject, hadm in zip(frame["subject_id"].to_list(), frame["hadm_id"].to_list())
    ]
    return frame.with_columns(pl.Series("_order", keys, dtype=pl.String)).sort("_order").drop("_order")


def sample_cohort(cohort: pl.DataFrame, policy: SamplingPolicy, seed: int) -> pl.DataFrame:
    """The rows of `cohort` (subject_id, hadm_id, label, ...) chosen by `policy`, sorted by key."""
    cap = policy.max_per_class or cohort.height
    total = policy.total or cohort.height
    if policy.policy == "natural":
        chosen = _shuffled(cohort, seed).head(total)
    elif policy.policy == "balanced":
        sizes = cohort.group_by("label").len()
        per_class = min(int(sizes["len"].min()), cap, total // max(sizes.height, 1))
        chosen = pl.concat(
            [_shuffled(cohort.filter(pl.col("label") == label), seed).head(per_class) for label in sorted(sizes["label"])]
        )
    else:  # kare
        # Rarest class first (ties: higher label first, so Yes/No puts positives first).
        sizes = cohort.group_by("label").len().sort(["len", "label"], descending=[False, True])
        used_patients: set[int] = set()
        parts = []
        remaining = total
        for label in sizes["label"]:
            rows = _shuffled(cohort.filter(pl.col("label") == label), seed)
            rows = rows.filter(~pl.col("subject_id").is_in(list(used_patients)))
            rows = rows.unique(subset="subject_id", keep="first", maintain_order=True)
            take = rows.head(min(cap, remaining))
            used_patients.update(take["subject_id"].to_list())
            remaining -= take.height
            parts.append(take)
        chosen = pl.concat(parts)
    return chosen.sort(["subject_id", "hadm_id"])
