"""Answer parsing (corpus/generate/parse.py): hand-written model outputs for every
path (boxed, statement, logprob, invalid, conflict, unparsed), the traps, and
the logprob fallback scored by a real tiny Llama."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from corpus.generate.parse import PARSE_STATUSES, ParsedAnswer, parse_answer, split_rationale
from tests.tiny_model import build_tiny_model

YES_NO = ["Yes", "No"]
LOS = ["A. less than 3 days (0 to 2 days)", "B. 3 to 6 days", "C. 7 to 13 days", "D. 14 days or more"]
HEART_RATE = ["A. below 72.0 bpm", "B. 72.0 bpm to below 85.5 bpm", "C. 85.5 bpm to below 101.0 bpm", "D. 101.0 bpm or above"]
UNIT = ["A. not recorded", "B. Medical ICU", "C. Surgical ICU", "D. another value"]

SEPTIC = (
    "The patient is 81 years old and was admitted with septic shock from a urinary source. "
    "He needed norepinephrine and vasopressin, lactate rose from 4.2 to 6.8 mmol/L, and "
    "creatinine doubled over 48 hours despite fluids. Prior visits show congestive heart "
    "failure and stage 4 chronic kidney disease."
)
STABLE = (
    "The current visit is an elective cholecystectomy in a 54-year-old with well-controlled "
    "type 2 diabetes. There are no ICU procedures, no vasopressors and the medication list is "
    "short (metformin, acetaminophen, cefazolin)."
)
LONG_HEAD = (
    "Visit 3 lists pneumonia (new), acute on chronic systolic heart failure (continued from "
    "previous visit) and hyponatremia. "
)
# 100k characters of reasoning, with "Yes" and "the answer" scattered through it.
VERY_LONG = ("Yes, the ejection fraction is low; the answer hinges on renal function. " * 1400)[:100_000]

CASES = [
    # --- boxed -------------------------------------------------------------------
    pytest.param(
        SEPTIC + " With multi-organ failure the risk of in-hospital death is high.\n\nFinal answer: $\\boxed{\\text{Yes}}$",
        YES_NO, "Yes", "boxed", id="boxed-text-yes-in-math",
    ),
    pytest.param(STABLE + " Readmission is unlikely.\n\n$\\boxed{No}$", YES_NO, "No", "boxed", id="boxed-no-dollars"),
    pytest.param(
        LONG_HEAD + "IV antibiotics for 5 days, then oral step-down; discharge expected within a week.\n\\boxed{B}",
        LOS, "B. 3 to 6 days", "boxed", id="boxed-letter",
    ),
    pytest.param(
        LONG_HEAD + "The stay should be short to moderate.\n\nThe answer is \\boxed{B. 3 to 6 days}.",
        LOS, "B. 3 to 6 days", "boxed", id="boxed-full-option-text",
    ),
    pytest.param(
        "Tracheostomy and PEG placement suggest a prolonged course. \\boxed{14 days or more}",
        LOS, "D. 14 days or more", "boxed", id="boxed-option-text-without-letter",
    ),
    pytest.param("Prolonged ventilation. Final: \\boxed{\\textbf{D}}", LOS, "D. 14 days or more", "boxed", id="boxed-nested-textbf"),
    pytest.param("Heart rate trend fits a tachycardia. \\boxed{Ｃ}", HEART_RATE, "C. 85.5 bpm to below 101.0 bpm", "boxed", id="boxed-fullwidth-letter"),
    pytest.param(
        "Given sepsis and fever the hidden heart rate is elevated: \\boxed{C. 85.5 bpm to below 101.0 bpm}",
        HEART_RATE, "C. 85.5 bpm to below 101.0 bpm", "boxed", id="boxed-masked-value-full-text",
    ),
    pytest.param(
        "Short antibiotic course, so \\boxed{B}.\n\nTo summarise, the expected stay is \\boxed{B. 3 to 6 days}.",
        LOS, "B. 3 to 6 days", "boxed", id="two-boxes-same-option",
    ),
    pytest.param(
        SEPTIC + " Death is likely: \\boxed{Yes}. On reflection, he responded to vasopressors, so \\boxed{No}.",
        YES_NO, None, "conflict", id="two-boxes-different-options",
    ),
    pytest.param("Too uncertain to say. \\boxed{Uncertain}\n\nIf I must choose: \\boxed{No}", YES_NO, None, "conflict", id="box-not-option-plus-valid-box"),
    pytest.param("A very long stay is expected. \\boxed{E}", LOS, None, "invalid", id="boxed-letter-out-of-range"),
    pytest.param(STABLE + " \\boxed{Maybe}", YES_NO, None, "invalid", id="boxed-maybe-for-yes-no"),
    pytest.param(
        SEPTIC + "\n\n\\boxed{Yes}\n\nAnswer: No", YES_NO, "Yes", "boxed", id="statement-after-box-box-wins",
    ),
    pytest.param(
        "I will put my final choice in \\boxed{}. " + STABLE + "\nAnswer: No",
        YES_NO, "No", "statement", id="empty-box-echo-ignored",
    ),
    pytest.param(
        "The answer is Yes, given shock and AKI. Therefore the final answer is \\boxed{Ye",
        YES_NO, "Yes", "statement", id="unclosed-box-truncated",
    ),
    # --- statements ------------------------------------------------------------------
    pytest.param(SEPTIC + "\n\nAnswer: Yes", YES_NO, "Yes", "statement", id="answer-colon-yes"),
    pytest.param(LONG_HEAD + "Likely 3-6 days.\n\n**Answer:** B", LOS, "B. 3 to 6 days", "statement", id="markdown-bold-answer"),
    pytest.param(STABLE + "\n\n**Final Answer**\n\nNo", YES_NO, "No", "statement", id="final-answer-heading-next-line"),
    pytest.param(
        LONG_HEAD + "She will need diuresis and sodium correction, I would choose option B because the course is moderate.",
        LOS, "B. 3 to 6 days", "statement", id="i-would-choose-option",
    ),
    pytest.param(LONG_HEAD + "so the answer is c.", LOS, "C. 7 to 13 days", "statement", id="lowercase-letter"),
    pytest.param(STABLE + " my answer: no", YES_NO, "No", "statement", id="lowercase-my-answer-no"),
    pytest.param("ANSWER: YES.", YES_NO, "Yes", "statement", id="uppercase-yes"),
    pytest.param(
        "Answer: Yes, the patient will most likely die during the next admission given end-stage CHF.",
        YES_NO, "Yes", "statement", id="yes-followed-by-explanation",
    ),
    pytest.param(STABLE + " I'd say no readmission is expected.", YES_NO, "No", "statement", id="no-readmission-means-no"),
    pytest.param(
        "Yes, he has several risk factors: diabetes, CKD and a prior MI. Yes, the troponin was high. "
        "But the current visit is a planned knee replacement with an uneventful course.\n\nAnswer: No",
        YES_NO, "No", "statement", id="yes-mid-rationale-final-no",
    ),
    pytest.param(
        "The answer is Yes at first glance. However, after the echo was normal, the final answer is No.",
        YES_NO, "No", "statement", id="last-statement-wins",
    ),
    pytest.param("Final answer: No.\nIf the answer is Yes, palliative care should be involved early.", YES_NO, "No", "statement", id="hypothetical-skipped"),
    pytest.param(LONG_HEAD + "The answer is not A, it is C.", LOS, "C. 7 to 13 days", "statement", id="trap-not-a-it-is-c"),
    pytest.param(STABLE + " The answer is not Yes.", YES_NO, None, "unparsed", id="trap-negation-without-correction"),
    pytest.param(LONG_HEAD + "The answer is a prolonged stay given the ICU course.", LOS, None, "unparsed", id="trap-article-a-is-not-option-a"),
    pytest.param("Option D is the most likely answer given the tracheostomy.", LOS, "D. 14 days or more", "statement", id="reverse-option-is-the-answer"),
    pytest.param("The correct answer is (B).", LOS, "B. 3 to 6 days", "statement", id="parenthesised-letter"),
    pytest.param("Answer: B) 3 to 6 days", LOS, "B. 3 to 6 days", "statement", id="letter-paren-with-text"),
    pytest.param("Answer: less than 3 days", LOS, "A. less than 3 days (0 to 2 days)", "statement", id="option-text-without-parenthetical"),
    pytest.param("Answer: not recorded", UNIT, "A. not recorded", "statement", id="option-starting-with-not"),
    pytest.param(
        "Sinus rhythm without fever, so the answer is 72.0 bpm to below 85.5 bpm.",
        HEART_RATE, "B. 72.0 bpm to below 85.5 bpm", "statement", id="masked-value-range-text",
    ),
    pytest.param("Answer: I think it is B", LOS, "B. 3 to 6 days", "statement", id="i-think-filler"),
    pytest.param("Final answer: A or B", LOS, None, "invalid", id="hedge-two-letters"),
    pytest.param("Final answer: E", LOS, None, "invalid", id="statement-letter-out-of-range"),
    pytest.param("Answer: B. 7 to 13 days", LOS, None, "invalid", id="letter-contradicts-text"),
    pytest.param("Answer: A", YES_NO, None, "invalid", id="letter-for-yes-no-question"),
    # --- unicode -------------------------------------------------------------------------
    pytest.param("Final answer：Ｂ", LOS, "B. 3 to 6 days", "statement", id="fullwidth-colon-and-letter"),
    pytest.param(STABLE + " The answer is\u00a0\u201cNo\u201d.", YES_NO, "No", "statement", id="nbsp-and-curly-quotes"),
    # --- nothing to read ---------------------------------------------------------------------
    pytest.param("", YES_NO, None, "unparsed", id="empty"),
    pytest.param("   \n\t \u00a0\n", YES_NO, None, "unparsed", id="whitespace-only"),
    pytest.param(STABLE + " Overall the prognosis is good.", YES_NO, None, "unparsed", id="no-answer-at-all"),
    pytest.param("No.", YES_NO, "No", "statement", id="whole-text-is-an-option"),
    pytest.param(LONG_HEAD + "A week of IV antibiotics is typical.\n\n(c)\n", LOS, "C. 7 to 13 days", "statement", id="last-line-bare-letter"),
    pytest.param(STABLE + "\nNo readmission expected", YES_NO, None, "unparsed", id="last-line-prose-is-not-bare"),
    # --- very long -------------------------------------------------------------------------------
    pytest.param(VERY_LONG + "\n\nAnswer: No", YES_NO, "No", "statement", id="very-long-statement"),
    pytest.param(VERY_LONG + "\n\n\\boxed{D}", LOS, "D. 14 days or more", "boxed", id="very-long-boxed"),
    pytest.param("\\boxed{" * 12_000 + "Yes", YES_NO, None, "unparsed", id="very-long-unclosed-boxes"),
]


@pytest.mark.parametrize(("text", "options", "predicted", "status"), CASES)
def test_parse_answer(text, options, predicted, status):
    parsed = parse_answer(text, options)
    assert (parsed.predicted, parsed.parse_status) == (predicted, status)
    assert parsed.parse_status in PARSE_STATUSES
    assert parsed.predicted is None or parsed.predicted in options
    assert (parsed.raw is None) == (status in ("unparsed", "logprob"))


def test_raw_keeps_what_the_model_wrote():
    assert parse_answer("So \\boxed{\\text{Yes}}.", YES_NO).raw == "\\text{Yes}"
    assert parse_answer("**Answer:** B", LOS).raw == "B"
    assert parse_answer("\\boxed{Yes} then \\boxed{No} then \\boxed{Yes}", YES_NO).raw == "Yes | No"


def test_parsed_answer_is_frozen():
    parsed = parse_answer("Answer: Yes", YES_NO)
    assert parsed == ParsedAnswer("Yes", "statement", "Yes")
    with pytest.raises(AttributeError):
        parsed.predicted = "No"


@pytest.mark.parametrize("options", [[], ["Yes", "Yes"], ["Yes", ""]], ids=["empty", "duplicate", "blank"])
def test_bad_options_raise(options):
    with pytest.raises(ValueError):
        parse_answer("Answer: Yes", options)


# --- logprob fallback with plain functions ------------------------------------------------


def _never_called(options):
    raise AssertionError("logprob_fn must not be called when the text has an answer")


@pytest.mark.parametrize(
    "text",
    ["\\boxed{No}", "Answer: No", "\\boxed{Maybe}", "\\boxed{Yes} \\boxed{No}", "Final answer: A"],
    ids=["boxed", "statement", "invalid-box", "conflict", "invalid-statement"],
)
def test_logprob_fn_only_when_nothing_is_read(text):
    assert parse_answer(text, YES_NO, logprob_fn=_never_called).parse_status != "logprob"


@pytest.mark.parametrize(
    ("scores", "predicted", "status"),
    [
        ([-3.0, -1.5, -2.0, -9.0], "B. 3 to 6 days", "logprob"),
        ([-1.0, -1.0, -5.0, -5.0], "A. less than 3 days (0 to 2 days)", "logprob"),  # tie: first
        ([math.nan, -4.0, -math.inf, -2.5], "D. 14 days or more", "logprob"),  # NaN ignored
        ([math.nan] * 4, None, "unparsed"),
    ],
    ids=["max", "tie-first", "nan-ignored", "all-nan"],
)
def test_logprob_fallback_picks_the_max(scores, predicted, status):
    seen = []

    def logprob_fn(options):
        seen.append(list(options))
        return scores

    parsed = parse_answer("The course is hard to predict.", LOS, logprob_fn=logprob_fn)
    assert (parsed.predicted, parsed.parse_status, parsed.raw) == (predicted, status, None)
    assert seen == [LOS]


def test_logprob_fn_with_wrong_length_raises():
    with pytest.raises(ValueError, match="2 scores for 4 options"):
        parse_answer("", LOS, logprob_fn=lambda options: [0.0, 1.0])


# --- logprob fallback with a real tiny model -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, tokenizer


def _prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def make_logprob_fn(model, tokenizer, prompt: str):
    """Sum of the log-probabilities of each option's tokens after the prompt
    (prompt and option tokenised apart, so no merge crosses the boundary)."""
    import torch

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def logprob_fn(options):
        scores = []
        for option in options:
            option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + option_ids])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            per_token = log_probs.gather(1, ids[0, 1:, None])[:, 0]
            scores.append(per_token[len(prompt_ids) - 1:].sum().item())
        return scores

    return logprob_fn


def _reference_scores(model, tokenizer, prompt: str, options: list[str]) -> list[float]:
    """The same quantity another way: the model's own cross-entropy with the
    prompt masked out (-100), times the number of option tokens."""
    import torch

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    scores = []
    for option in options:
        option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + option_ids])
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        scores.append(-loss * len(option_ids))
    return scores


@pytest.mark.parametrize(
    ("question", "options"),
    [
        ("Will the patient die in hospital during their next admission? Answer Yes or No.", YES_NO),
        ("How long will the current hospital stay last? Choose one option.", LOS),
    ],
    ids=["yes-no", "los"],
)
def test_logprob_fallback_with_tiny_model(tiny_model, question, options):
    import torch

    model, tokenizer = tiny_model
    prompt = _prompt(tokenizer, question)
    logprob_fn = make_logprob_fn(model, tokenizer, prompt)

    # What the random model writes has no box and no answer statement.
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=16, do_sample=True, top_k=0, top_p=1.0)
    text = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    assert parse_answer(text, options).parse_status == "unparsed"

    expected_scores = _reference_scores(model, tokenizer, prompt, options)
    assert logprob_fn(options) == pytest.approx(expected_scores, abs=1e-4)
    ranked = sorted(expected_scores, reverse=True)
    assert ranked[0] - ranked[1] > 1e-3  # a clear winner, so the argmax is meaningful
    expected = options[expected_scores.index(ranked[0])]

    parsed = parse_answer(text, options, logprob_fn=logprob_fn)
    assert (parsed.predicted, parsed.parse_status) == (expected, "logprob")


def test_tiny_model_folder_has_chat_template(tiny_model):
    model, tokenizer = tiny_model
    prompt = _prompt(tokenizer, "Answer Yes or No.")
    assert prompt == "<|im_start|>user\nAnswer Yes or No.<|im_end|>\n<|im_start|>assistant\n"
    assert model.config.vocab_size == len(tokenizer) and model.config.tie_word_embeddings


def test_parser_does_not_import_torch():
    code = "import sys, corpus.generate.parse; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- split_rationale -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "options", "rationale"),
    [
        pytest.param(
            "Lactate is 6.8 and rising. He needs two pressors.\n\nTherefore, the final answer is $\\boxed{Yes}$.",
            None, "Lactate is 6.8 and rising. He needs two pressors.", id="box-sentence-dropped",
        ),
        pytest.param(
            "Elective surgery, short stay. Heart rate 72.0 bpm. So \\boxed{A}.",
            None, "Elective surgery, short stay. Heart rate 72.0 bpm.", id="box-same-line-decimals-kept",
        ),
        pytest.param(
            "Pneumonia needs a week of antibiotics.\n\n---\n**Final Answer**\n\n$\\boxed{C}$",
            None, "Pneumonia needs a week of antibiotics.", id="heading-and-separator-dropped",
        ),
        pytest.param(
            "Stable vitals, no ICU stay.\nThe answer is:\nNo", None, "Stable vitals, no ICU stay.", id="lead-in-line-dropped",
        ),
        pytest.param("Stable vitals. **Answer:** No\n\nHope this helps!", None, "Stable vitals.", id="trailing-text-dropped"),
        pytest.param(
            "Answer: No\n\nExplanation: the admission was elective and uneventful.",
            None, "Explanation: the admission was elective and uneventful.", id="answer-first",
        ),
        pytest.param("Stable after an elective repair.\n\nNo", None, "Stable after an elective repair.", id="bare-last-line"),
        pytest.param("The prognosis is uncertain.", None, "The prognosis is uncertain.", id="no-answer-whole-text"),
        pytest.param("", None, "", id="empty"),
        pytest.param(
            "The answer is Yes at first glance. Then the echo was normal.\nFinal answer: No",
            YES_NO, "The answer is Yes at first glance. Then the echo was normal.", id="with-options-uses-the-parsed-answer",
        ),
    ],
)
def test_split_rationale(text, options, rationale):
    assert split_rationale(text, options) == rationale
