"""Tasks, dataset loading and answer checking, table-driven on real cases."""
import os

import pytest

from data import (BOXED_SUFFIX, RewardFn, Task, embedded_tasks, extract_answer, gold_answer, is_correct,
                  load_tasks)

FIX = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.parametrize("text,answer", [
    ("so the answer is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
    ("\\boxed{1} first, then \\boxed{2}", "2"),                        # the last box wins
    ("\\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}"),                 # nested braces
    ("<think>maybe \\boxed{7}</think>It is 8", "8"),                   # reasoning is stripped
    ("I think 3 and then 5</think> final: 12", "12"),                  # a lone closing tag
    ("Total: 1,234 apples", "1234"),                                   # thousands separator
    ("The result is -17.", "-17"),
    ("The work...\n#### 42\nmore text", "42"),                         # GSM8K style
    ("x = 3/4", "3/4"),
    ("no digits here", None),
    ("cut off inside \\boxed{12", "12"),                               # unbalanced box: last number
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("pred,gold,ok", [
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "0.5", True),
    ("1,000", "1000", True),
    ("-3", "-3", True),
    ("3", "-3", False),
    ("5 \\text{ cm}", "5", True),                                      # units
    ("0.33", "\\frac{1}{3}", False),                                   # not equal, only close
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("12.0", "12", True),
    ("13", "12", False),
    (None, "12", False),
])
def test_is_correct(pred, gold, ok):
    assert is_correct(pred, gold) is ok


def test_reward_fn_never_crashes_and_counts():
    rf = RewardFn()
    assert rf("7 + 5 = 12", "12") == 1.0
    assert rf("\\boxed{11}", "12") == 0.0
    assert rf("no answer", "12") == 0.0 and rf.no_answer == 1
    assert rf(None, "12") == 0.0 and rf.errors == 1                    # a broken input scores 0, counted
    gate = RewardFn(format_gate=True)
    assert gate("<think>a</think> \\boxed{12}", "12") == 1.0
    assert gate("\\boxed{12}", "12") == 0.0                            # no </think>: gated to 0
    assert gate("</think></think>\\boxed{12}", "12") == 0.0            # two: gated to 0


def test_gold_answers_of_the_presets():
    assert gold_answer("steps...\n#### 1,000") == "1000"               # GSM8K
    assert gold_answer("so $x=\\boxed{\\frac{3}{4}}$") == "\\frac{3}{4}"   # MATH
    assert gold_answer(" 17 ") == "17"                                  # DAPO


def test_embedded_tasks_are_deterministic_disjoint_and_exact():
    train, held = embedded_tasks(n_train=80, n_eval=40, seed=3)
    assert (train, held) == embedded_tasks(n_train=80, n_eval=40, seed=3)
    assert train != embedded_tasks(n_train=80, n_eval=40, seed=4)[0]
    assert len(train) == 80 and len(held) == 40
    assert not {t.prompt for t in train} & {t.prompt for t in held}
    assert len({t.prompt for t in train}) == 80
    for t in train + held:                                              # every answer is exact
        q = t.prompt.split("?")[0]
        if q.startswith("What is "):
            assert str(eval(q[len("What is "):])) == t.answer
    harder, _ = embedded_tasks(n_train=50, n_eval=10, levels=(3, 5))
    assert {t.level for t in harder} == {3, 5}
    with pytest.raises(ValueError, match="distinct problems"):
        embedded_tasks(n_train=100, n_eval=10, levels=(2,))            # only 45 one-digit differences


def test_load_jsonl_with_gsm8k_answers_and_duplicates():
    with pytest.warns(UserWarning, match="dropped 1 duplicate prompt.*row 3"):
        tasks = load_tasks(os.path.join(FIX, "gsm8k_like.jsonl"), "question", "answer", suffix=BOXED_SUFFIX)
    assert [t.answer for t in tasks] == ["72", "10", "3", "1000"]
    assert all(t.prompt.endswith(BOXED_SUFFIX) for t in tasks)


def test_load_csv_and_parquet_with_boxed_solutions(tmp_path):
    tasks = load_tasks(os.path.join(FIX, "math_like.csv"), "problem", "solution")
    assert [t.answer for t in tasks] == ["\\frac{3}{4}", "-3", "2\\sqrt{2}"]
    import pandas as pd
    pd.DataFrame({"prompt": ["What is 2 + 2?", "What is 3 + 3?"], "answer": [4, 6]}).to_parquet(tmp_path / "t.parquet")
    tasks = load_tasks(str(tmp_path / "t.parquet"))
    assert tasks == [Task("What is 2 + 2?", "4"), Task("What is 3 + 3?", "6")]


def test_bad_datasets_name_the_row_or_field(tmp_path):
    with pytest.raises(ValueError, match="row 2 has no 'answer'"):
        load_tasks(os.path.join(FIX, "missing_answer.jsonl"))
    with pytest.raises(ValueError, match="no column 'question'.*--prompt-field"):
        load_tasks(os.path.join(FIX, "missing_answer.jsonl"), prompt_field="question")
    (tmp_path / "empty.csv").write_text("prompt,answer\n")
    with pytest.raises(ValueError, match="empty"):
        load_tasks(str(tmp_path / "empty.csv"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_tasks(str(tmp_path / "nope.jsonl"))
