"""corpus.scoring: figures worked out by hand, label forms, and the errors."""

import pytest

from corpus.scoring import classification_metrics, task_labels, to_label

LOS_OPTIONS = ["A. less than 3 days (0 to 2 days)", "B. 3 to 6 days", "C. 7 to 13 days", "D. 14 days or more"]


def test_binary_tpr_and_tnr_differ():
    # Yes: 1 of 2 found; No: 2 of 3 found; one false positive, one false negative.
    gold = ["Yes", "Yes", "No", "No", "No"]
    predicted = ["Yes", "No", "No", "No", "Yes"]
    m = classification_metrics(gold, predicted, ["No", "Yes"], positive="Yes")
    assert m["n"] == 5
    assert m["accuracy"] == 0.6
    assert m["tpr"] == 0.5
    assert m["tnr"] == 0.6667
    # F1(Yes) = 0.5, F1(No) = 2/3 -> mean 0.58333
    assert m["macro_f1"] == 0.5833
    assert m["per_class_recall"] == {"No": 0.6667, "Yes": 0.5}
    assert m["support"] == {"No": 3, "Yes": 2}
    assert m["confusion"] == {"No": {"No": 2, "Yes": 1, "none": 0}, "Yes": {"No": 1, "Yes": 1, "none": 0}}
    assert m["parse_failure_rate"] == 0.0


def test_none_prediction_is_wrong_and_counted_as_a_parse_failure():
    gold = ["Yes", "No", "No"]
    predicted = ["Yes", None, "No"]
    m = classification_metrics(gold, predicted, ["No", "Yes"], positive="Yes")
    assert m["accuracy"] == 0.6667
    assert m["parse_failure_rate"] == 0.3333
    assert m["tpr"] == 1.0
    assert m["tnr"] == 0.5  # the unparsed No is not a true negative
    # F1(Yes) = 1; F1(No): precision 1/1, recall 1/2 -> 2/3; macro 0.8333
    assert m["macro_f1"] == 0.8333
    assert m["confusion"]["No"] == {"No": 1, "Yes": 0, "none": 1}


def test_all_unparsed_scores_zero_not_an_error():
    m = classification_metrics(["Yes", "No"], [None, None], ["No", "Yes"], positive="Yes")
    assert (m["accuracy"], m["macro_f1"], m["tpr"], m["tnr"], m["parse_failure_rate"]) == (0.0, 0.0, 0.0, 0.0, 1.0)


def test_lettered_options_in_either_form_and_absent_class():
    labels, positive = task_labels("los", LOS_OPTIONS)
    assert (labels, positive) == (["A", "B", "C", "D"], None)
    # gold as the full option text, predictions as letters or full text: same thing
    gold = [LOS_OPTIONS[0], LOS_OPTIONS[0], LOS_OPTIONS[1]]
    predicted = ["A", LOS_OPTIONS[1], "B"]
    m = classification_metrics(gold, predicted, labels)
    assert m["accuracy"] == 0.6667
    # F1(A) = 2/3, F1(B) = 2/3, C and D have neither gold nor predictions -> 0 (zero_division=0): 4/3 / 4
    assert m["macro_f1"] == 0.3333
    assert m["per_class_recall"] == {"A": 0.5, "B": 1.0, "C": None, "D": None}
    assert "tpr" not in m and "tnr" not in m
    assert m["confusion"]["A"] == {"A": 1, "B": 1, "C": 0, "D": 0, "none": 0}
    assert list(m["confusion"]["C"]) == ["A", "B", "C", "D", "none"]


def test_key_order_is_fixed():
    binary = classification_metrics(["Yes"], ["No"], ["No", "Yes"], positive="Yes")
    assert list(binary) == ["n", "accuracy", "macro_f1", "tpr", "tnr", "per_class_recall", "support",
                            "parse_failure_rate", "confusion"]
    lettered = classification_metrics(["B"], ["A"], ["A", "B"])
    assert list(lettered) == ["n", "accuracy", "macro_f1", "per_class_recall", "support", "parse_failure_rate", "confusion"]


def test_empty_input_gives_none_rates():
    m = classification_metrics([], [], ["No", "Yes"], positive="Yes")
    assert m["n"] == 0 and m["accuracy"] is None and m["macro_f1"] is None and m["tpr"] is None


def test_gold_outside_labels_is_an_error_naming_it():
    with pytest.raises(ValueError, match="gold answer 'E. other'"):
        classification_metrics(["A", "E. other"], ["A", "A"], ["A", "B", "C", "D"])


def test_prediction_outside_labels_is_an_error():
    with pytest.raises(ValueError, match="prediction 'Maybe'"):
        classification_metrics(["Yes"], ["Maybe"], ["No", "Yes"], positive="Yes")


def test_length_mismatch_and_bad_positive():
    with pytest.raises(ValueError, match="2 gold answers but 1 predictions"):
        classification_metrics(["Yes", "No"], ["Yes"], ["No", "Yes"])
    with pytest.raises(ValueError, match="positive 'Maybe'"):
        classification_metrics(["Yes"], ["Yes"], ["No", "Yes"], positive="Maybe")


def test_task_labels():
    assert task_labels("mortality", ["Yes", "No"]) == (["No", "Yes"], "Yes")
    assert task_labels("readmission", ["No", "Yes"]) == (["No", "Yes"], "Yes")
    shuffled = ["C. below 36.5 °C", "A. 37.1 °C or above", "D. 36.8 °C to below 37.1 °C", "B. 36.5 °C to below 36.8 °C"]
    assert task_labels("masked_value", shuffled) == (["A", "B", "C", "D"], None)
    with pytest.raises(ValueError, match="task mortality: expected options Yes and No"):
        task_labels("mortality", LOS_OPTIONS)
    with pytest.raises(ValueError, match="task los: expected lettered options"):
        task_labels("los", ["Yes", "No"])


def test_to_label():
    assert to_label("C. 7 to 13 days", ["A", "B", "C", "D"]) == "C"
    assert to_label("Yes", ["No", "Yes"]) == "Yes"
    assert to_label("E. other", ["A", "B", "C", "D"]) is None
