"""Tasks, dataset loading and answer checking, table-driven on real cases."""
import os
from types import SimpleNamespace

import pytest

from data import BOXED_SUFFIX, DataError, gold_answer, load_tasks, read_tasks

from rewards import RewardFn, extract_answer, is_correct

from data import Task, embedded_tasks

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
    ("<code>print(6*7)</code><interpreter>\n42\n</interpreter>\n\n", "7"),  # tool output is not an answer
    ("<interpreter>\n42\n</interpreter>\n\nso \\boxed{42}", "42"),
    ("x <interpreter>\n42 cut off", None),                              # unclosed block: to the end
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
    ("7891 * 16", "126256", False),                                    # arithmetic is not an answer ...
    ("1308 + 5509", "6817", False),
    ("7891 \\times 16", "126256", False),
    ("126256", "126256", True),                                        # ... the number is
    ("-17", "-17", True),
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
    tir = "<think><code>print(12)</code><interpreter>\n12\n</interpreter>\n\n</think>"
    assert gate(tir + " \\boxed{12}", "12") == 1.0                      # tool use inside the thinking
    assert gate(tir + " <code>x</code> \\boxed{12}", "12") == 0.0       # code after </think> (the official gate)
    assert gate(tir + " <interpreter>\n1\n</interpreter> \\boxed{12}", "12") == 0.0


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
    graded, _ = embedded_tasks(n_train=80, n_eval=0, levels=(6, 7, 8, 9))
    assert {t.level for t in graded} == {6, 7, 8, 9}
    for t in train + held + graded:                                     # every answer is exact
        q = t.prompt.split("?")[0]
        if q.startswith("What is "):
            assert str(eval(q[len("What is "):])) == t.answer
    harder, _ = embedded_tasks(n_train=50, n_eval=10, levels=(3, 5))
    assert {t.level for t in harder} == {3, 5}
    with pytest.raises(ValueError, match="distinct problems"):
        embedded_tasks(n_train=100, n_eval=10, levels=(2,))            # only 45 one-digit differences


def test_load_jsonl_with_gsm8k_answers(tmp_path):
    lines = open(os.path.join(FIX, "gsm8k_like.jsonl")).read().splitlines()
    with pytest.raises(DataError, match=r"gsm8k_like.jsonl:4: duplicate prompt \(the same as line 3\)"):
        load_tasks(os.path.join(FIX, "gsm8k_like.jsonl"), "question", "answer")
    (tmp_path / "g.jsonl").write_text("\n".join(lines[:3] + lines[4:]) + "\n\n")     # blank lines are skipped
    tasks = load_tasks(str(tmp_path / "g.jsonl"), "question", "answer", suffix=BOXED_SUFFIX)
    assert [t.answer for t in tasks] == ["72", "10", "3", "1000"]
    assert all(t.prompt.endswith(BOXED_SUFFIX) for t in tasks)


def test_load_csv_and_parquet_with_boxed_solutions(tmp_path):
    tasks = load_tasks(os.path.join(FIX, "math_like.csv"), "problem", "solution")
    assert [t.answer for t in tasks] == ["\\frac{3}{4}", "-3", "2\\sqrt{2}"]
    import pandas as pd
    pd.DataFrame({"prompt": ["What is 2 + 2?", "What is 3 + 3?"], "answer": [4, 6]}).to_parquet(tmp_path / "t.parquet")
    tasks = load_tasks(str(tmp_path / "t.parquet"))
    assert tasks == [Task("What is 2 + 2?", "4"), Task("What is 3 + 3?", "6")]


GOOD = '{"prompt": "What is 1 + 1?", "answer": "2"}\n'


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", "", r"empty.jsonl: no rows: the dataset is empty"),
    ("blank.jsonl", "\n\n", r"blank.jsonl: no rows"),
    ("header_only.csv", "prompt,answer\n", r"header_only.csv: no rows"),
    ("malformed.jsonl", GOOD + '{"prompt": "x", "answer": }\n', r"malformed.jsonl:2: malformed JSON \(Expecting value"),
    ("missing_col.jsonl", GOOD + '{"prompt": "What is 2 + 2?"}\n', r"missing_col.jsonl:2: no column 'answer' \(set --answer-field\)"),
    ("empty_prompt.jsonl", GOOD + '{"prompt": "  ", "answer": "4"}\n', r"empty_prompt.jsonl:2: empty 'prompt'"),
    ("empty_answer.csv", "prompt,answer\nWhat is 1 + 1?,2\nWhat is 2 + 2?,\n", r"empty_answer.csv:3: empty 'answer'"),
    ("null_answer.jsonl", '{"prompt": "What is 2 + 2?", "answer": null}\n', r"null_answer.jsonl:1: empty 'answer'"),
    ("wrong_type.jsonl", GOOD + '{"prompt": {"text": "hi"}, "answer": "4"}\n', r"wrong_type.jsonl:2: 'prompt' is dict"),
    ("list_answer.jsonl", '{"prompt": "What is 2 + 2?", "answer": [4]}\n', r"list_answer.jsonl:1: 'answer' is list"),
    ("not_object.jsonl", GOOD + '["What is 2 + 2?", "4"]\n', r"not_object.jsonl:2: a JSON list, expected an object"),
    ("dupe.jsonl", GOOD + '{"prompt": "What is 3 + 3?", "answer": "6"}\n' + GOOD, r"dupe.jsonl:3: duplicate prompt \(the same as line 1\)"),
    ("dupe.csv", "prompt,answer\nWhat is 1 + 1?,2\nWhat is 1 + 1?,2\n", r"dupe.csv:3: duplicate prompt \(the same as line 2\)"),
    ("extra_cells.csv", "prompt,answer\nWhat is 1, really?,2\n", r"extra_cells.csv:2: 3 cells but the header has 2 columns"),
    ("latin1.jsonl", GOOD.encode() + '{"prompt": "Qu\u00e9?", "answer": "1"}\n'.encode("latin-1"), r"latin1.jsonl:2: not UTF-8"),
    ("array.json", '[{"prompt": "a", "answer": "1"}, {"prompt": "b"}]', r"array.json: item 1: no column 'answer'"),
])
def test_bad_data_names_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        load_tasks(str(path))


def test_held_out_file_may_not_share_a_prompt_with_the_training_data(tmp_path):
    def cfg_for(**kw):       # the fields of train.Config that read_tasks reads
        return SimpleNamespace(**{"eval_dataset": None, "prompt_field": None, "answer_field": None, "n_eval": 32, **kw})
    (tmp_path / "train.jsonl").write_text(GOOD + '{"prompt": "What is 3 + 3?", "answer": "6"}\n')
    (tmp_path / "held.csv").write_text("prompt,answer\nWhat is 5 + 5?,10\nWhat is 3 + 3?,6\n")
    cfg = cfg_for(dataset=str(tmp_path / "train.jsonl"), eval_dataset=str(tmp_path / "held.csv"))
    with pytest.raises(DataError, match=r"held.csv: 1 of its 2 held-out prompts are also training prompts of "
                                        r"--dataset .*train.jsonl \(first: 'What is 3 \+ 3\?'\); remove them"):
        read_tasks(cfg)
    (tmp_path / "held.csv").write_text("prompt,answer\nWhat is 5 + 5?,10\nWhat is 3 + 4?,7\n")
    train, held = read_tasks(cfg)
    assert [t.prompt for t in train] == ["What is 1 + 1?", "What is 3 + 3?"]
    assert [(t.prompt, t.answer) for t in held] == [("What is 5 + 5?", "10"), ("What is 3 + 4?", "7")]
    assert read_tasks(cfg_for(dataset=str(tmp_path / "train.jsonl")))[1] == []      # no --eval-dataset: none


def test_bad_parquet_and_unreadable_files(tmp_path):
    import pandas as pd
    pd.DataFrame({"prompt": ["What is 2 + 2?", ""], "answer": ["4", "6"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t.parquet: row 1: empty 'prompt'"):
        load_tasks(str(tmp_path / "t.parquet"))
    pd.DataFrame({"prompt": [], "answer": []}).to_parquet(tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none.parquet: no rows"):
        load_tasks(str(tmp_path / "none.parquet"))
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"garbage.parquet: not a readable Parquet file"):
        load_tasks(str(tmp_path / "garbage.parquet"))
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        load_tasks(str(tmp_path / "nope.jsonl"))
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(DataError, match=r"folder.jsonl: cannot read it \(Is a directory\)"):
        load_tasks(str(tmp_path / "folder.jsonl"))
    with pytest.raises(DataError, match=r"missing_answer.jsonl:3: empty 'answer'"):
        load_tasks(os.path.join(FIX, "missing_answer.jsonl"))
    with pytest.raises(DataError, match=r"missing_answer.jsonl:1: no column 'question' \(set --prompt-field\)"):
        load_tasks(os.path.join(FIX, "missing_answer.jsonl"), prompt_field="question")
