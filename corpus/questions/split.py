"""Split by patient: every question of one patient lands in the same split."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from corpus.errors import ConfigError

SPLITS = ("train", "val", "test")


def split_patients(patient_keys: Iterable[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """{patient key: split}: a seeded permutation of the sorted patients cut at the fractions.

    Keys are strings so that several sources (MIMIC subject ids, registry
    record ids) can share one namespace without colliding ("mimic:10000032").
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(f"questions.split_fractions: expected three fractions summing to 1, found {list(fractions)}")
    patients = sorted(set(patient_keys))
    order = sorted(patients, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())
    n_train = round(fractions[0] * len(order))
    n_val = round(fractions[1] * len(order))
    assignment = {}
    for index, key in enumerate(order):
        assignment[key] = "train" if index < n_train else "val" if index < n_train + n_val else "test"
    return assignment
