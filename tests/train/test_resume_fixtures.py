"""Checkpoints written by e2mc before the methods refactor resume bit-identically.

The fixtures (``fixtures/<name>/``) and their expected results were written by
``fixtures/make_resume_fixtures.py`` with the code of the commit that added them: a SwAV run with
an active queue (and frozen prototypes across the resume) and a VICReg + E2MC run, each stopped at
step 3, and the sha256 of every weight, optimiser tensor and queue tensor after 3 more steps.
"""

import json
import shutil

import pytest
import torch

from tests.train.fixtures.make_resume_fixtures import HERE, RUNS, resume


@pytest.mark.parametrize("name", sorted(RUNS))
def test_old_checkpoint_resumes_bit_identically(tmp_path, name):
    expected = json.loads((HERE / name / "expected.json").read_text())
    if torch.__version__.split("+")[0] != expected.pop("torch"):
        pytest.skip("the expected hashes were made with another torch version (kernels may differ)")
    run = tmp_path / "run"
    shutil.copytree(HERE / name, run, ignore=shutil.ignore_patterns("expected.json"))
    got = resume(name, run)
    assert got["step"] == expected["step"] and got["run_step"] == expected["run_step"]
    for part in ("model", "optimizer", "queue"):
        assert sorted(got[part]) == sorted(expected[part]), part
        differ = [k for k in expected[part] if got[part][k] != expected[part][k]]
        assert not differ, f"{part}: {differ}"
    if name.startswith("swav"):
        assert expected["queue"], "the SwAV fixture must hold an active queue"
