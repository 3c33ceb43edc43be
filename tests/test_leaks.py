"""The hint-leak filter (corpus/leaks/, corpus/templates/leak_rules.yaml).

Development (2144 rows, nine files; the rules are written from their misses and the classifier is
trained on all of them, its threshold chosen by leave-one-file-out cross-validation; each row's
`part` records the batch it came in as): tests/data/leak_labelled.jsonl (batches C D L H G),
leak_blind.jsonl (batch B), leak_dev2.jsonl (batch E), leak_blind2.jsonl (batch F, `part` blind2),
leak_dev3.jsonl (batch M, `part` dev3), leak_blind3.jsonl (batch K, `part` blind3), leak_blind4.jsonl
(batch Q, `part` blind4), leak_dev5a.jsonl (batch U, `part` dev5a, small-LLM styles) and
leak_dev5b.jsonl (batch V, `part` dev5b, clinician/textbook styles). Every one has been tuned on, so
development figures are in-sample: they show what the filter covers, not how it generalises.

Held out: tests/data/leak_blind5.jsonl (`part` blind5, 240 rows written by a writer who never saw the
rules), never tuned or trained on (the classifier refuses its rows); the test skips, saying so, where
the file is absent. Each earlier held-out set was measured once, before it was tuned on, and then
became development; recall (clean dropped) when measured: the issue's independent set (120 rows, not
in the repository) 0.70 (0.000); batch H 0.917 (0.000) at its first look; batch G 0.768 (0.000) at
60da422; leak_blind.jsonl (B) 0.717 (0.000) at b55420e; leak_blind2.jsonl (F) 0.867 (0.033) at
3e3a0bd; leak_blind3.jsonl (K) 0.920 (0.000, precision 1.000) at 42802ca (rules v7 + classifier at
0.8); leak_blind4.jsonl (Q) 0.933 (0.042, precision 0.957) at d807469 (rules v8 + classifier format 3).
The two development batches written alongside blind5 were also measured before any tuning on them,
at d807469: leak_dev5a.jsonl (U) 0.900 (0.100), leak_dev5b.jsonl (V) 0.817 (0.042). Those
measurements, not the development figures, are the record of how the filter does on wording it has
not seen. leak_blind5.jsonl (S) was measured once at rules v9 + classifier at 0.75: recall 0.958,
precision 0.958, clean dropped 0.042 (the first to reach 0.95; the leave-one-file-out estimate before
it was about 0.93 at 2.5% clean dropped, so one more fresh file may well land lower). Run with
`pytest -s` to see every part's figures.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from corpus.errors import ConfigError, SourceError
from corpus.leaks import DEFAULT_RULES, LeakFilter, LeakRules, LeakVerdict, check_jsonl, explain_line, normalise

DATA = Path(__file__).parent / "data"
LABELLED = DATA / "leak_labelled.jsonl"
# the classifier's training order
DEVELOPMENT = (LABELLED, DATA / "leak_blind.jsonl", DATA / "leak_dev2.jsonl", DATA / "leak_blind2.jsonl",
               DATA / "leak_dev3.jsonl", DATA / "leak_blind3.jsonl", DATA / "leak_blind4.jsonl",
               DATA / "leak_dev5a.jsonl", DATA / "leak_dev5b.jsonl")
DEVELOPMENT_PARTS = {"development", "blind2", "dev3", "blind3", "blind4", "dev5a", "dev5b"}
HELD_OUT = DATA / "leak_blind5.jsonl"
HELD_OUT_PART = "blind5"
HINT_NO = "the correct answer is No"
FULL_HINT = (
    "(For your reasoning only: the correct answer is No. Do not mention that you were told the answer; "
    "reason from the record as if you reached it yourself.)"
)


@pytest.fixture(scope="module")
def rules() -> LeakRules:
    return LeakRules.load()


@pytest.fixture(scope="module")
def leak_filter(rules) -> LeakFilter:
    return LeakFilter(rules)


def _labelled(path: Path = LABELLED) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the labelled set -----------------------------------------------------------------


FIELDS = {"id", "part", "task", "kind", "leak", "hint", "answer", "rationale"}
TASKS = {"mortality", "readmission", "los", "masked_value"}


def _development() -> list[dict]:
    return [row for path in DEVELOPMENT for row in _labelled(path)]


def test_labelled_set_shape():
    rows = _development()
    assert len(rows) >= 2144
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert set(row) == FIELDS, row["id"]
        assert isinstance(row["rationale"], str) and row["rationale"].strip()
        assert isinstance(row["leak"], bool) and row["task"] in TASKS and row["part"] in DEVELOPMENT_PARTS
    assert 0.4 <= sum(row["leak"] for row in rows) / len(rows) <= 0.6
    # every task has leaking and clean rows
    assert {(row["task"], row["leak"]) for row in rows} == {(t, leak) for t in TASKS for leak in (True, False)}
    kinds = {row["kind"] for row in rows if row["leak"]}
    assert {"misspelled", "paraphrase", "rationalising", "buried", "content"} <= kinds


def _score(leak_filter, rules, rows):
    tp = fp = fn = tn = 0
    missed, dropped_clean = [], []
    for row in rows:
        verdict = leak_filter.check(row["rationale"], row["hint"], row["answer"])
        assert isinstance(verdict, LeakVerdict)
        if verdict.leak:
            # every dropped row records which rule fired, a rule of the file, and where
            if verdict.part == "classifier":
                assert verdict.rule == LeakRules.CLASSIFIER_RULE, verdict
            else:
                assert verdict.rule in rules.names and verdict.part == "rules", verdict
            assert verdict.match
            start, end = verdict.span
            assert normalise(row["rationale"])[start:end][:200] == verdict.match
        else:
            assert verdict == LeakVerdict(False)
        if row["leak"] and verdict.leak:
            tp += 1
        elif row["leak"]:
            fn += 1
            missed.append(f"{row['id']} ({row.get('kind')})")
        elif verdict.leak:
            fp += 1
            dropped_clean.append((row["id"], verdict.rule, verdict.match))
        else:
            tn += 1
    return _rates({"tp": tp, "fn": fn, "fp": fp, "tn": tn, "missed": missed, "dropped_clean": dropped_clean})


def _rates(score: dict) -> dict:
    tp, fn, fp, tn = score["tp"], score["fn"], score["fp"], score["tn"]
    return {**score, "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
            "fpr": fp / (fp + tn) if fp + tn else 0.0}


def _print_score(name: str, score: dict) -> None:
    print(
        f"\n{name}: {score['tp'] + score['fn'] + score['fp'] + score['tn']} rationales "
        f"({score['tp'] + score['fn']} leaking, {score['fp'] + score['tn']} clean): precision {score['precision']:.3f}, "
        f"recall {score['recall']:.3f}, clean dropped {score['fpr']:.3f} "
        f"[tp={score['tp']} fn={score['fn']} fp={score['fp']} tn={score['tn']}]"
    )
    if score["missed"]:
        print(f"  missed leaks: {score['missed']}")
    if score["dropped_clean"]:
        print(f"  clean rows dropped: {score['dropped_clean']}")


def _record(record_property, part: str, score: dict) -> None:
    record_property(f"{part}_leak_precision", round(score["precision"], 4))
    record_property(f"{part}_leak_recall", round(score["recall"], 4))
    record_property(f"{part}_clean_dropped_rate", round(score["fpr"], 4))


def test_development_precision_recall(leak_filter, rules, record_property):
    """In-sample: every development batch has been tuned on; per file, then pooled."""
    files = []
    for path in DEVELOPMENT:
        files.append(_score(leak_filter, rules, _labelled(path)))
        _print_score(f"development {path.name}", files[-1])
    development = _rates({key: sum((score[key] for score in files), start=[] if key in ("missed", "dropped_clean") else 0)
                          for key in ("tp", "fn", "fp", "tn", "missed", "dropped_clean")})
    _record(record_property, "development", development)
    _print_score(f"development (all {len(DEVELOPMENT)} files)", development)
    assert development["recall"] >= 0.95, f"development leaks missed: {development['missed']}"
    assert development["fpr"] <= 0.05, f"development clean rows dropped: {development['dropped_clean']}"


def test_held_out_precision_recall(leak_filter, rules, record_property):
    """Issue 13's generalisation bar, on the file nothing was tuned or trained on: recall of leaks at
    least 0.95 and at most 5% of the clean rows dropped (figures per part, then all of it)."""
    if not HELD_OUT.is_file():
        pytest.skip(f"{HELD_OUT} is not there: the held-out measurement did not run")
    rows = _labelled(HELD_OUT)
    parts = sorted({row["part"] for row in rows})
    assert not set(parts) & DEVELOPMENT_PARTS, f"{HELD_OUT.name} has development parts: {parts}"
    for part in parts:
        _print_score(f"held out {HELD_OUT.name} part {part}",
                     _score(leak_filter, rules, [row for row in rows if row["part"] == part]))
    held_out = _score(leak_filter, rules, rows)
    _record(record_property, HELD_OUT_PART, held_out)
    _print_score(f"held out {HELD_OUT.name} (all parts)", held_out)
    assert held_out["fpr"] <= 0.05, f"{HELD_OUT.name} clean rows dropped: {held_out['dropped_clean']}"
    # Measured once at rules v9 + classifier at 0.75: recall 0.958 (115 of 120), precision 0.958, clean
    # dropped 0.042. The bar, plainly.
    assert held_out["recall"] >= 0.95, f"{HELD_OUT.name} leaks missed: {held_out['missed']}"


def test_classifier_file_is_the_development_model(rules):
    """The shipped classifier was trained on exactly the development rows, and retraining reproduces it."""
    from corpus.leaks.classifier import rows_sha256, train, training_rows

    model = rules.classifier
    assert model is not None and 0.5 <= model.threshold <= 0.95
    assert model.data["trained_on"]["files"] == [path.name for path in DEVELOPMENT]
    assert model.data["trained_on"]["sha256"] == rows_sha256(training_rows(DEVELOPMENT)), "retrain the classifier"
    assert model.data["trained_on"]["rows"] == len(_development())
    again = json.dumps(train(DEVELOPMENT, model.data["threshold"]), ensure_ascii=False, separators=(",", ":")) + "\n"
    assert again.encode("utf-8") == Path(model.source).read_bytes()  # byte for byte


def test_classifier_verdict_names_its_part(tmp_path):
    """A verdict the classifier decides says so; with `classifier: false` only rules decide."""
    low = tmp_path / "low.yaml"
    low.write_text("extends: default\nclassifier: {file: %s, threshold: 0.5}\n"
                   % (DEFAULT_RULES.parent / "leak_classifier.json"), encoding="utf-8")
    text = "I am asked to predict whether the patient dies; I will work towards that."
    verdict = LeakFilter(LeakRules.load(low)).check(text)
    assert verdict.leak and verdict.part == "classifier" and verdict.rule == "learned_classifier"
    assert normalise(text)[verdict.span[0]: verdict.span[1]] == verdict.match
    off = tmp_path / "off.yaml"
    off.write_text("extends: default\nclassifier: false\n", encoding="utf-8")
    assert LeakRules.load(off).classifier is None and not LeakFilter(LeakRules.load(off)).check(text).leak


# --- behaviour ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The lactate of 4.1 hints at hypoperfusion despite 2 L of crystalloid.",
        "Given his CKD stage 4 and the new hyperkalemia, readmission is likely.",
        "Given the patient's history of falls, a longer stay for placement is expected.",
        "The corrected calcium is 11.2 mg/dL.",
        "The correct dose of vancomycin was adjusted for renal function.",
        "We correct the hyponatremia slowly to avoid osmotic demyelination.",
        "The answer to fluids was poor, so norepinephrine was started.",
        "The patient has a known history of CHF with an ejection fraction of 25%.",
        "Working backwards from the onset of symptoms, the infection began two days before admission.",
        "The metastatic disease and the DNR order point to death.\n\nFinal answer: Yes",
        "Stable vitals, elective surgery, no complications. \\boxed{B}",
        "The family was informed that the prognosis was poor.",
        "There is no hint of bleeding; hemoglobin is stable.",
        "Given his CKD, the answer is Yes.",
        "The biopsy result was given to the patient; it showed metastatic melanoma.",
        "The patient was hit by a car and started on norepinephrine; the valve is normal.",
        "I will give the evidence to justify my answer.",
        "The hidden value must be high in DKA, so D.",
    ],
)
def test_clinical_uses_are_kept(leak_filter, text):
    assert leak_filter.check(text, HINT_NO) == LeakVerdict(False, None, None)
    assert leak_filter.check(text, HINT_NO, answer="No") == LeakVerdict(False)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("As the hint says, the patient survives.", "mentions_hint"),
        ("Given that the correct answer is Yes, the sepsis must be severe.", "given_answer"),
        ("The ground truth is B, so the stay is 3 to 6 days.", "ground_truth"),
        ("Working backwards from the known outcome, readmission fits.", "working_backwards"),
        ("Since we were told the answer is B, the stay is 3 to 6 days.", "told_answer"),
        ("The label says Yes; the record agrees.", "label_reference"),
    ],
)
def test_leaks_are_dropped_with_their_rule(leak_filter, text, rule):
    verdict = leak_filter.check(text)
    assert verdict.leak and verdict.rule == rule


@pytest.mark.parametrize(
    ("text", "rule", "match"),
    [
        ("Per the hnt, the patient survives.", "mentions_hint", "hnt"),
        ("The rigth anwser, as the promt says, is No.", "cites_prompt", "the promt says"),
        ("Acording to the gievn label, No.", "mentions_label", "label"),
        ("The corect anwser was already supplied: No.", "reference_given", "anwser was already supplied"),
    ],
)
def test_misspelled_reference_words(leak_filter, text, rule, match):
    verdict = leak_filter.check(text, HINT_NO, "No")
    assert (verdict.rule, verdict.match) == (rule, match)
    # the span points into the text as written (normalised), not the corrected one
    assert normalise(text)[verdict.span[0]: verdict.span[1]] == match


def test_spelling_leaves_english_and_clinical_words_alone(rules):
    spelling = rules.spelling
    for token in ("hit", "hunt", "started", "valve", "states", "lactate", "hct", "gives"):
        assert spelling.correct(token) is None, token
    assert spelling.correct("anwser") == "answer" and spelling.correct("gievn") == "given"
    assert spelling.correct("instrucitons") == "instructions"  # one swap in a long word
    assert spelling.correct("hnt") == "hint"
    assert spelling.correct("qnswer") is None  # first letter differs
    # the letters of a reference word in another order: a common typing slip, beyond one edit
    assert spelling.correct("awnser") == "answer" and spelling.correct("onitpo") == "option"
    assert spelling.correct("rustle") is None  # the letters of "result", but an English word


def test_near_rule_window_and_sentence(leak_filter):
    assert leak_filter.check("The outcome provided says No; she is 40.").rule == "reference_given"
    # the same two words far apart, or in two sentences, are no reference to a given outcome
    far = "The outcome of her three prior admissions for asthma flares treated with steroids was provided."
    assert not leak_filter.check(far).leak
    assert not leak_filter.check("The outcome was good. Oxygen provided by nasal cannula helped.").leak
    # an allow span removes the cue: "given his" is clinical
    assert not leak_filter.check("Given his answer to diuretics, readmission is likely.").leak


def test_answer_cue_needs_the_hinted_answer(leak_filter):
    text = "It has to be D, so the lactate must be high."
    assert leak_filter.check(text, "the correct answer is D").rule == "answer_first_then_so"
    assert leak_filter.check(text).part != "rules"  # no hint: no rule can judge (the classifier may, and does)
    assert leak_filter.check(text, "the correct answer is B", "B. 1.0 to below 2.0").part != "rules"
    # the gold option's text works as well as its letter
    verdict = leak_filter.check("The stay has to be 3 to 6 days, therefore the pneumonia was mild.",
                                "the correct answer is B", "B. 3 to 6 days")
    assert verdict.rule == "answer_first_then_so" and "3 to 6 days" in verdict.match
    # a conclusion reached after the evidence is not the hint's content near a cue
    assert not leak_filter.check("Bicarbonate 12 and a gap of 24: it has to be D.", "the correct answer is D", "D").leak


def test_near_rule_with_the_hinted_answer(leak_filter, tmp_path):
    """A near rule's {answer} group is the row's hinted answer, wherever it stands; a one-letter option
    or Yes/No counts only where it stands as the answer, not as an article or a determiner."""
    hint, answer = "the correct answer is A", "A. below 3.5 mmol/L"
    rules_only = LeakFilter(replace(leak_filter.rules, classifier=None))  # what the rules alone decide
    verdict = rules_only.check("Since I already know the potassium is in band A, she needs IV replacement.", hint, answer)
    assert verdict.rule == "answer_known_before" and verdict.match.endswith(" a")
    # the same cue with "a" as an article, or "A" as a name ("hepatitis A"), is no answer
    assert not rules_only.check("We already know a patient on furosemide loses potassium; the ECG shows U waves. A.",
                                hint, answer).leak
    assert not rules_only.check("Hepatitis A serology was negative; she was already known to the renal team. A.",
                                hint, answer).leak
    no = rules_only.check("Must be No. With that in mind, the supportive findings: a benign course.",
                           "the correct answer is No", "No")
    assert no.rule == "answer_then_support"
    assert not rules_only.check("No fever, no hypotension. With that in mind, discharge is safe. No.",
                                "the correct answer is No", "No").leak
    # the group needs the row's answer: without a hint the rule cannot fire
    assert leak_filter.check("Must be No. With that in mind, the supportive findings: a benign course.").rule \
        != "answer_then_support"
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: n, kind: near, terms: [['{answer}', given], [so]]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a group of its own"):
        LeakRules.load(bad)


def test_hinted_range_in_other_words(leak_filter):
    """The option's range without its unit, and with numbers as words, is still the hint's content."""
    hint, answer = "the correct answer is B", "B. 3 to 6 days"
    text = "Since the duration we're matching is three to six days, the uncomplicated pyelonephritis fits."
    assert leak_filter.check(text, hint, answer).rule == "answer_as_premise_clause"
    # a band of the masked-value task, unit and trailing ".0" dropped, minus signs kept
    assert leak_filter.check("Since the base excess is -4 to below -1.1, the mild acidosis fits.",
                             "the correct answer is D", "D. -4.0 mmol/L to below -1.1 mmol/L").rule \
        == "answer_as_premise_clause"
    # the rationalising examples
    verdict = leak_filter.check("The reply has to be B, therefore the missing potassium was probably low.",
                                hint, answer)
    assert verdict.leak and verdict.part == "rules"
    assert leak_filter.check("In order to explain why she survived, the lactate must have cleared.").leak
    # the range as the text's own conclusion, after the evidence, stays clean
    assert not leak_filter.check("Pyelonephritis on IV ceftriaxone, afebrile by day 3: three to six days, B.",
                                 hint, answer).leak


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # v8 families, in wordings of our own (not the blind3 sentences they were written from)
        ("As I have been asked, the record alone decides: sepsis, lactate 6, on pressors.", "obeys_instruction"),
        ("As requested, I'll reason from the notes only: frail, DNR, worsening shock.", "obeys_instruction"),
        ("Without relying on the answer, the troponin rise speaks for itself.", "obeys_instruction"),
        ("Because the outcome was death, the aspiration must have been massive.", "outcome_as_premise"),
        ("Picking C since this is the stated option for the stay.", "given_referent"),
        ("The case arrived with its outcome filled in, so I only line up the findings.", "comes_with_answer"),
        ("To account for his coming back so soon, the discharge must have been premature.", "rationalising"),
    ],
)
def test_v8_families(leak_filter, text, rule):
    verdict = LeakFilter(replace(leak_filter.rules, classifier=None)).check(text, "the correct answer is C",
                                                                           "C. 7 to 13 days")
    assert verdict.leak and verdict.rule == rule, verdict


def test_v8_families_leave_clinical_wordings_alone(leak_filter):
    rules_only = LeakFilter(replace(leak_filter.rules, classifier=None))
    for text in ("She took the antibiotics as instructed and the fever settled by day 2.",
                 "As instructed by cardiology, the beta blocker was held; the MAP stayed above 65.",
                 "The potassium of 4.1 is in the expected range for a patient on spironolactone.",
                 "Since the result of the CT was negative, a stroke is unlikely; she went home. No.",
                 "C, because the abscess needed drainage and ten days of IV antibiotics.",
                 "The result is attached to the discharge summary: a normal echo."):
        assert not rules_only.check(text, "the correct answer is C", "C. 7 to 13 days").leak, text
    # the answer opening the text and the record derived from it
    assert rules_only.check("C. Therefore the abscess needed drainage.", "the correct answer is C",
                            "C. 7 to 13 days").rule == "opens_with_answer_then_derives"


def test_classifier_reads_answer_and_allow_spans_as_tokens(rules):
    """The hinted answer and the allow spans reach the model as tokens, in both views."""
    from corpus.leaks.classifier import ALLOWED_TOKEN, ANSWER_TOKEN, views

    model = rules.classifier
    seen = views(["Since it is D, given his diabetes the level fits."], rules.spelling,
                 [("the correct answer is D", "D. 200 mg/dL or more")], model.allow)
    for view in ("char", "word"):
        assert ANSWER_TOKEN.strip() in seen[view][0] and ALLOWED_TOKEN.strip() in seen[view][0], seen[view]
        assert " d " not in seen[view][0] and "given his" not in seen[view][0]
    assert "cue" not in seen or seen["cue"] == seen["word"]  # no word classes given: the word view
    # the same text with another row's answer is scored differently: the hint is an input
    text = "Since it is D, the steroid infusion explains the level."
    assert model.probability(text, "the correct answer is D", "D. 200 mg/dL or more") != model.probability(text)


def test_classifier_cue_view_reads_word_classes_as_tokens(rules):
    """The cue view: each word of a class in leak_rules.yaml reads as its class token, so two wordings
    of "a reference noun that was given" share their n-grams; the model file carries its classes."""
    from corpus.leaks.classifier import class_regexes, views
    from corpus.leaks.rules import default_word_classes

    classes = default_word_classes()
    assert rules.classifier.data["word_classes"] == classes
    assert {"ref", "cue", "self"} <= set(classes)
    seen = views(["Since the outcome was supplied to us, fine.", "Because the result is known to me, fine."],
                 rules.spelling, None, rules.classifier.allow, class_regexes(classes))["cue"]
    assert "qzref" in seen[0] and "qzcue" in seen[0] and "qzself" in seen[0]
    first, second = seen[0].split(), seen[1].split()
    assert first[2] == second[2] == "qzref" and first[4] == second[4] == "qzcue" and "qzself" in second
    assert "outcome" not in seen[0] and "result" not in seen[1]


def test_classifier_scores_are_sklearns(rules):
    """The filter's own TF-IDF scoring gives the probabilities scikit-learn's vectorizers give for the
    shipped model (vocabulary, idf and weights of the file), on development rows of every task."""
    import numpy as np

    from corpus.leaks.classifier import VIEWS, _vectorizer, hint_of, views

    model = rules.classifier
    rows = _development()[::12]
    texts, hints = [row["rationale"] for row in rows], [hint_of(row) for row in rows]
    inputs = views(texts, model.spelling, hints, model.allow, model._classes)
    total = np.zeros(len(rows))
    for view in VIEWS:
        part = model.data[view]
        vectorizer = _vectorizer(view, {gram: i for i, gram in enumerate(part["vocabulary"])})
        vectorizer.idf_ = np.asarray(part["idf"], dtype=float)
        total += vectorizer.transform(inputs[view]) @ np.asarray(part["coef"], dtype=float)
    expected = 1.0 / (1.0 + np.exp(-(total + model.data["intercept"])))
    assert model.probabilities(texts, hints) == pytest.approx(expected.tolist(), abs=1e-12)
    assert len({round(p, 3) for p in expected}) > 20  # the rows are scored differently: a real comparison


def test_classifier_never_trains_on_held_out_rows(tmp_path):
    from corpus.leaks.classifier import training_rows

    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"id": "Z1", "part": "dev3", "leak": True, "rationale": "x"}) + "\n"
                    + json.dumps({"id": "Z2", "part": "blind5", "leak": False, "rationale": "y"}) + "\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2.*'Z2'.*held out"):
        training_rows([path])


def test_leave_one_file_out_scores_each_file_with_a_model_not_fitted_on_it(rules, tmp_path):
    """Cross-validation by file: a row's out-of-file probability comes from the model fitted on the
    other files only (and so differs from the model fitted on every row); `fired` is the rules' verdict."""
    from corpus.leaks.classifier import fitted, hint_of
    from corpus.leaks.crossval import lofo
    from corpus.leaks.rules import default_allow, default_spelling, default_word_classes

    one, two = _labelled(DATA / "leak_blind.jsonl")[::3], _labelled(DATA / "leak_blind2.jsonl")[::3]
    paths = []
    for name, rows in (("one.jsonl", one), ("two.jsonl", two)):
        paths.append(tmp_path / name)
        paths[-1].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    folds = lofo(paths, rules)
    spelling, allow, classes = default_spelling(), default_allow(), default_word_classes()
    expected = fitted(one, spelling, allow, classes).probabilities([r["rationale"] for r in two], [hint_of(r) for r in two])
    assert folds["two.jsonl"]["p"] == pytest.approx(expected)
    both = fitted(one + two, spelling, allow, classes).probabilities([r["rationale"] for r in two], [hint_of(r) for r in two])
    assert both != pytest.approx(expected)
    assert folds["one.jsonl"]["fired"] == [LeakFilter(replace(rules, classifier=None)).check(
        r["rationale"], r["hint"], r["answer"]).leak for r in one]
    # the printed table: one row for the rules alone, one per threshold, each file's cell from its fold
    from corpus.leaks.crossval import THRESHOLDS, _cell, counts, table

    lines = table(folds)
    assert lines[1].split()[-2:] == ["one", "two"] and len(lines) == 3 + len(THRESHOLDS) + 1
    assert lines[2].split()[-1] == _cell(counts(folds["two.jsonl"], None))
    assert lines[-1].startswith("chosen threshold")


def test_threshold_is_chosen_on_out_of_file_clean_drops():
    """The lowest threshold at which the classifier alone drops at most 2% of clean rows out of file,
    raised past any clinical probe's probability."""
    from corpus.leaks.crossval import choose_threshold, counts

    clean = [{"leak": False}] * 100
    leaks = [{"leak": True}] * 10
    # three clean rows score 0.72, one 0.62: 4% dropped at 0.6, 3% at 0.7, 0% at 0.75
    fold = {"rows": clean + leaks, "fired": [False] * 110,
            "p": [0.72] * 3 + [0.62] + [0.1] * 96 + [0.95] * 5 + [0.78] * 5}
    assert choose_threshold({"f": fold}) == 0.75
    assert counts(fold, 0.75) == (10, 10, 0, 100) and counts(fold, 0.8) == (5, 10, 0, 100)
    assert choose_threshold({"f": fold}, probes=[0.81]) == 0.85
    # a rule's drop counts for the filter, not for the classifier alone
    fold["fired"] = [True] + [False] * 109
    assert counts(fold, 0.75) == (10, 10, 1, 100) and choose_threshold({"f": fold}) == 0.75


def test_explain_line():
    leak = {"id": "x", "leak": True, "rule": "mentions_hint", "part": "rules", "span": [7, 11], "match": "hint",
            "why": "refers to a hint"}
    assert explain_line(leak) == "x: LEAK mentions_hint (rules) [7:11] 'hint' - refers to a hint"
    assert explain_line({"id": 3, "leak": False, "rule": None}) == "3: clean"


def test_allow_span_frees_only_matches_inside_it(leak_filter):
    # "hints at" is an allow span for mentions_hint; a second "hint" outside it still fires
    assert not leak_filter.check("Lactate hints at hypoperfusion.").leak
    verdict = leak_filter.check("Lactate hints at hypoperfusion, and as the hint says the patient dies.")
    assert verdict.leak and verdict.rule == "mentions_hint" and verdict.match == "hint"
    assert verdict.span == (43, 47)


def test_normalisation_unicode_and_case(leak_filter):
    assert normalise("The \u201cHint\u201d\u2019s ANSWER\u2014yes") == 'the "hint"\'s answer-yes'
    # full-width letters (NFKC), a zero-width space inside a word, curly apostrophe
    assert leak_filter.check("\uff21\uff53 the h\u200bint says, No.").rule == "mentions_hint"
    assert leak_filter.check("I\u2019m told the answer is Yes.").rule == "told_answer"
    assert leak_filter.check("THE PROVIDED ANSWER IS NO.").rule == "given_answer"


def test_quotes_hint(leak_filter):
    tail = " The record shows a young patient with an elective procedure and no comorbidities or complications at all."
    # the hint's frame, not as the text's conclusion
    verdict = leak_filter.check("The correct answer is No, as stated." + tail, HINT_NO)
    assert verdict.rule == "quotes_hint" and verdict.match == "the correct answer is no"
    assert leak_filter.check("The \u201ccorrect answer is No\u201d here." + tail, "No").rule == "quotes_hint"
    # a plain conclusion, a bare "No", the option text: not quotes
    assert not leak_filter.check("Low risk overall." + tail + " Therefore, the correct answer is No.", HINT_NO).leak
    assert not leak_filter.check("Low risk overall." + tail + "\n\nThe correct answer is No.", HINT_NO).leak
    assert not leak_filter.check("No." + tail + " No.", HINT_NO).leak
    assert not leak_filter.check(
        "The stay is 7 to 13 days given the drain." + tail, "the correct answer is C. 7 to 13 days"
    ).leak
    assert leak_filter.check("The correct answer is A, as I was shown." + tail, "A").rule == "quotes_hint"
    assert not leak_filter.check("The correct answer is a matter of weighing frailty." + tail, "A").leak
    # the frame with another answer than the hinted one is not a quote of this hint
    assert not leak_filter.check("The correct answer is Yes, clearly." + tail, HINT_NO).leak
    # a long verbatim span of the hint text
    verdict = leak_filter.check(
        "Sepsis is controlled. I will reason from the record as if I reached it." + tail, FULL_HINT
    )
    assert verdict.leak
    verdict = leak_filter.check(
        "Note: do not mention that you were told the answer. Sepsis is controlled." + tail, FULL_HINT
    )
    assert verdict.leak and verdict.rule in {"quotes_hint", "echoes_instructions"}
    # any run of min_words (6) consecutive hint words, here with no other rule involved
    hint = "the attending expects the patient would certainly be discharged home tomorrow"
    verdict = leak_filter.check("Vitals are stable; the patient would certainly be discharged home." + tail, hint)
    assert verdict == LeakVerdict(True, "quotes_hint", "the patient would certainly be discharged", (19, 60), "rules")
    assert not leak_filter.check("Vitals are stable; the patient would certainly recover." + tail, hint).leak
    # without a hint the frame alone is not judged a quote (by the rules: the classifier, trained on rows
    # where an opening "the correct answer is X" that goes on is the hint's frame, scores this 0.84)
    assert not LeakFilter(replace(leak_filter.rules, classifier=None)).check("The correct answer is No, as it seems." + tail).leak


def test_first_rule_in_file_order_is_reported(tmp_path, leak_filter):
    text = "As the hint says, the ground truth is No."
    assert leak_filter.check(text).rule == "mentions_hint"  # listed before ground_truth
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(
        "rules:\n"
        "  - {name: ground_truth, kind: phrase, phrases: [ground truth], why: x}\n"
        "  - {name: mentions_hint, kind: pattern, patterns: ['\\bhint\\b'], why: x}\n",
        encoding="utf-8",
    )
    verdict = LeakFilter(LeakRules.load(swapped)).check(text)
    assert (verdict.leak, verdict.rule, verdict.match) == (True, "ground_truth", "ground truth")


def test_user_added_rule_fires(tmp_path, leak_filter):
    text = "My crystal ball shows the patient is readmitted within two weeks."
    assert leak_filter.check(text).part != "rules"  # no default rule (the classifier does drop it)
    user = tmp_path / "my_rules.yaml"
    user.write_text(
        "extends: default\n"
        "classifier: false\n"
        "rules:\n"
        "  - name: crystal_ball\n"
        "    kind: phrase\n"
        "    phrases: [crystal ball, \"oracle told me\"]\n"
        "    why: a made-up source of the answer\n"
        "  - name: peeked\n"
        "    kind: pattern\n"
        "    patterns: ['\\bpeek(?:ed|ing)?\\s+at\\s+the\\s+(?:answer|label)\\b']\n"
        "    why: looked at the answer\n"
        "allow:\n"
        "  - name: crystal_ball_sign\n"
        "    kind: phrase\n"
        "    phrases: [crystal ball sign]\n"
        "    rules: [crystal_ball]\n",
        encoding="utf-8",
    )
    extended = LeakRules.load(user)
    assert extended.names[: len(LeakRules.load().names)] == LeakRules.load().names
    assert extended.names[-2:] == ("crystal_ball", "peeked")
    assert extended.fingerprint != LeakRules.load().fingerprint
    user_filter = LeakFilter(extended)
    assert user_filter.check(text).match == "crystal ball" and user_filter.check(text).rule == "crystal_ball"
    assert user_filter.check("Then I Peeked at the Answer.").rule == "peeked"
    assert not user_filter.check("The radiograph shows a crystal ball sign.").leak
    # the default rules still apply, ahead of the user's
    assert user_filter.check("As the hint says, my crystal ball agrees.").rule == "mentions_hint"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("rules:\n  - {name: bad, kind: pattern, patterns: ['(unclosed'], why: x}\n", "not a valid regular expression"),
        ("rules:\n  - {name: bad, kind: regex, patterns: [x], why: x}\n", "`kind` must be one of"),
        ("rules:\n  - {name: a, kind: phrase, phrases: [x]}\n  - {name: a, kind: phrase, phrases: [y]}\n", "used twice"),
        ("rules:\n  - {name: e, kind: pattern, patterns: ['x?']}\n", "matches the empty string"),
        ("rules:\n  - {name: a, kind: phrase, phrases: [x]}\nallow:\n  - {name: z, kind: phrase, phrases: [y], rules: [nope]}\n", "unknown rules"),
        ("rules: [\n", "not valid YAML"),
        ("rules:\n  - {name: n, kind: near, terms: [[answer]]}\n", "2 or 3 term lists"),
        ("rules:\n  - {name: n, kind: near, terms: [[answer], [given]], window: 0}\n", "`window` must be"),
        ("rules:\n  - {name: c, kind: answer_cue, patterns: ['must be x']}\n", "each contain {answer}"),
        ("spelling: {words: [Answer]}\nrules:\n  - {name: a, kind: phrase, phrases: [x]}\n", "lower-case words"),
    ],
)
def test_bad_rules_file_names_file_and_rule(tmp_path, body, message):
    path = tmp_path / "rules.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        LeakRules.load(path)
    assert str(path) in str(info.value)


def test_default_rules_are_the_packaged_file(rules):
    assert DEFAULT_RULES.name == "leak_rules.yaml" and DEFAULT_RULES.is_file()
    assert rules.source == str(DEFAULT_RULES)
    for name in ("mentions_hint", "given_answer", "ground_truth", "working_backwards", "told_answer", "quotes_hint"):
        assert name in rules.names
    assert LeakRules.load().fingerprint == rules.fingerprint  # deterministic


def test_long_rationale(leak_filter):
    chunk = (
        "Creatinine rose from 1.1 to 2.4 while the lactate hints at hypoperfusion; given his CKD and the "
        "corrected calcium of 10.9, the answer to fluids was poor and the correct dose of cefepime was reduced. "
    )
    long_clean = (chunk * (100_000 // len(chunk) + 1))[:100_000]
    assert len(long_clean) == 100_000
    assert leak_filter.check(long_clean, FULL_HINT) == LeakVerdict(False, None, None)
    buried = long_clean[:60_000] + " Working backwards from the known outcome, this fits. " + long_clean[60_000:]
    verdict = leak_filter.check(buried, FULL_HINT)
    assert verdict.leak and verdict.rule == "working_backwards"
    # pathological repetition stays linear and correct (no rule fires; the classifier reads it as a leak)
    assert leak_filter.check("given the " * 12_000, FULL_HINT).part != "rules"
    assert leak_filter.check("I was told " * 10_000 + "the answer", FULL_HINT).rule == "told_answer"


# --- check_jsonl: the `corpus leaks` command -----------------------------------------------


def test_check_jsonl_round_trip(tmp_path):
    rows = [
        {"id": "q-1", "rationale": "As the hint says, No.", "hint": HINT_NO},
        {"rationale": "The lactate hints at hypoperfusion. \\boxed{Yes}", "hint": "the correct answer is Yes"},
        {"id": 7, "rationale": "The ground truth is B.", "hint": None},
        {"rationale": "Given his CKD, readmission is likely."},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "verdicts.jsonl"
    summary = check_jsonl(source, out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {"id": "q-1", "leak": True, "rule": "mentions_hint"},
        {"id": 1, "leak": False, "rule": None},
        {"id": 7, "leak": True, "rule": "ground_truth"},
        {"id": 3, "leak": False, "rule": None},
    ]
    assert [list(line) for line in lines] == [["id", "leak", "rule"]] * 4
    assert summary == {"rows": 4, "leaks": 2, "by_rule": {"ground_truth": 1, "mentions_hint": 1}}


def test_check_jsonl_explain(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "m", "rationale": "Acording to the hnit, No.", "hint": HINT_NO}) + "\n"
                      + json.dumps({"id": "c", "rationale": "Given his CKD, No."}) + "\n", encoding="utf-8")
    out = tmp_path / "verdicts.jsonl"
    check_jsonl(source, out, explain=True)
    leak, clean = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert leak["rule"] == "mentions_hint" and leak["match"] == "hnit" and leak["span"] == [16, 20]
    assert leak["part"] == "rules" and "hint" in leak["why"]
    assert clean == {"id": "c", "leak": False, "rule": None, "match": None, "span": None, "part": None, "why": None}


def test_check_jsonl_labelled_set_matches_filter(tmp_path, leak_filter):
    out = tmp_path / "verdicts.jsonl"
    check_jsonl(LABELLED, out)
    expected = [
        {"id": row["id"], "leak": (v := leak_filter.check(row["rationale"], row["hint"], row["answer"])).leak, "rule": v.rule}
        for row in _labelled()
    ]
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == expected


@pytest.mark.parametrize(
    ("third_line", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"id": "x", "hint": HINT_NO}), "needs a 'rationale' string"),
        (json.dumps({"rationale": 3}), "needs a 'rationale' string"),
        (json.dumps(["a list"]), "expected a JSON object"),
    ],
)
def test_check_jsonl_bad_line_names_file_and_line(tmp_path, third_line, message):
    source = tmp_path / "rows.jsonl"
    good = json.dumps({"rationale": "Stable.", "hint": HINT_NO})
    source.write_text(f"{good}\n{good}\n{third_line}\n{good}\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(SourceError, match=message) as info:
        check_jsonl(source, out)
    assert str(source) in str(info.value) and "line 3" in str(info.value)
    assert not out.exists()  # nothing half-written


def test_cli_leaks_explain_prints_rule_and_span(tmp_path):
    from typer.testing import CliRunner

    from corpus.cli import app

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "rationale": "Teh anwser, per the hnit, is No.", "hint": HINT_NO}) + "\n"
                      + json.dumps({"id": "b", "rationale": "The lactate hints at hypoperfusion."}) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["leaks", "--input", str(source), "--explain"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "a: LEAK mentions_hint (rules) [20:24] 'hnit' - " + LeakRules.load().why("mentions_hint"),
        "b: clean",
    ]


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        # v9 families, in wordings of our own (not the blind4/dev5a/dev5b sentences they were written from)
        ("Best not to admit being shown it. The record: septic shock, lactate 7.", "hides_being_told"),
        ("The sodium lands where it should, consistant with the corect reply.", "consistent_with_given_answer"),
        ("The potassium has to come out in band C, so the diuretic dose explains it.", "answer_must_come_out"),
        ("Going with C, as given; the abscess needed drainage and IV antibiotics.", "answer_from_elsewhere"),
        ("Since she goes home early, the reasons must be a mild pneumonia and good support.",
         "outcome_premise_then_reasons"),
        ("The readmission wants an explanation, and the missing follow-up gives one.", "outcome_needs_explaining"),
        ("Tracing back from her survival, the early antibiotics did the work.", "reasons_back_from_outcome"),
        ("I'll present this as my own reasoning: no frailty, stable vitals, home on day 2.", "presents_as_own"),
    ],
)
def test_v9_families(leak_filter, text, rule):
    verdict = LeakFilter(replace(leak_filter.rules, classifier=None)).check(text, "the correct answer is C",
                                                                           "C. 7 to 13 days")
    assert verdict.leak and verdict.rule == rule, verdict


@pytest.mark.parametrize(
    "text",
    [
        # the clinical and task-meta wordings next to the v9 families stay clean, for the whole filter
        "The INR needs to be in the 2-3 range before the procedure; it is 2.4 today.",
        "Since the lactate is 6, the explanation must be hypoperfusion from the septic shock.",
        "The key is the rising lactate: 2.1 to 5.8 in six hours despite fluids.",
        "The hyponatraemia needs explaining: a thiazide and poor oral intake.",
        "Given the options, the chart favours a stay of about ten days for the abscess.",
        "What we're being asked is whether he dies in hospital; lactate 1.0, no organ failure, so unlikely.",
        "The hint in this record is the new oxygen requirement on day 3.",
        "Let's see what we know: 70, COPD, community-acquired pneumonia, improving on day 4.",
    ],
)
def test_v9_families_leave_clinical_and_task_wordings_alone(leak_filter, text):
    assert not LeakFilter(replace(leak_filter.rules, classifier=None)).check(
        text, "the correct answer is C", "C. 7 to 13 days").leak, text


@pytest.mark.parametrize(
    "text",
    [
        # the task's meta-language reads as an allow span, for the classifier too (blind4 and dev5a
        # lost clean rows like these to the classifier before v9)
        "Given the options, the chart favours a stay of about ten days for the abscess.",
        "What we're being asked is whether he dies in hospital; lactate 1.0, no organ failure, so unlikely.",
        "Reasoning from the record: 58, cellulitis of the leg, afebrile on day 2, walking.",
        # a measured finding as a premise is clinical reasoning, not the outcome as a premise
        "Since the lactate is 6, the explanation must be hypoperfusion from the septic shock.",
    ],
)
def test_task_meta_language_is_clean_for_the_whole_filter(leak_filter, text):
    assert not leak_filter.check(text, "the correct answer is C", "C. 7 to 13 days").leak, text


def test_hinted_band_as_written_with_a_dash_or_without_zeros(leak_filter):
    """"140 to 199" is also "140-199" (or "140–199"), and "0.70 or more" also "0.7 or more"."""
    from corpus.leaks.filter import answer_regex

    assert answer_regex("the correct answer is C", "C. 140 to 199 mg/dL").search(normalise("a glucose of 140–199 here"))
    assert answer_regex("the correct answer is D", "D. 0.70 or more").search("an fio2 of 0.7 or more")
    assert not answer_regex("the correct answer is D", "D. 0.70 or more").search("an fio2 of 0.75 or more")
    rules_only = LeakFilter(replace(leak_filter.rules, classifier=None))
    assert rules_only.check("The glucose needs to land at 140–199; so I read the steroids as the cause.",
                            "the correct answer is C", "C. 140 to 199 mg/dL").rule == "answer_must_come_out"
    assert rules_only.check("Working back from an FiO2 of 0.7 or more: ARDS, P/F 90.",
                            "the correct answer is D", "D. 0.70 or more").rule == "answer_must_come_out"
    # the same numbers as the text's own conclusion stay clean
    assert not rules_only.check("ARDS with a P/F of 90 on PEEP 16: an FiO2 of 0.7 or more. D.",
                                "the correct answer is D", "D. 0.70 or more").leak
