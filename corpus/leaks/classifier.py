"""The learned second opinion: a character n-gram classifier over rationales.

Rules name what they catch and are the first opinion; they miss wordings
nobody wrote a rule for. A small classifier (TF-IDF over char_wb 2-5-grams of
the normalised text, logistic regression) is asked only when no rule fired,
and only a probability at or above a high threshold drops a row, so clean
rationales that merely share words with leaks stay clean. Its verdicts say
``part="classifier"`` and name the sentence that scored highest.

The model ships as JSON (corpus/templates/leak_classifier.json), not a
pickle: vocabulary, idf, weights and intercept are plain numbers that any
scikit-learn version reads back identically, and the file records the sha256
of the training rows, the parameters and the library version. Retrain it
deterministically (liblinear, fixed order) with::

    python -m corpus.leaks.classifier tests/data/leak_labelled.jsonl corpus/templates/leak_classifier.json

which trains on the rows whose ``part`` is ``development`` only.
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
from corpus.leaks.text import normalise

FORMAT = 1
PARAMS = {"analyzer": "char_wb", "ngram_range": [2, 5], "min_df": 2, "max_features": 6000,
          "sublinear_tf": True, "C": 4.0, "class_weight": "balanced"}
TRAIN_PART = "development"
# A sentence ends at . ! ? followed by whitespace, or at a line break (as in corpus.leaks.text).
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def training_rows(path: str | Path) -> list[dict]:
    """The labelled rows a classifier is trained on: `part` == development, file order."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row for row in rows if row.get("part") == TRAIN_PART]


def rows_sha256(rows: list[dict]) -> str:
    """The training data's hash: sha256 of (id, leak, rationale) of every row, in order."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["id"], bool(row["leak"]), row["rationale"]], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _vectorizer(vocabulary=None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=PARAMS["analyzer"], ngram_range=tuple(PARAMS["ngram_range"]),
                           min_df=1 if vocabulary is not None else PARAMS["min_df"],
                           max_features=None if vocabulary is not None else PARAMS["max_features"],
                           sublinear_tf=PARAMS["sublinear_tf"], lowercase=False, vocabulary=vocabulary,
                           dtype=_float64())


def _float64():
    import numpy as np

    return np.float64


def fit(texts: list[str], labels: list[bool]) -> dict:
    """A model (the JSON-able dict) trained on `texts` (raw rationales) and `labels`."""
    from sklearn.linear_model import LogisticRegression

    vectorizer = _vectorizer()
    matrix = vectorizer.fit_transform([normalise(t) for t in texts])
    model = LogisticRegression(C=PARAMS["C"], class_weight=PARAMS["class_weight"], solver="liblinear",
                               random_state=0, max_iter=1000)
    model.fit(matrix, [bool(label) for label in labels])
    vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    return {"vocabulary": vocabulary,
            "idf": [round(float(x), 6) for x in vectorizer.idf_],
            "coef": [round(float(x), 6) for x in model.coef_[0]],
            "intercept": round(float(model.intercept_[0]), 6)}


def train(labelled: str | Path, threshold: float) -> dict:
    """The shipped file's content: a model fitted on the development rows of `labelled`."""
    import sklearn

    rows = training_rows(labelled)
    return {"format": FORMAT, "kind": "tfidf_char_wb_logreg", "params": PARAMS, "threshold": threshold,
            "sklearn": sklearn.__version__, "trained_on": {"file": Path(labelled).name, "part": TRAIN_PART,
                                                           "rows": len(rows), "sha256": rows_sha256(rows)},
            **fit([row["rationale"] for row in rows], [row["leak"] for row in rows])}


@dataclass
class LeakClassifier:
    """A loaded model; ``probability(text)`` and ``verdict_span(text)``."""

    data: dict
    source: str
    sha256: str

    def __post_init__(self):
        self.threshold = float(self.data["threshold"])
        self._vectorizer = None

    @classmethod
    def load(cls, path: str | Path) -> "LeakClassifier":
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except FileNotFoundError:
            raise ConfigError(f"leak classifier file {path} not found") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"leak classifier file {path} is unreadable: {exc}") from None
        missing = {"format", "vocabulary", "idf", "coef", "intercept", "threshold"} - set(data)
        if missing or data.get("format") != FORMAT or not len(data["vocabulary"]) == len(data["idf"]) == len(data["coef"]):
            raise ConfigError(f"leak classifier file {path}: not a format-{FORMAT} model (missing {sorted(missing)})")
        return cls(data, str(path), hashlib.sha256(raw).hexdigest())

    def _vectorize(self, texts: list[str]):
        import numpy as np

        if self._vectorizer is None:
            vectorizer = _vectorizer({gram: index for index, gram in enumerate(self.data["vocabulary"])})
            vectorizer.idf_ = np.asarray(self.data["idf"], dtype=float)
            self._vectorizer = vectorizer
            self._coef = np.asarray(self.data["coef"], dtype=float)
        return self._vectorizer.transform(texts)

    def probabilities(self, texts: list[str]) -> list[float]:
        """P(leak) of each raw text."""
        scores = self._vectorize([normalise(t) for t in texts]) @ self._coef + float(self.data["intercept"])
        return [1.0 / (1.0 + math.exp(-float(s))) for s in scores]

    def probability(self, text: str) -> float:
        return self.probabilities([text])[0]

    def top_sentence(self, norm: str) -> tuple[int, int]:
        """The span (in the normalised text) of the sentence the model scores highest: what --explain shows."""
        spans = [(m.start(), m.end()) for m in _SENTENCE.finditer(norm) if m.group(0).strip()] or [(0, len(norm))]
        scores = self._vectorize([norm[s:e] for s, e in spans]) @ self._coef
        start, end = spans[max(range(len(spans)), key=lambda i: (scores[i], -i))]
        while start < end and norm[start].isspace():
            start += 1
        return start, end


def main(argv: list[str] | None = None) -> int:
    """python -m corpus.leaks.classifier LABELLED.jsonl OUT.json [THRESHOLD]"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(main.__doc__, file=sys.stderr)
        return 2
    threshold = float(args[2]) if len(args) == 3 else 0.9
    model = train(args[0], threshold)
    Path(args[1]).write_text(json.dumps(model, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{args[1]}: {len(model['vocabulary'])} features, {model['trained_on']['rows']} rows, "
          f"sha256 {model['trained_on']['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
