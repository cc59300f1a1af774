"""End to end with the teammates' modules: a real e2mc checkpoint, the digits dataset, the CLI."""

import json

import torch

from e2mc.data import datasets
from e2mc.models import checkpoints


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    m, _ = checkpoints.load_model("random:resnet_mini:8-16-32", method="vicreg", head_sizes={"projector": (32, 32)})
    torch.save(
        {
            "format": "e2mc",
            "method": "vicreg",
            "arch": "resnet_mini:8-16-32",
            "cifar_stem": True,
            "head_sizes": {"projector": [32, 32]},
            "model": m.state_dict(),
            "epoch": 1,
            "step": 1,
        },
        path,
    )
    return str(path)


def _cli(capsys, *args):
    from e2mc.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_evaluate_checkpoint_on_digits(tmp_path):
    from e2mc.evaluation.api import evaluate

    ck = _checkpoint(tmp_path / "a.pt", 0)
    settings = {
        "eval.knn.ks": [5, 20],
        "eval.seeds": [0],
        "eval.cache_dir": str(tmp_path / "cache"),
        "eval.device": "cpu",
    }
    res = evaluate(ck, "digits", ("knn", "rankme", "entropy"), settings)
    assert res["meta"]["n_test"] == len(datasets.build_dataset("digits", "test"))
    assert 0.3 < res["knn"]["top1_k20"] <= 1.0  # random conv features on digits are far above chance (0.1)
    assert 1 <= res["rankme"]["projector"] <= 32
    assert len(res["entropy"]["marginals_sample"]) == 4
    assert len(list((tmp_path / "cache").glob("*/progress.json"))) == 2  # train + test, cached once


def test_cli_evaluate_json_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path))
    a, b = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    rc, out, err = _cli(
        capsys, "evaluate", a, "--dataset", "digits", "--protocols", "knn,rankme", "--seeds", "0", "--json"
    )
    assert rc == 0, err
    res = json.loads(out)
    assert set(res["knn"]) == {f"{m}_k{k}" for m in ("top1", "uar") for k in (10, 20, 100, 200)}
    args = ["compare", a, f"two={b}", "--protocols", "knn,rankme", "--seeds", "0", "--out", str(tmp_path / "cmp")]
    rc, out, err = _cli(capsys, *args)  # checkpoint files of no run: no training data to default to
    assert rc == 2 and "a dataset is required here (--dataset" in err and len(err.strip().splitlines()) == 1
    rc, out, err = _cli(capsys, *args, "--dataset", "digits")
    assert rc == 0, err
    assert "| two |" in out and (tmp_path / "cmp" / "report.html").exists()
    rc, out, err = _cli(capsys, "evaluate", str(tmp_path / "missing.pt"))
    assert rc == 2 and "does not exist" in err


def test_a_run_is_evaluated_on_its_own_data_without_dataset(tmp_path, capsys, monkeypatch):
    """`evaluate RUN` used to score a run on digits whatever it was trained on, and say nothing: a
    run folder (or its checkpoint) now defaults to its own training data; the output opens with the
    dataset, its split sizes and where the dataset came from."""
    from tests.conftest import tiny_digits_start

    last = tiny_digits_start(tmp_path)  # a digits run: its config.yaml names the dataset
    for target in (last.parent.parent, last):
        rc, out, err = _cli(capsys, "evaluate", str(target), "--protocols", "rankme")
        assert rc == 0, err
        assert out.startswith("dataset: digits (train 1347, test 450; the run's own training data"), out
