"""Prompt templates (files under corpus/templates/prompts/) -> chat messages for a question.

The system and user parts live in files so wording changes are reviewable
and hashed: `PromptTemplate.hash` is part of the generator fingerprint, so a
new wording never reuses cached generations of the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from corpus.questions.record import template_hash

PROMPTS = Path(str(resources.files("corpus").joinpath("templates", "prompts")))


@dataclass(frozen=True)
class PromptTemplate:
    system: str
    user: str
    hash: str

    @classmethod
    def load(cls, system_path: Path, user_path: Path) -> "PromptTemplate":
        return cls(
            system=Path(system_path).read_text(encoding="utf-8").strip(),
            user=Path(user_path).read_text(encoding="utf-8").strip(),
            hash=template_hash(system_path, user_path),
        )


def sampling_template(folder: Path = PROMPTS) -> PromptTemplate:
    return PromptTemplate.load(folder / "system.txt", folder / "user.txt")


def hint_template(folder: Path = PROMPTS) -> PromptTemplate:
    return PromptTemplate.load(folder / "system.txt", folder / "hint.txt")


def answer_labels(options: list[str]) -> list[str]:
    """What the model should box: the letter for lettered options, else the option itself."""
    labels = []
    for option in options:
        head = option.split(". ", 1)[0]
        labels.append(head if len(head) == 1 and head.isalpha() and head.isupper() else option)
    return labels


def question_messages(question: dict, template: PromptTemplate, hint: str | None = None) -> list[dict]:
    """Chat messages (system, user) for a question record; `hint` fills {answer} in a hint template."""
    option_list = ", ".join(answer_labels(list(question["options"])))
    user = template.user.format(
        context=question["context"], question=question["question"], option_list=option_list, answer=hint or ""
    )
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]


def hint_text(template: PromptTemplate, answer: str, options: list[str]) -> str:
    """The hint line of a hint template, as the leak filter should compare against.

    The answer is written as its label ("C", "Yes"), not its full option text:
    a rationale that states its chosen option ("C. 33.0% to below 38.8%") is
    concluding, not quoting the hint.
    """
    label = answer_labels([answer])[0] if answer in options else answer
    line = next((line for line in template.user.splitlines() if "{answer}" in line), "{answer}")
    return line.replace("{answer}", label).replace("{{", "{").replace("}}", "}")
