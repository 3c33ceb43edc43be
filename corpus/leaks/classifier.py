"""The learned second opinion: a character n-gram classifier over rationales.

Rules name what they catch and are the first opinion; they miss wordings
nobody wrote a rule for. A small classifier is asked only when no rule fired,
and only a probability at or above a high threshold drops a row, so clean
rationales that merely share words with leaks stay clean. Its verdicts say
``part="classifier"`` and name the sentence that scored highest.

Three views of a rationale feed one logistic regression: TF-IDF over char_wb
2-5-grams of the normalised text (robust to spelling and inflection), over
word 1-3-grams of the spelling-corrected text (``Text.canon``: "anwser" reads
as "answer"), so short phrases such as "with b locked in" weigh as phrases,
and over word 1-3-grams of a cue view: the word view with each word of a word
class (leak_rules.yaml, ``classifier.word_classes``: reference nouns, givenness
cues, aims, the narrator, "already/in advance") read as its class token, so
"since the result is", "because the outcome was" and "as the reply is" share
"since the qzref is"-like n-grams and a wording no writer used yet still
scores. Two substitutions make what is learned carry over too: the row's
hinted answer reads as one token (ANSWER_TOKEN: "since it is D," and "since
the stay is 3 to 6 days," share "since ... qzans ,"), and the rules file's
allow spans, the clinical uses of the reference words, read as another
(ALLOWED_TOKEN), so "given his" or "hints at" is never leak evidence.
Leave-one-file-out cross-validation over the development files (a file: the
rows one writer wrote in one go; `corpus.leaks.crossval`) chose the views and
the threshold: the highest-recall threshold at which the classifier alone
drops at most 2% of the clean rows out of file and that keeps the clinical
probes of tests/test_leaks.py (leak_rules.yaml records the numbers).

The model ships as JSON (corpus/templates/leak_classifier.json), not a
pickle: vocabulary, idf, weights and intercept are plain numbers that any
scikit-learn version reads back identically, and the file records the sha256
of the training rows, the parameters and the library version. Retrain it
deterministically (liblinear, fixed order) with::

    python -m corpus.leaks.classifier corpus/templates/leak_classifier.json 0.75 \
        tests/data/leak_labelled.jsonl tests/data/leak_blind.jsonl tests/data/leak_dev2.jsonl \
        tests/data/leak_blind2.jsonl tests/data/leak_dev3.jsonl tests/data/leak_blind3.jsonl \
        tests/data/leak_blind4.jsonl tests/data/leak_dev5a.jsonl tests/data/leak_dev5b.jsonl

which trains on every row of the files given, in order (a row of a held-out part raises), and::

    python -m corpus.leaks.classifier --cv FILE.jsonl [FILE.jsonl ...]

prints the leave-one-file-out figures per threshold (`corpus.leaks.crossval`).
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

FORMAT = 3
# char: the normalised text; word: the spelling-corrected text; cue: the word view with each word of a
# word class (leak_rules.yaml, classifier.word_classes) read as its class token. Sizes keep the file
# near 350 kB.
PARAMS = {"char": {"analyzer": "char_wb", "ngram_range": [2, 5], "max_features": 6000},
          "word": {"analyzer": "word", "ngram_range": [1, 3], "max_features": 3000},
          "cue": {"analyzer": "word", "ngram_range": [1, 3], "max_features": 3000},
          "min_df": 2, "sublinear_tf": True, "C": 32.0, "class_weight": "balanced", "answer_token": True,
          "allowed_token": True}
VIEWS = ("char", "word", "cue")
# word tokens keep one-letter words: the option letter ("it's c, so") is the signal
_WORD_TOKENS = r"(?u)\b\w+\b"
ANSWER_TOKEN = " qzans "  # what the hinted answer reads as (a token no rationale has)
ALLOWED_TOKEN = " qzok "  # what an allow span (a clinical use of a reference word) reads as
HELD_OUT_PARTS = ("blind5",)  # parts never trained on (tests/test_leaks.py measures them)
# top_sentence's pieces: each ends at any run of . ! ? or at a line break. Unlike the sentences of
# corpus.leaks.text (. ! ? followed by whitespace), "4.2" and "e.g." split here.
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def training_rows(paths) -> list[dict]:
    """The labelled rows a classifier is trained on: every row of the files given, files and lines in
    order. The caller names the development files; a row marked as held out (`part` in HELD_OUT_PARTS)
    raises, so a held-out file cannot be trained on by mistake."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = []
    for path in paths:
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("part") in HELD_OUT_PARTS:
                raise ConfigError(f"{path}, line {number}: row {row.get('id')!r} is part {row['part']!r}, "
                                  "held out: the classifier must not be trained on it")
            rows.append(row)
    return rows


def hint_of(row: dict) -> tuple[str, str]:
    return row.get("hint") or "", row.get("answer") or ""


def fitted(rows: list[dict], spelling, allow=(), classes=None, threshold: float = 1.0) -> "LeakClassifier":
    """A model fitted on `rows` and loaded as a shipped file would be (what cross-validation scores with)."""
    classes = dict(classes or {})
    # "params" as a shipped file has them: they tell the model to read the answer and allow tokens
    return LeakClassifier({"format": FORMAT, "threshold": threshold, "params": PARAMS, "word_classes": classes, **fit(
        [row["rationale"] for row in rows], [row["leak"] for row in rows], spelling,
        [hint_of(row) for row in rows], allow, classes)}, "", "", spelling, allow)


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


def class_regexes(classes: dict) -> tuple[tuple[re.Pattern, str], ...]:
    """Each word class ({name: [word or phrase, ...]}) as one regex and its token (" qzNAME ")."""
    out = []
    for name in sorted(classes):
        words = sorted({w.strip().lower() for w in classes[name] if w.strip()}, key=lambda w: (-len(w), w))
        body = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in words)
        out.append((re.compile(rf"(?<![\w'])(?:{body})(?![\w'])"), f" qz{name} "))
    return tuple(out)


def views(texts: list[str], spelling, hints=None, allow=(), classes=()) -> dict[str, list[str]]:
    """Each view's input: char reads the normalised text, word the spelling-corrected one. With
    `hints` ((hint, answer) per text, or None), the row's hinted answer where it stands as the answer
    (its letter, Yes/No, the option's range: `corpus.leaks.filter.answer_regex`) reads as one token,
    ANSWER_TOKEN, in both views: "since it is D for glucose" and "since the stay is 3 to 6 days" then
    share the n-grams "since it is qzans" / "is qzans", so the model learns the hint's content near a
    cue across rows instead of one letter or range at a time.

    `allow`: the rules file's allow regexes; what they match (the clinical uses of the reference words:
    "given his", "hints at", "the correct dose", "justify my answer") reads as ALLOWED_TOKEN, so the
    model does not learn those words as leak evidence from the rows where they stand next to a leak.

    `classes`: `class_regexes` of the word classes; the cue view is the word view with each class word
    read as its class token ("since the result is" and "because the outcome was" both read "since the
    qzref is"), so a reference noun next to a givenness cue is learned as a pattern of classes, not of
    the words one writer happened to use."""
    from corpus.leaks.filter import answer_regex
    from corpus.leaks.text import Text

    canon = [Text(t, spelling) for t in texts]
    out = {"char": [t.norm for t in canon], "word": [t.canon for t in canon]}
    if allow:
        for i, text in enumerate(canon):
            spans = _merged([(m.start(), m.end()) for regex in allow for m in regex.finditer(text.canon) if m.end() > m.start()])
            if spans:
                out["word"][i] = _masked(text.canon, spans)
                out["char"][i] = _masked(text.norm, [text.to_norm(start, end) for start, end in spans])
    if hints is not None:
        for i, pair in enumerate(hints):
            regex = answer_regex(*pair) if pair else None
            if regex is not None:
                out["char"][i] = regex.sub(ANSWER_TOKEN, out["char"][i])
                out["word"][i] = regex.sub(ANSWER_TOKEN, out["word"][i])
    out["cue"] = list(out["word"])
    for regex, token in classes:
        out["cue"] = [regex.sub(token, text) for text in out["cue"]]
    return out


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _masked(text: str, spans) -> str:
    pieces, position = [], 0
    for start, end in spans:
        pieces += [text[position:start], ALLOWED_TOKEN]
        position = max(position, end)
    return "".join(pieces) + text[position:]


def fit(texts: list[str], labels: list[bool], spelling, hints=None, allow=(), classes=None) -> dict:
    """A model (the JSON-able dict) trained on `texts` (raw rationales) and `labels`; `hints`, `classes`
    (the word classes as a dict): see `views`."""
    import scipy.sparse as sparse
    from sklearn.linear_model import LogisticRegression

    inputs, model, blocks = views(texts, spelling, hints, allow, class_regexes(classes or {})), {}, []
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

    from corpus.leaks.rules import default_allow, default_spelling, default_word_classes

    paths = [labelled] if isinstance(labelled, (str, Path)) else list(labelled)
    rows = training_rows(paths)
    classes = default_word_classes()
    return {"format": FORMAT, "kind": "tfidf_char_wb_word_cue_logreg", "params": PARAMS, "threshold": threshold,
            "sklearn": sklearn.__version__,
            "trained_on": {"files": [Path(p).name for p in paths], "rows": len(rows),
                           "sha256": rows_sha256(rows)},
            # the classes the cue view was made with travel with the model: a rules file of one's own
            # cannot change what the shipped weights mean
            "word_classes": classes,
            **fit([row["rationale"] for row in rows], [row["leak"] for row in rows], default_spelling(),
                  [hint_of(row) for row in rows], default_allow(), classes)}


@dataclass
class LeakClassifier:
    """A loaded model; ``probability(text)`` and ``top_sentence(norm)``. `spelling`: the rules
    file's, which makes the word view's text (the model was trained with the default's)."""

    data: dict
    source: str
    sha256: str
    spelling: object = None
    allow: tuple = ()  # the rules file's allow regexes (see `views`)

    def __post_init__(self):
        self.threshold = float(self.data["threshold"])
        self._vectorizers = None
        self._classes = class_regexes(self.data.get("word_classes") or {})

    @classmethod
    def load(cls, path: str | Path, spelling=None, allow=()) -> "LeakClassifier":
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
        return cls(data, str(path), hashlib.sha256(raw).hexdigest(), spelling, allow)

    def _scores(self, texts: list[str], hints=None) -> list[float]:
        """Linear scores (before the intercept) of raw texts; `hints`: see `views`. TF-IDF (sublinear tf,
        l2 norm) dotted with the weights, computed here rather than by TfidfVectorizer.transform: the
        filter scores one text at a time, and sklearn's per-call input validation was three quarters of
        the 10 ms a text took (tests/test_leaks.py holds the two to the same numbers)."""
        if self._vectorizers is None:
            self._vectorizers = {}
            for view in VIEWS:
                part = self.data[view]
                self._vectorizers[view] = (_vectorizer(view, {}).build_analyzer(),
                                           {gram: i for i, gram in enumerate(part["vocabulary"])},
                                           part["idf"], part["coef"])
        params = self.data.get("params", {})  # a model trained without the tokens reads texts without them
        inputs = views(texts, self.spelling, hints if params.get("answer_token") else None,
                       self.allow if params.get("allowed_token") else (), self._classes)
        scores = [0.0] * len(texts)
        for view, (analyzer, index, idf, coef) in self._vectorizers.items():
            for i, text in enumerate(inputs[view]):
                counts: dict[int, int] = {}
                for gram in analyzer(text):
                    j = index.get(gram)
                    if j is not None:
                        counts[j] = counts.get(j, 0) + 1
                weights = {j: (1.0 + math.log(n)) * idf[j] for j, n in counts.items()}
                norm = math.sqrt(sum(w * w for w in weights.values()))
                if norm:
                    scores[i] += sum(w * coef[j] for j, w in weights.items()) / norm
        return scores

    def probabilities(self, texts: list[str], hints=None) -> list[float]:
        """P(leak) of each raw text; `hints`: (hint, answer) per text, or None."""
        intercept = float(self.data["intercept"])
        return [1.0 / (1.0 + math.exp(-(s + intercept))) for s in self._scores(texts, hints)]

    def probability(self, text: str, hint: str | None = None, answer: str | None = None) -> float:
        return self.probabilities([text], [(hint or "", answer or "")])[0]

    def top_sentence(self, norm: str, hint: str | None = None, answer: str | None = None) -> tuple[int, int]:
        """The span (in the normalised text) of the sentence the model scores highest: what --explain shows."""
        spans = [(m.start(), m.end()) for m in _SENTENCE.finditer(norm) if m.group(0).strip()] or [(0, len(norm))]
        scores = self._scores([norm[s:e] for s, e in spans], [(hint or "", answer or "")] * len(spans))
        start, end = spans[max(range(len(spans)), key=lambda i: (scores[i], -i))]
        while start < end and norm[start].isspace():
            start += 1
        return start, end


def main(argv: list[str] | None = None) -> int:
    """python -m corpus.leaks.classifier OUT.json THRESHOLD LABELLED.jsonl [LABELLED.jsonl ...]
    python -m corpus.leaks.classifier --cv LABELLED.jsonl [LABELLED.jsonl ...]"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and args[0] == "--cv":
        from corpus.leaks.crossval import main as cross_validate

        return cross_validate(args[1:])
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
