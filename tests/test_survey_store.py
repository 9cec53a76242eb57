"""Survey storage: answers committed at once, no duplicates, several writer processes at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from conftest import PYTHON, REPO
from echosynth.evaluate.survey.store import SurveyStore, new_code, normalize_code

PAIRS = {f"p{i:02d}": (f"a{i}.png", f"b{i}.png") for i in range(1, 21)}


# Each writer is a separate Python process (not a fork of pytest), as several app servers would be.
WRITER = r"""
import json, sys
from echosynth.evaluate.survey.store import SurveyStore
db, mode, arg, worker = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
pairs = {f"p{i:02d}": (f"a{i}.png", f"b{i}.png") for i in range(1, 21)}
store = SurveyStore(db, "s")
stored = ignored = 0
if mode == "new":  # create participants and answer every pair twice (a double-click)
    codes = [store.create_participant(list(pairs), pairs).code for _ in range(int(arg))]
else:  # race on one participant's pairs
    codes = [arg]
for code in codes:
    p = store.participant(code)
    for i, pid in enumerate(p.pair_order):
        for _ in range(2 if mode == "new" else 1):
            ok = store.record_answer(code, pid, "left" if (i + worker) % 2 else "right", confidence=2, response_ms=i)
            stored += ok
            ignored += not ok
print(json.dumps([stored, ignored]))
"""


def _run_writers(db, mode: str, arg: str, n: int) -> list[tuple[int, int]]:
    procs = [subprocess.Popen([PYTHON, "-c", WRITER, str(REPO), str(db), mode, arg, str(w)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(n)]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-2000:]
        out.append(tuple(json.loads(stdout)))
    return out


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(tmp_path):
    db = tmp_path / "responses.sqlite"
    SurveyStore(db, "s")
    n_proc, n_part = 4, 3
    results = _run_writers(db, "new", str(n_part), n_proc)
    assert results == [(n_part * len(PAIRS), n_part * len(PAIRS))] * n_proc
    frames = SurveyStore(db).frames()
    assert len(frames["participants"]) == n_proc * n_part
    assert len(frames["answers"]) == n_proc * n_part * len(PAIRS)
    assert not frames["answers"].duplicated(["code", "pair_id"]).any()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_many_processes_race_on_one_participant(tmp_path):
    # Every process answers the SAME participant's pairs (e.g. two open tabs): first answer wins.
    db = tmp_path / "r.sqlite"
    store = SurveyStore(db, "s")
    code = store.create_participant(list(PAIRS), PAIRS).code
    results = _run_writers(db, "race", code, 4)
    assert sum(r[0] for r in results) == len(PAIRS)
    assert sum(r[1] for r in results) == 3 * len(PAIRS)
    answers = store.frames()["answers"]
    assert len(answers) == len(PAIRS) and set(answers["pair_id"]) == set(PAIRS)


def test_answer_survives_reopen_and_records_sides(tmp_path):
    store = SurveyStore(tmp_path / "r.sqlite", "s")
    p = store.create_participant(list(PAIRS), PAIRS)
    assert sorted(p.pair_order) == sorted(PAIRS)
    for pid, (left, right) in p.sides.items():
        assert {left, right} == set(PAIRS[pid])
    first = p.pair_order[0]
    assert store.record_answer(p.code, first, "right", confidence=None, response_ms=1234)
    assert not store.record_answer(p.code, first, "left")  # a repeat never overwrites
    reopened = SurveyStore(tmp_path / "r.sqlite")  # e.g. after a server restart
    assert reopened.participant(p.code) == p
    row = reopened.frames()["answers"].iloc[0]
    assert (row["choice"], row["chosen_image"], row["response_ms"]) == ("right", p.sides[first][1], 1234)
    with pytest.raises(ValueError):
        store.record_answer(p.code, "nope", "left")
    with pytest.raises(KeyError):
        store.record_answer("AAAA-AAAA-AAAA", first, "left")


def test_questions_once_and_export(tmp_path):
    store = SurveyStore(tmp_path / "r.sqlite", "s")
    code = store.create_participant(list(PAIRS), PAIRS).code
    assert store.save_questions(code, "before", {"occupation": "Specialist", "years_experience": 3})
    assert not store.save_questions(code, "before", {"occupation": "Other"})
    assert store.questions(code, "before") == {"occupation": "Specialist", "years_experience": "3"}
    assert store.participant(code).before_at is not None and store.participant(code).after_at is None
    paths = store.export_csv(tmp_path / "csv")
    assert sorted(paths) == ["answers", "participants", "questions"]
    assert "Specialist" in paths["questions"].read_text()


def test_codes_are_random_and_normalised():
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000
    code = next(iter(codes))
    assert normalize_code(code.lower().replace("-", " ")) == code
    assert normalize_code("abc") == "" and normalize_code("0000-0000-0000") == ""
