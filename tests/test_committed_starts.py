"""The starts committed under ``benchmarks/starts`` (what the reproduction's tables continue) are intact:
the file is the one ``start.json`` describes (sha256, size) and, read by its path alone (the file's
own metadata names its method), loads as that method with every head from the file, none built
fresh (before 2026-12-06 the DINO start loaded as a bare backbone: evaluation had no projector row)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2mc.models.checkpoints import load_model

STARTS = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "benchmarks" / "starts").glob("*/start.json"))


def test_there_are_committed_starts():
    assert {p.name for p in STARTS} >= {"cifar10_vicreg_r18", "cifar10_dino_vit"}


@pytest.mark.parametrize("start", STARTS, ids=lambda p: p.name)
def test_a_committed_start_is_the_file_its_record_describes(start):
    meta = json.loads((start / "start.json").read_text())
    data = (start / "model.safetensors").read_bytes()
    assert len(data) == meta["size_bytes"], "a Git LFS pointer or a truncated file?"
    assert hashlib.sha256(data).hexdigest() == meta["sha256"]
    model, report = load_model(str(start / "model.safetensors"))  # by path alone, as `e2mc evaluate` reads it
    assert model.method == meta["method"]
    assert not report.heads_built, report.heads_built
    state, back = load_file(start / "model.safetensors"), model.state_dict()
    assert set(back) == set(state)
    assert all(torch.equal(back[k].to(v.dtype), v) for k, v in state.items())  # loaded as saved (fp16)
