"""The hint-leak filter: does a regenerated rationale reveal it was given the answer?

A hinted prompt (corpus/templates/prompts/hint.txt) tells the model "the
correct answer is X" and asks it not to say so. Rationales that say so anyway
are leaks and are dropped: "as the hint says", "the ground truth is B",
misspelled ("per the hnt", "the rigth anwser"), paraphrased ("since we
already know how this admission ended"), rationalising ("the reply has to be
B, therefore ..."), anywhere in the text. Clinical uses of the same words
("lactate hints at hypoperfusion", "given his CKD", "the known history of
COPD", "the correct dose", "Final answer: Yes") are kept.

The rules are data: corpus/templates/leak_rules.yaml (its header documents the
format). In short:

* the rationale is normalised (NFKC, straight quotes, "-" for dashes, no
  zero-width characters, case-folded) and misspelled reference words are
  corrected (`corpus.leaks.text`); every rule and allow entry is matched
  against that text;
* rule kinds: ``phrase`` and ``pattern`` (regexes), ``near`` (term groups
  within a window of words, e.g. a reference noun near a givenness cue; a
  group ``[{answer}]`` is the row's hinted answer, so the hint's content near
  a cue is found anywhere: "Must be No. With that in mind, ..."),
  ``answer_cue`` (the row's hinted answer inside a pattern, e.g. "has to be
  {answer}, so") and the built-in ``hint_quote``; the hinted answer's forms
  include the option's range in other words ("three to six days", "5.5 or more");
* a rule fires on its first match that does not lie wholly inside an allow
  span applying to it; the first rule in file order that fires is the
  verdict's ``rule``, with the matched text and its span;
* when no rule fires, the learned second opinion (`corpus.leaks.classifier`,
  char and word n-grams and word n-grams of a cue view where reference nouns,
  givenness cues and the narrator read as class tokens, with the hinted answer
  and the allow spans read as tokens, trained on the development rows only,
  threshold by leave-one-file-out cross-validation (`corpus.leaks.crossval`),
  shipped as corpus/templates/leak_classifier.json) drops the row only above
  that threshold; its verdicts have ``part="classifier"``,
  ``rule="learned_classifier"``.

Usage::

    filt = LeakFilter(LeakRules.load())            # or LeakRules.load("my_rules.yaml")
    filt.check(rationale, hint="the correct answer is B", answer="B. 3 to 6 days")
    # LeakVerdict(leak=True, rule='mentions_hint', match='hint', span=(7, 11), part='rules')

    check_jsonl("examples.jsonl", "verdicts.jsonl", explain=True)  # `corpus leaks --explain`
"""

from corpus.leaks.filter import LeakFilter, LeakVerdict
from corpus.leaks.jsonl import check_jsonl, explain_line
from corpus.leaks.rules import DEFAULT_RULES, AllowRule, LeakRule, LeakRules
from corpus.leaks.text import normalise

__all__ = [
    "DEFAULT_RULES",
    "AllowRule",
    "LeakFilter",
    "LeakRule",
    "LeakRules",
    "LeakVerdict",
    "check_jsonl",
    "explain_line",
    "normalise",
]
