"""Typed views of params.yaml: one dataclass per concern, built and checked once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from corpus.errors import ConfigError

LABEL_CONVENTIONS = ("kare", "pyhealth")


@dataclass(frozen=True)
class DuckDBConfig:
    memory_limit: str = "4GB"
    threads: int = 2


@dataclass(frozen=True)
class MimicConfig:
    source: Path
    table_spec: Path = Path("schemas/mimic_tables.yaml")
    open_data: bool = True


@dataclass(frozen=True)
class CohortConfig:
    label_convention: str = "kare"
    readmission_days: int = 15
    los_bins: tuple[int, ...] = (0, 3, 7, 14)

    def __post_init__(self) -> None:
        if self.label_convention not in LABEL_CONVENTIONS:
            raise ConfigError(
                f"params.yaml cohorts.label_convention: expected one of {', '.join(LABEL_CONVENTIONS)}, "
                f"found {self.label_convention!r}"
            )
        bins = list(self.los_bins)
        if not bins or bins[0] != 0 or bins != sorted(set(bins)):
            raise ConfigError(
                f"params.yaml cohorts.los_bins: expected strictly increasing whole days starting at 0, found {bins}"
            )
        if self.readmission_days <= 0:
            raise ConfigError(f"params.yaml cohorts.readmission_days: expected > 0, found {self.readmission_days}")

    def los_class_names(self) -> list[str]:
        """Readable day ranges, one per class: '[0, 3)', ..., '[14, inf)'."""
        edges = list(self.los_bins) + [None]
        return [f"[{lo}, {hi if hi is not None else 'inf'})" for lo, hi in zip(edges[:-1], edges[1:])]


def load_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: parameters file not found (run from the repository root)")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml {name}: expected a mapping, found {type(value).__name__}")
    return value


def _build(cls, params: dict[str, Any], name: str, **converters):
    section = dict(_section(params, name))
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"params.yaml {name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key, convert in converters.items():
        if key in section:
            section[key] = convert(section[key])
    return cls(**section)


def duckdb_config(params: dict[str, Any]) -> DuckDBConfig:
    return _build(DuckDBConfig, params, "duckdb", threads=int, memory_limit=str)


def mimic_config(params: dict[str, Any]) -> MimicConfig:
    if "source" not in _section(params, "mimic"):
        raise ConfigError("params.yaml mimic.source: missing (path to a MIMIC-IV install with hosp/ and icu/)")
    return _build(MimicConfig, params, "mimic", source=Path, table_spec=Path, open_data=bool)


def cohort_config(params: dict[str, Any]) -> CohortConfig:
    return _build(CohortConfig, params, "cohorts", los_bins=lambda v: tuple(int(x) for x in v), readmission_days=int)


@dataclass(frozen=True)
class QuestionsConfig:
    seed: int = 13
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    wording: Path = Path("corpus/templates/mimic_questions.yaml")
    # task -> SamplingPolicy (corpus.questions.sampling); only tasks listed get questions
    policies: dict = None  # type: ignore[assignment]


def questions_config(params: dict[str, Any]) -> QuestionsConfig:
    from corpus.questions.sampling import SamplingPolicy

    section = dict(_section(params, "questions"))
    policies = {}
    for task, entry in (section.pop("tasks", None) or {}).items():
        entry = dict(entry or {})
        unknown = sorted(set(entry) - {"policy", "max_per_class", "total"})
        if unknown:
            raise ConfigError(f"params.yaml questions.tasks.{task}: unknown key(s) {', '.join(unknown)}")
        policies[task] = SamplingPolicy(**entry)
    known = {"seed", "split_fractions", "wording"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"params.yaml questions: unknown key(s) {', '.join(unknown)}; known: tasks, {', '.join(sorted(known))}")
    return QuestionsConfig(
        seed=int(section.get("seed", 13)),
        split_fractions=tuple(float(x) for x in section.get("split_fractions", (0.8, 0.1, 0.1))),
        wording=Path(section.get("wording", "corpus/templates/mimic_questions.yaml")),
        policies=policies,
    )


@dataclass(frozen=True)
class RegistryConfig:
    source: Path = Path("../shared/data/sepsis-challenge-2019/training_setB")
    spec: Path = Path("schemas/registry_sepsis.yaml")
    window_hours: int = 24


def registry_config(params: dict[str, Any]) -> RegistryConfig:
    return _build(RegistryConfig, params, "registry", source=Path, spec=Path, window_hours=int)


def masked_value_config(params: dict[str, Any]):
    """MaskedValueConfig from params.yaml masked_value (None when the section is absent: no registry questions)."""
    from corpus.questions.masked_value import MaskedValueConfig

    if "masked_value" not in params:
        return None
    return _build(MaskedValueConfig, params, "masked_value", features=lambda v: None if v is None else tuple(v))


@dataclass(frozen=True)
class TransformersBackendConfig:
    max_batch_tokens: int = 65536
    max_rows: int = 128
    threads: int | None = None
    # auto: bfloat16 where the CPU has native bf16 (AVX512-BF16/AMX) or on a GPU, else float32.
    dtype: str = "auto"


@dataclass(frozen=True)
class OpenAIBackendConfig:
    # One URL, or a list (one server per GPU host) serving the same model; not in the fingerprint.
    base_url: str | tuple[str, ...] = "http://127.0.0.1:8000/v1"
    model: str = ""
    revision: str = ""
    concurrency: int = 8  # requests in flight per server
    attempts: int = 4  # tries per request, each on the least busy healthy server, before the stage fails
    timeout: float = 600.0  # seconds per try

    def __post_init__(self) -> None:
        from corpus.generate.openai_pool import normalise_urls

        urls = normalise_urls(self.base_url)  # checked here, so a bad list fails before any model loads
        object.__setattr__(self, "base_url", urls[0] if isinstance(self.base_url, str) else urls)
        if self.concurrency < 1 or self.attempts < 1:
            raise ConfigError(f"params.yaml sample.openai: concurrency and attempts must be >= 1, found "
                              f"{self.concurrency} and {self.attempts}")


@dataclass(frozen=True)
class OpenVINOBackendConfig:
    # Weights of the exported IR (export stage): fp32 | fp16 | int8 (weight-only, nncf).
    weight_format: str = "fp32"
    threads: int | None = None
    # f32 keeps a sample independent of what it is batched with; the CPU plugin's own
    # default on AMX machines (bf16, u8 KV cache) does not (corpus/generate/openvino_backend.py).
    inference_precision: str = "f32"
    kv_cache_precision: str = "f32"
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    cache_size_gb: int = 2  # KV blocks, allocated when the pipeline starts
    # IR of models without an export stage (the evaluated round models), keyed by model identity.
    export_cache: Path = Path(".cache/openvino")

    def __post_init__(self) -> None:
        from corpus.models.openvino_export import WEIGHT_FORMATS

        if self.weight_format not in WEIGHT_FORMATS:
            raise ConfigError(f"params.yaml sample.openvino.weight_format: expected one of "
                              f"{', '.join(WEIGHT_FORMATS)}, found {self.weight_format!r}")


@dataclass(frozen=True)
class SampleConfig:
    k: int = 4
    seed: int = 1234
    # auto: by CPU family, corpus/templates/backend_defaults.yaml (corpus/generate/auto_backend.py).
    backend: str = "auto"
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 160
    # First N train questions by id (null: all); a quick-run knob.
    limit: int | None = None
    # Only these tasks (null: all).
    tasks: tuple[str, ...] | None = None
    # This host samples the questions whose id falls in shard `shard` of `num_shards`.
    shard: int = 0
    num_shards: int = 1
    cache: Path = Path(".cache/generations.sqlite")
    transformers: TransformersBackendConfig = TransformersBackendConfig()
    openai: OpenAIBackendConfig = OpenAIBackendConfig()
    openvino: OpenVINOBackendConfig = OpenVINOBackendConfig()

    def __post_init__(self) -> None:
        from corpus.generate.backends import BACKENDS

        if self.backend not in BACKENDS + ("auto",):
            raise ConfigError(f"params.yaml sample.backend: expected auto or one of {', '.join(BACKENDS)}, "
                              f"found {self.backend!r}")
        if self.k < 1:
            raise ConfigError(f"params.yaml sample.k: expected >= 1, found {self.k}")
        if not 0 <= self.shard < self.num_shards:
            raise ConfigError(f"params.yaml sample.shard: expected 0 <= shard < num_shards, found {self.shard}/{self.num_shards}")


def sample_config(params: dict[str, Any]) -> SampleConfig:
    def nested(cls, name):
        return lambda value: _build(cls, {name: value or {}}, name)

    return _build(
        SampleConfig, params, "sample",
        cache=Path,
        tasks=lambda v: None if v is None else tuple(v),
        transformers=nested(TransformersBackendConfig, "sample.transformers"),
        openai=nested(OpenAIBackendConfig, "sample.openai"),
        openvino=lambda value: _build(OpenVINOBackendConfig, {"sample.openvino": value or {}}, "sample.openvino",
                                      export_cache=Path),
    )


@dataclass(frozen=True)
class RoundConfig:
    round: int
    # Local model folder that generates this round's samples (round 1: models/base).
    generator: Path


def rounds_config(params: dict[str, Any]) -> dict[int, RoundConfig]:
    entries = params.get("rounds") or {}
    if not isinstance(entries, dict):
        raise ConfigError('params.yaml rounds: expected a mapping of round number to {generator: ...}, e.g. "1": {generator: models/base}')
    rounds = {}
    for key, entry in entries.items():
        try:
            number = int(key)
        except ValueError:
            raise ConfigError(f"params.yaml rounds: key {key!r} is not a round number") from None
        if not isinstance(entry, dict) or "generator" not in entry:
            raise ConfigError(f"params.yaml rounds.{key}: expected {{generator: <model folder>}}")
        rounds[number] = RoundConfig(round=number, generator=Path(entry["generator"]))
    return rounds


@dataclass(frozen=True)
class RegenerateConfig:
    # A question is hard when its first-pass accuracy is at or below this (0: all k wrong).
    hard_threshold: float = 0.0
    # Hinted samples per hard question (null: sample.k).
    k: int | None = None
    # Leak rules file (null: corpus/templates/leak_rules.yaml).
    leak_rules: Path | None = None


def regenerate_config(params: dict[str, Any]) -> RegenerateConfig:
    return _build(RegenerateConfig, params, "regenerate",
                  leak_rules=lambda v: None if v is None else Path(v), hard_threshold=float)


def pairs_config(params: dict[str, Any]):
    from corpus.pairs import PairsConfig

    return _build(PairsConfig, params, "pairs", max_per_question=int)
