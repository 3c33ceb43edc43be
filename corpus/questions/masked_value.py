"""C-Reason masked-value questions: hide one feature of a registry row, show the rest, ask which option holds it.

For each question a row and a feature with a recorded value are picked
(seeded, per feature); the value is hidden; the row's other recorded values
are shown as readable lines ("Heart rate: 92.3 bpm"); four options are given,
exactly one right.

- Numeric options are ranges. A scikit-learn GaussianMixture (fixed
  random_state) is fitted to the feature's recorded values across the
  registry; the boundaries are the midpoints between adjacent component means
  (sorted). When the mixture has fewer distinct means than needed (at the
  shown precision), the boundaries are quantiles of the values instead. The
  boundaries are rounded to the precision they are shown with *before* the
  right option is chosen, so the option text and the answer can never
  disagree; the ranges are half-open ("72.0 to below 85.5"), cover the real
  line and do not overlap.
- Categorical options are the feature's categories: the right one plus the
  most frequent others when there are more than needed, padded with the
  template's never-right fillers ("not recorded") when there are fewer.
- Shortcuts are removed: a column whose mutual information with the hidden
  feature exceeds `mi_threshold` is left out of that question's context.
  The measure is scikit-learn's adjusted_mutual_info_score (normalized to at
  most 1 and corrected for chance) on quantile bins of numeric columns
  (`mi_bins`, over each column's recorded values) and on the categories of
  categorical ones, over the rows where both are recorded. Plain normalized
  MI is not used: it is inflated on small overlaps (two rarely measured labs
  sharing 5 rows score ~0.7 by chance), which would withhold unrelated
  values; adjusted MI flags what is really redundant (hematocrit and
  hemoglobin, ~0.53). Scores are cached per column pair. Pairwise MI cannot
  see a value implied by two others together (MAP from SBP and DBP).
- Option order is shuffled with random.Random seeded from a sha256 over the
  question's content (never Python's hash(), which changes between runs).

Wording lives in corpus/templates/masked_value_question.txt; its hash is part
of every record. Output: question records sorted by id, split unset.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import warnings
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl

from corpus.atomic import canonical_json
from corpus.errors import ConfigError
from corpus.questions.record import OPTION_LETTERS, lettered, make_question, template_hash
from corpus.registry.spec import ColumnSpec, RegistrySpec

TASK = "masked_value"
LABEL_CONVENTION = "creason"
TEMPLATE_PARTS = (
    "context_header",
    "context_line",
    "question_numeric",
    "question_categorical",
    "range_below",
    "range_between",
    "range_above",
    "categorical_padding",
)
# Extra digits tried when two range boundaries round to the same shown value.
MAX_EXTRA_DECIMALS = 3


@dataclass(frozen=True)
class MaskedValueConfig:
    questions_per_feature: int = 100  # distinct rows per hidden feature (fewer when fewer are recorded)
    max_questions: int | None = None  # total cap after that (seeded choice); None: no cap
    mi_threshold: float = 0.5
    mi_bins: int = 10  # quantile bins of a numeric column for mutual information
    seed: int = 13
    n_options: int = 4
    gmm_components: int = 4
    features: tuple[str, ...] | None = None  # features that may be hidden; None: every feature of the spec
    show_outcomes: bool = True  # outcome columns are shown as context (never hidden)

    def __post_init__(self) -> None:
        def bad(key: str, expected: str, found: Any) -> ConfigError:
            return ConfigError(f"masked_value.{key}: expected {expected}, found {found!r}")

        if self.questions_per_feature < 1:
            raise bad("questions_per_feature", "a whole number >= 1", self.questions_per_feature)
        if self.max_questions is not None and self.max_questions < 1:
            raise bad("max_questions", "null or a whole number >= 1", self.max_questions)
        if not 0.0 <= self.mi_threshold <= 1.0:
            raise bad("mi_threshold", "a number from 0 to 1", self.mi_threshold)
        if self.mi_bins < 2:
            raise bad("mi_bins", "a whole number >= 2", self.mi_bins)
        if not 2 <= self.n_options <= len(OPTION_LETTERS):
            raise bad("n_options", f"a whole number from 2 to {len(OPTION_LETTERS)}", self.n_options)
        if self.gmm_components < 2:
            raise bad("gmm_components", "a whole number >= 2", self.gmm_components)
        if self.features is not None:
            object.__setattr__(self, "features", tuple(self.features))


@dataclass(frozen=True)
class MaskedValueQuestion:
    """A question record and what it was built from (for checks and statistics, not for the model)."""

    record: dict
    feature: str  # the hidden column
    value: float | str  # its value: a number, or the category as text
    option_values: tuple  # per option as shown: (lo, hi) range (None: open end), category text, or None (filler)
    shown: tuple[str, ...]  # columns shown in the context, in order
    withheld: tuple[str, ...]  # recorded columns left out: mutual information above the threshold


# --- wording -------------------------------------------------------------------


def default_template_path() -> Path:
    return Path(str(resources.files("corpus").joinpath("templates", "masked_value_question.txt")))


def load_template(path: Path | str) -> dict[str, str]:
    """The template's parts: '[name]' starts one, '#' lines are comments, outer blank lines are dropped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{path}: masked-value question template not found") from None
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith("#"):
            continue
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = parts.setdefault(stripped[1:-1].strip(), [])
        elif current is not None:
            current.append(line.rstrip())
    missing = [p for p in TEMPLATE_PARTS if p not in parts]
    if missing:
        raise ConfigError(f"{path}: template lacks part(s) {', '.join('[' + p + ']' for p in missing)}")
    return {name: "\n".join(body).strip("\n") for name, body in parts.items()}


def _fill(template: dict[str, str], part: str, **values: Any) -> str:
    try:
        return template[part].format(**values)
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"template part [{part}]: unknown placeholder {exc} (known: {', '.join(values)})") from None


# --- numbers as shown ----------------------------------------------------------


def _stable_seed(*parts: Any) -> int:
    """A seed from content: sha256 over canonical JSON, the same on every machine and run."""
    return int(hashlib.sha256(canonical_json([str(p) for p in parts]).encode("utf-8")).hexdigest()[:16], 16)


def format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    # -0.0 and small negatives rounded to zero read as 0
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def unit_suffix(unit: str | None) -> str:
    if not unit:
        return ""
    return unit if unit.startswith("%") else f" {unit}"


def _auto_decimals(values: np.ndarray) -> int:
    """About three significant digits for a typical value: 85 -> 1, 7.38 -> 2, 0.05 -> 4."""
    typical = float(np.median(np.abs(values))) if len(values) else 0.0
    if typical == 0.0:
        return 2
    return int(min(6, max(0, 2 - math.floor(math.log10(typical)))))


@dataclass(frozen=True)
class RangeOptions:
    """Boundaries b1 < ... < b(n-1) as shown; option i is [b(i), b(i+1)) with open ends."""

    boundaries: tuple[float, ...]
    decimals: int
    source: str  # "gmm" or "quantiles"

    def index_of(self, value: float) -> int:
        return bisect.bisect_right(self.boundaries, value)

    def bounds(self, index: int) -> tuple[float | None, float | None]:
        edges = (None, *self.boundaries, None)
        return edges[index], edges[index + 1]


def _rounded_distinct(candidates: np.ndarray, decimals: int) -> tuple[tuple[float, ...], int] | None:
    """Boundaries rounded to the shown precision, with extra digits if two would read the same."""
    for extra in range(MAX_EXTRA_DECIMALS + 1):
        digits = decimals + extra
        shown = [float(format_number(b, digits)) for b in np.sort(candidates)]
        if len(set(shown)) == len(shown):
            return tuple(shown), digits
    return None


def _pick_even(midpoints: np.ndarray, values: np.ndarray, wanted: int) -> np.ndarray:
    """From more midpoints than needed, the `wanted` ones whose data shares come closest to even."""
    ordered = np.sort(values)
    shares = np.searchsorted(ordered, midpoints) / len(ordered)
    chosen: list[int] = []
    for j in range(1, wanted + 1):
        for index in np.argsort(np.abs(shares - j / (wanted + 1)), kind="stable"):
            if int(index) not in chosen:
                chosen.append(int(index))
                break
    return np.sort(midpoints[chosen])


def range_options(values: np.ndarray, n_options: int, components: int, seed: int, decimals: int) -> RangeOptions | None:
    """Range boundaries for a numeric feature from a Gaussian mixture; None when it has too few distinct values."""
    wanted = n_options - 1
    distinct = np.unique(values)
    if len(distinct) < n_options:
        return None
    # Imported here, not at module level: scikit-learn takes ~2 s to import and the
    # questions stage imports this module even when no registry questions are asked.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(n_components=min(components, len(distinct)), random_state=seed, max_iter=500)
    with warnings.catch_warnings():
        # a mixture that stops early still gives usable means; the boundaries are checked below
        warnings.simplefilter("ignore", ConvergenceWarning)
        mixture.fit(values.reshape(-1, 1))
    means = np.unique([float(format_number(m, decimals)) for m in mixture.means_.ravel()])
    midpoints = (means[1:] + means[:-1]) / 2
    if len(midpoints) > wanted:
        midpoints = _pick_even(midpoints, values, wanted)
    if len(midpoints) == wanted:
        shown = _rounded_distinct(midpoints, decimals)
        if shown is not None:
            return RangeOptions(boundaries=shown[0], decimals=shown[1], source="gmm")
    quantiles = np.quantile(values, [j / n_options for j in range(1, n_options)])
    shown = _rounded_distinct(quantiles, decimals)
    if shown is None:
        return None
    return RangeOptions(boundaries=shown[0], decimals=shown[1], source="quantiles")


# --- mutual information --------------------------------------------------------


class MutualInformation:
    """Adjusted mutual information between registry columns, on discretized values, cached per pair."""

    def __init__(self, registry: pl.DataFrame, spec: RegistrySpec, bins: int):
        self._codes = {c.name: self._discretize(registry[c.name], c, bins) for c in spec.columns if c.role != "id"}
        self._cache: dict[tuple[str, str], float] = {}

    @staticmethod
    def _discretize(series: pl.Series, column: ColumnSpec, bins: int) -> np.ndarray:
        """Integer codes, -1 where the value is missing."""
        codes = np.full(series.len(), -1, dtype=np.int64)
        if column.type == "categorical":
            texts = series.to_list()
            categories = sorted({t for t in texts if not column.is_missing(t)})
            index = {t: i for i, t in enumerate(categories)}
            for row, text in enumerate(texts):
                if not column.is_missing(text):
                    codes[row] = index[text]
            return codes
        values = series.cast(pl.Float64).fill_null(np.nan).to_numpy()
        recorded = np.isfinite(values)
        if recorded.any():
            edges = np.unique(np.quantile(values[recorded], np.linspace(0, 1, bins + 1)[1:-1]))
            codes[recorded] = np.searchsorted(edges, values[recorded], side="right")
        return codes

    def score(self, a: str, b: str) -> float:
        key = (a, b) if a < b else (b, a)
        if key not in self._cache:
            x, y = self._codes[key[0]], self._codes[key[1]]
            both = (x >= 0) & (y >= 0)
            from sklearn.metrics import adjusted_mutual_info_score  # lazily: see range_options

            # Never recorded together: one can never be shown while the other is hidden.
            self._cache[key] = float(adjusted_mutual_info_score(x[both], y[both])) if both.sum() >= 2 else 0.0
        return self._cache[key]


# --- questions -----------------------------------------------------------------


class _Builder:
    """Everything shared by the questions of one registry: fitted ranges, category options, MI cache."""

    def __init__(self, registry, spec, config, template, template_id, note):
        self.registry, self.spec, self.config = registry, spec, config
        self.template, self.template_id, self.note = template, template_id, note
        self.rows = registry.to_dicts()
        self.mi = MutualInformation(registry, spec, config.mi_bins)
        self.padding = [line.strip() for line in template["categorical_padding"].splitlines() if line.strip()]

    def recorded(self, column: ColumnSpec) -> np.ndarray:
        values = self.registry[column.name].cast(pl.Float64).drop_nulls().to_numpy()
        return values[np.isfinite(values)]

    @cached_property
    def decimals(self) -> dict[str, int]:
        return {
            c.name: c.decimals if c.decimals is not None else _auto_decimals(self.recorded(c))
            for c in self.spec.columns
            if c.type == "numeric"
        }

    def ranges(self, column: ColumnSpec) -> RangeOptions | None:
        values = self.recorded(column)
        return range_options(
            values, self.config.n_options, self.config.gmm_components, self.config.seed, self.decimals[column.name]
        )

    def categories(self, column: ColumnSpec) -> list[str]:
        """Categories by frequency in the registry (most frequent first, ties by text), declared ones included."""
        counts: dict[str, int] = {c: 0 for c in column.categories or ()}
        for value in self.registry[column.name].to_list():
            if not column.is_missing(value):
                counts[value] = counts.get(value, 0) + 1
        return sorted(counts, key=lambda c: (-counts[c], c))

    def show(self, column: ColumnSpec, value: Any) -> str:
        if column.type == "categorical":
            return column.show_category(value)
        return format_number(float(value), self.decimals[column.name]) + unit_suffix(column.unit)

    def context(self, row: dict, hidden: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        shown, withheld, lines = [], [], []
        for column in self.spec.columns:
            if column.name == hidden or column.role == "id" or column.is_missing(row[column.name]):
                continue
            if column.role == "outcome" and not self.config.show_outcomes:
                continue
            if self.mi.score(hidden, column.name) > self.config.mi_threshold:
                withheld.append(column.name)
                continue
            shown.append(column.name)
            value = self.show(column, row[column.name])
            lines.append(_fill(self.template, "context_line", readable=column.readable, value=value))
        head = [_fill(self.template, "context_header", registry=self.spec.title)]
        if self.note:
            head.append(self.note)
        return "\n".join(head + lines), tuple(shown), tuple(withheld)

    def numeric_options(self, column: ColumnSpec, ranges: RangeOptions, value: float):
        suffix = unit_suffix(column.unit)
        texts, spans = [], []
        for index in range(len(ranges.boundaries) + 1):
            lo, hi = ranges.bounds(index)
            show = {"unit_suffix": suffix}
            if lo is not None:
                show["lo"] = format_number(lo, ranges.decimals)
            if hi is not None:
                show["hi"] = format_number(hi, ranges.decimals)
            part = "range_below" if lo is None else "range_above" if hi is None else "range_between"
            texts.append(_fill(self.template, part, **show))
            spans.append((lo, hi))
        return texts, spans, ranges.index_of(value)

    def categorical_options(self, column: ColumnSpec, categories: list[str], value: str):
        n = self.config.n_options
        kept = [value] + [c for c in categories if c != value][: n - 1]
        kept.sort(key=categories.index)
        texts = [column.show_category(c) for c in kept]
        fillers = [p for p in self.padding if p not in texts][: n - len(texts)]
        if len(texts) + len(fillers) < n:
            raise ConfigError(
                f"template [categorical_padding]: {column.name} has {len(texts)} categories; "
                f"{n - len(texts)} filler line(s) distinct from them are needed, found {len(fillers)}"
            )
        return texts + fillers, list(kept) + [None] * len(fillers), kept.index(value)

    def question(self, row: dict, column: ColumnSpec, options_for) -> MaskedValueQuestion | None:
        value = row[column.name]
        context, shown, withheld = self.context(row, column.name)
        if not shown:
            return None  # nothing left to reason from
        texts, values, right = options_for(value)
        subject_id = int(row[self.spec.id_column.name])
        order = list(range(len(texts)))
        random.Random(_stable_seed(self.config.seed, subject_id, column.name, *texts)).shuffle(order)
        options = lettered([texts[i] for i in order])
        part = "question_numeric" if column.type == "numeric" else "question_categorical"
        record = make_question(
            task=TASK,
            subject_id=subject_id,
            hadm_id=None,
            context=context,
            question=_fill(self.template, part, readable=column.readable, options="\n".join(options)),
            options=options,
            answer=options[order.index(right)],
            label_convention=LABEL_CONVENTION,
            template_hash=self.template_id,
        )
        return MaskedValueQuestion(
            record=record,
            feature=column.name,
            value=value,
            option_values=tuple(values[i] for i in order),
            shown=shown,
            withheld=withheld,
        )


def _maskable(spec: RegistrySpec, config: MaskedValueConfig) -> list[ColumnSpec]:
    features = spec.features
    if config.features is None:
        return list(features)
    names = {c.name for c in features}
    unknown = [f for f in config.features if f not in names]
    if unknown:
        raise ConfigError(
            f"masked_value.features: {', '.join(unknown)} are not features of {spec.path} "
            f"(features: {', '.join(sorted(names))})"
        )
    return [c for c in features if c.name in config.features]


def _note(spec: RegistrySpec, values: Mapping[str, Any]) -> str | None:
    if not spec.note:
        return None
    try:
        return spec.note.format(**values)
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"{spec.path}: note placeholder {exc} has no value (pass it in note_values)") from None


def masked_value_questions(
    registry: pl.DataFrame,
    spec: RegistrySpec,
    config: MaskedValueConfig = MaskedValueConfig(),
    *,
    note_values: Mapping[str, Any] | None = None,
    template_path: Path | str | None = None,
) -> list[MaskedValueQuestion]:
    """Questions with what they were built from, sorted by record id.

    `registry` is a checked table (corpus.registry.load_registry); `note_values`
    fills the spec note's placeholders (the sepsis note needs window_hours).
    """
    template_path = Path(template_path) if template_path is not None else default_template_path()
    builder = _Builder(
        registry.sort(spec.id_column.name),
        spec,
        config,
        load_template(template_path),
        template_hash(template_path),
        _note(spec, note_values or {}),
    )
    questions: list[MaskedValueQuestion] = []
    for column in _maskable(spec, config):
        if column.type == "numeric":
            ranges = builder.ranges(column)
            if ranges is None:
                continue  # too few distinct values for distinct ranges
            options_for = lambda value, c=column, r=ranges: builder.numeric_options(c, r, float(value))  # noqa: E731
        else:
            categories = builder.categories(column)
            if len(categories) < 2:
                continue  # one category: nothing to ask
            options_for = lambda value, c=column, k=categories: builder.categorical_options(c, k, value)  # noqa: E731
        rows = [r for r in builder.rows if not column.is_missing(r[column.name])]
        picked = random.Random(_stable_seed(config.seed, "rows", column.name)).sample(
            range(len(rows)), min(config.questions_per_feature, len(rows))
        )
        for index in sorted(picked):
            question = builder.question(rows[index], column, options_for)
            if question is not None:
                questions.append(question)
    questions.sort(key=lambda q: q.record["id"])
    if config.max_questions is not None and len(questions) > config.max_questions:
        kept = random.Random(_stable_seed(config.seed, "total")).sample(range(len(questions)), config.max_questions)
        questions = [questions[i] for i in sorted(kept)]
    return questions


def build_masked_value_questions(
    registry: pl.DataFrame,
    spec: RegistrySpec,
    config: MaskedValueConfig = MaskedValueConfig(),
    *,
    note_values: Mapping[str, Any] | None = None,
    template_path: Path | str | None = None,
) -> list[dict]:
    """Question records (task masked_value, label convention creason), sorted by id, split unset."""
    return [
        q.record
        for q in masked_value_questions(registry, spec, config, note_values=note_values, template_path=template_path)
    ]
