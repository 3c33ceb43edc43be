"""The dataset card (README.md) of a published version: Hub YAML metadata, licences, lineage.

The text lives in corpus/templates/dataset_card.md (string.Template, ${name}
placeholders); this module fills it. Nothing time-dependent goes in, so the
same version gives the same card bytes.

Licences follow the sources a version actually contains: the MIMIC-IV demo is
ODbL ("odbl"), the PhysioNet/CinC 2019 sepsis challenge CC BY 4.0
("cc-by-4.0"); a version with both lists both. Full MIMIC-IV
(params.yaml mimic.open_data: false) is credentialed data under the PhysioNet
Credentialed Health Data License and its data use agreement: it may only go to
a private repository. A registry we cannot name has unknown terms and is
treated the same way.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml
from huggingface_hub import DatasetCardData

REGISTRY_TASK = "masked_value"


@dataclass(frozen=True)
class SourceDataset:
    name: str
    path: str
    license: str  # Hub licence id ("other" when it has none)
    license_name: str
    url: str
    citation: str
    tasks: tuple[str, ...]
    # None: may be public. Otherwise why it may only go to a private repository.
    public_refusal: str | None = None
    lock_md5: str | None = None


MIMIC_DEMO = dict(
    name="MIMIC-IV Clinical Database Demo v2.2", license="odbl", license_name="Open Data Commons Open Database License v1.0",
    url="https://physionet.org/content/mimic-iv-demo/2.2/",
    citation="Johnson, A., Bulgarelli, L., Pollard, T., Horng, S., Celi, L. A., Mark, R. (2023). MIMIC-IV Clinical "
             "Database Demo (version 2.2). PhysioNet. https://doi.org/10.13026/dp1f-ex47")
MIMIC_FULL = dict(
    name="MIMIC-IV (credentialed)", license="other", license_name="PhysioNet Credentialed Health Data License 1.5.0",
    url="https://physionet.org/content/mimiciv/view-license/",
    citation="Johnson, A., Bulgarelli, L., Pollard, T., et al. MIMIC-IV. PhysioNet. https://doi.org/10.13026/kpb9-mt58",
    public_refusal=("it is derived from credentialed MIMIC-IV data (params.yaml mimic.open_data: false): the PhysioNet "
                    "Credentialed Health Data Use Agreement forbids sharing it with anyone who has not signed it, "
                    "so it may only go to a private repository"))
SEPSIS_2019 = dict(
    name="PhysioNet/CinC Challenge 2019: Early Prediction of Sepsis from Clinical Data", license="cc-by-4.0",
    license_name="Creative Commons Attribution 4.0 International", url="https://physionet.org/content/challenge-2019/1.0.0/",
    citation="Reyna, M. A., et al. (2020). Early Prediction of Sepsis From Clinical Data: the PhysioNet/Computing in "
             "Cardiology Challenge 2019. Critical Care Medicine 48(2), 210-217.")


def source_datasets(params: dict, tasks: set[str], lock: dict[str, dict]) -> list[SourceDataset]:
    """The sources a version with these question tasks was built from, each with its licence."""
    sources = []
    mimic_tasks = tuple(sorted(t for t in tasks if t != REGISTRY_TASK))
    if mimic_tasks:
        mimic = params.get("mimic") or {}
        path = str(mimic.get("source", ""))
        known = MIMIC_DEMO if mimic.get("open_data") is True else MIMIC_FULL
        sources.append(SourceDataset(path=path, tasks=mimic_tasks, lock_md5=(lock.get(Path(path).as_posix()) or {}).get("md5"),
                                     **known))
    if REGISTRY_TASK in tasks:
        path = str((params.get("registry") or {}).get("source", ""))
        md5 = (lock.get(Path(path).as_posix()) or {}).get("md5")
        if "sepsis-challenge-2019" in Path(path).as_posix():
            sources.append(SourceDataset(path=path, tasks=(REGISTRY_TASK,), lock_md5=md5, **SEPSIS_2019))
        else:
            sources.append(SourceDataset(
                name=f"registry at {path}", path=path, license="other", license_name="unknown", url="", citation="",
                tasks=(REGISTRY_TASK,), lock_md5=md5,
                public_refusal=(f"its registry source {path} is not one whose licence this tool knows (the open "
                                "PhysioNet/CinC 2019 sepsis data is): its terms are unknown, so it may only go to a "
                                "private repository")))
    return sources


def license_metadata(sources: list[SourceDataset]) -> dict:
    """`license` (one id, or the list of ids when several sources), or `other` with license_name/link."""
    ids = sorted({s.license for s in sources})
    if not ids:
        return {}
    if "other" not in ids:
        return {"license": ids[0] if len(ids) == 1 else ids}
    others = [s for s in sources if s.license == "other"]
    return {"license": "other", "license_name": "; ".join(s.license_name for s in sources),
            "license_link": others[0].url or None}


def size_category(rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if rows < bound:
            return name
    return "10M<n<100M"


def card_metadata(pretty_name: str, sources: list[SourceDataset], configs: list[dict], total_rows: int,
                  tasks: set[str]) -> str:
    tags = ["medical", "clinical", "ehr", "reasoning", "remedi", "sft", "dpo", "trl", "synthetic"]
    tags += ["mimic-iv"] if any(t != REGISTRY_TASK for t in tasks) else []
    tags += ["sepsis", "c-reason"] if REGISTRY_TASK in tasks else []
    license = license_metadata(sources)
    data = DatasetCardData(
        language=["en"], license=license.pop("license", None), pretty_name=pretty_name,
        task_categories=["question-answering", "text-generation"], task_ids=["multiple-choice-qa"],
        size_categories=[size_category(total_rows)], source_datasets=[s.url or s.name for s in sources],
        tags=tags, configs=configs, **{k: v for k, v in license.items() if v},
    )
    return data.to_yaml() + "\n"


def _table(rows: list[list]) -> str:
    return "\n".join("| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows)


def _params_yaml(params_by_stage: dict[str, dict]) -> str:
    return yaml.safe_dump(params_by_stage, sort_keys=True, allow_unicode=True, default_flow_style=False).strip()


def render_card(*, repo_id: str, version: str, pretty_name: str, sources: list[SourceDataset], configs: list[dict],
                counts: dict[str, dict[str, int]], files: dict[tuple[str, str], str], rounds: list[int],
                git: dict, params_by_stage: dict[str, dict], generators: list[dict], artifacts: list[dict],
                lineage: list[dict], label_conventions: list[str], tasks: set[str]) -> str:
    """README.md of the folder: YAML metadata, then the body from the template."""
    template = string.Template(resources.files("corpus").joinpath("templates", "dataset_card.md").read_text(encoding="utf-8"))
    total = sum(n for splits in counts.values() for n in splits.values())
    pair_splits = list(counts.get("sft", {})) or ["train"]
    licence_notes = [f"- **{s.name}** ({s.license_name}): {', '.join(s.tasks)} questions and every SFT/DPO record made "
                     f"from them. {s.url}" for s in sources]
    if len({s.license for s in sources}) > 1:
        licence_notes.append("- Each record carries the licence of the source its question came from (the `task` "
                             "column tells which); redistribution must keep both sets of terms, ODbL's share-alike "
                             "and attribution and CC BY's attribution.")
    untraced = [f"`{rid}`" for row in lineage for rid in row["untraced_records"]]
    filled = template.substitute(
        metadata=card_metadata(pretty_name, sources, configs, total, tasks),
        pretty_name=pretty_name, repo_id=repo_id, version=version,
        summary=("Clinical-reasoning questions with multiple-choice answers, and the rationale corpora built from "
                 "them for supervised fine-tuning (SFT) and direct preference optimisation (DPO), following ReMedi "
                 f"(iReMedi round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))})."),
        git_commit=git.get("commit") or "unknown", git_dirty=" (with uncommitted changes)" if git.get("dirty") else "",
        config_rows=_table([[c, s, n, f"`{files[(c, s)]}`"] for c, splits in counts.items() for s, n in splits.items()]),
        first_pair_split=pair_splits[0],
        pair_split_note=("`sft` and `dpo` hold one split per round (`round_<r>`)." if len(rounds) > 1 else
                         f"`sft` and `dpo` hold round {rounds[0]} as split `train`."),
        source_rows=_table([[f"[{s.name}]({s.url})" if s.url else s.name, f"{s.license_name} (`{s.license}`)",
                             ", ".join(s.tasks), "private only" if s.public_refusal else "open",
                             f"`{s.lock_md5}`" if s.lock_md5 else "not in dvc.lock"] for s in sources]),
        licence_notes="\n".join(licence_notes),
        label_conventions=", ".join(label_conventions) or "none",
        rounds=", ".join(map(str, rounds)),
        params=_params_yaml(params_by_stage),
        generator_rows=_table([[g["round"], g["source"], f"`{g['generator']}`", g["samples"], g.get("settings", "")]
                               for g in generators]),
        artifact_rows=_table([[f"`{a['path']}`", a.get("stage") or "", f"`{a['md5']}`" if a.get("md5") else "not in dvc.lock",
                               {True: "yes", False: "**no**", None: "not checked"}[a.get("matches_lock")]]
                              for a in artifacts]),
        lineage_rows=_table([[r["round"], r["kind"], r["records"], r["texts"], r["texts_traced_to_samples"],
                              r["texts_from_regenerated"], r["texts_with_cohort_or_registry_row"],
                              ", ".join(f"`{g}` ({n})" for g, n in r["texts_by_generator"].items())] for r in lineage]),
        untraced_note=(f"Texts with no sample row behind them: {', '.join(untraced)}.\n\n" if untraced else ""),
        source_citations="\n".join(f"- {s.citation}" for s in sources if s.citation),
    )
    return filled
