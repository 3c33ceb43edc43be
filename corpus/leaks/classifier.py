"""The learned second opinion: a character n-gram classifier over rationales.

Rules name what they catch and are the first opinion; they miss wordings
nobody wrote a rule for. A small classifier is asked only when no rule fired,
and only a probability at or above a high threshold drops a row, so clean
rationales that merely share words with leaks stay clean. Its verdicts say
``part="classifier"`` and name the sentence that scored highest.

Two views of a rationale feed one logistic regression: TF-IDF over char_wb
2-5-grams of the normalised text (robust to spelling and inflection) and over
word 1-3-grams of the spelling-corrected text (``Text.canon``: "anwser" reads
as "answer"), so short phrases such as "with b locked in" weigh as phrases.
Leave-one-batch-out cross-validation over the development rows chose the
second view and the threshold (leak_rules.yaml records the numbers).

The model ships as JSON (corpus/templates/leak_classifier.json), not a
pickle: vocabulary, idf, weights and intercept are plain numbers that any
scikit-learn version reads back identically, and the file records the sha256
of the training rows, the parameters and the library version. Retrain it
deterministically (liblinear, fixed order) with::

    python -m corpus.leaks.classifier corpus/templates/leak_classifier.json 0.85 \
        tests/data/leak_labelled.jsonl tests/data/leak_blind.jsonl tests/data/leak_dev2.jsonl

which trains on the rows whose ``part`` is ``development`` only, files in the order given.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from corpus.errors import ConfigError

FORMAT = 2
# char: the normalised text; word: the spelling-corrected text. Sizes keep the file near 250 kB.
PARAMS = {"char": {"analyzer": "char_wb", "ngram_range": [2, 5], "max_features": 6000},
          "word": {"analyzer": "word", "ngram_range": [1, 3], "max_features": 3000},
          "min_df": 2, "sublinear_tf": True, "C": 4.0, "class_weight": "balanced"}
VIEWS = ("char", "word")
# word tokens keep one-letter words: the option letter ("it's c, so") is the signal
_WORD_TOKENS = r"(?u)\b\w+\b"
TRAIN_PART = "development"
# top_sentence's pieces: each ends at any run of . ! ? or at a line break. Unlike the sentences of
# corpus.leaks.text (. ! ? followed by whitespace), "4.2" and "e.g." split here.
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def training_rows(paths) -> list[dict]:
    """The labelled rows a classifier is trained on: `part` == development, files and lines in order."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = [json.loads(line) for path in paths
            for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if row.get("part") == TRAIN_PART]


def rows_sha256(rows: list[dict]) -> str:
    """The training data's hash: sha256 of (id, leak, rationale) of every row, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["id"], bool(row["leak"]), row["rationale"]], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _vectorizer(view: str, vocabulary=None):
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    spec = PARAMS[view]
    return TfidfVectorizer(analyzer=spec["analyzer"], ngram_range=tuple(spec["ngram_range"]),
                           min_df=1 if vocabulary is not None else PARAMS["min_df"],
                           max_features=None if vocabulary is not None else spec["max_features"],
                           sublinear_tf=PARAMS["sublinear_tf"], lowercase=False, vocabulary=vocabulary,
                           dtype=np.float64, **({"token_pattern": _WORD_TOKENS} if spec["analyzer"] == "word" else {}))


def views(texts: list[str], spelling) -> dict[str, list[str]]:
    """Each view's input: char reads the normalised text, word the spelling-corrected one."""
    from corpus.leaks.text import Text

    canon = [Text(t, spelling) for t in texts]
    return {"char": [t.norm for t in canon], "word": [t.canon for t in canon]}


def fit(texts: list[str], labels: list[bool], spelling) -> dict:
    """A model (the JSON-able dict) trained on `texts` (raw rationales) and `labels`."""
    import scipy.sparse as sparse
    from sklearn.linear_model import LogisticRegression

    inputs, model, blocks = views(texts, spelling), {}, []
    for view in VIEWS:
        vectorizer = _vectorizer(view)
        blocks.append(vectorizer.fit_transform(inputs[view]))
        model[view] = {"vocabulary": sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get),
                       "idf": [round(float(x), 6) for x in vectorizer.idf_]}
    regression = LogisticRegression(C=PARAMS["C"], class_weight=PARAMS["class_weight"], solver="liblinear",
                                    random_state=0, max_iter=1000)
    regression.fit(sparse.hstack(blocks).tocsr(), [bool(label) for label in labels])
    coef, start = [round(float(x), 6) for x in regression.coef_[0]], 0
    for view in VIEWS:
        size = len(model[view]["vocabulary"])
        model[view]["coef"], start = coef[start: start + size], start + size
    return {**model, "intercept": round(float(regression.intercept_[0]), 6)}


def train(labelled, threshold: float) -> dict:
    """The shipped file's content: a model fitted on the development rows of the `labelled` files."""
    import sklearn

    from corpus.leaks.rules import default_spelling

    paths = [labelled] if isinstance(labelled, (str, Path)) else list(labelled)
    rows = training_rows(paths)
    return {"format": FORMAT, "kind": "tfidf_char_wb_word_logreg", "params": PARAMS, "threshold": threshold,
            "sklearn": sklearn.__version__,
            "trained_on": {"files": [Path(p).name for p in paths], "part": TRAIN_PART, "rows": len(rows),
                           "sha256": rows_sha256(rows)},
            **fit([row["rationale"] for row in rows], [row["leak"] for row in rows], default_spelling())}


@dataclass
class LeakClassifier:
    """A loaded model; ``probability(text)`` and ``top_sentence(norm)``. `spelling`: the rules
    file's, which makes the word view's text (the model was trained with the default's)."""

    data: dict
    source: str
    sha256: str
    spelling: object = None

    def __post_init__(self):
        self.threshold = float(self.data["threshold"])
        self._vectorizers = None

    @classmethod
    def load(cls, path: str | Path, spelling=None) -> "LeakClassifier":
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except FileNotFoundError:
            raise ConfigError(f"leak classifier file {path} not found") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"leak classifier file {path} is unreadable: {exc}") from None
        missing = {"format", "intercept", "threshold", *VIEWS} - set(data)
        if missing or data.get("format") != FORMAT or not all(
                isinstance(data[v], dict) and len(data[v].get("vocabulary", ())) == len(data[v].get("idf", ()))
                == len(data[v].get("coef", ())) for v in VIEWS):
            raise ConfigError(f"leak classifier file {path}: not a format-{FORMAT} model (missing {sorted(missing)})")
        return cls(data, str(path), hashlib.sha256(raw).hexdigest(), spelling)

    def _scores(self, texts: list[str]):
        """Linear scores (before the intercept) of raw texts."""
        import numpy as np

        if self._vectorizers is None:
            self._vectorizers = {}
            for view in VIEWS:
                part = self.data[view]
                vectorizer = _vectorizer(view, {gram: i for i, gram in enumerate(part["vocabulary"])})
                vectorizer.idf_ = np.asarray(part["idf"], dtype=float)
                self._vectorizers[view] = (vectorizer, np.asarray(part["coef"], dtype=float))
        inputs = views(texts, self.spelling)
        return sum(vectorizer.transform(inputs[view]) @ coef for view, (vectorizer, coef) in self._vectorizers.items())

    def probabilities(self, texts: list[str]) -> list[float]:
        """P(leak) of each raw text."""
        scores = self._scores(texts) + float(self.data["intercept"])
        return [1.0 / (1.0 + math.exp(-float(s))) for s in scores]

    def probability(self, text: str) -> float:
        return self.probabilities([text])[0]

    def top_sentence(self, norm: str) -> tuple[int, int]:
        """The span (in the normalised text) of the sentence the model scores highest: what --explain shows."""
        spans = [(m.start(), m.end()) for m in _SENTENCE.finditer(norm) if m.group(0).strip()] or [(0, len(norm))]
        scores = self._scores([norm[s:e] for s, e in spans])
        start, end = spans[max(range(len(spans)), key=lambda i: (scores[i], -i))]
        while start < end and norm[start].isspace():
            start += 1
        return start, end


def main(argv: list[str] | None = None) -> int:
    """python -m corpus.leaks.classifier OUT.json THRESHOLD LABELLED.jsonl [LABELLED.jsonl ...]"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    model = train(args[2:], float(args[1]))
    Path(args[0]).write_text(json.dumps(model, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{args[0]}: {sum(len(model[v]['vocabulary']) for v in VIEWS)} features, {model['trained_on']['rows']} rows, "
          f"sha256 {model['trained_on']['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
