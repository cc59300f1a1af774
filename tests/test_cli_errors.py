"""Errors as a user meets them: every bad CLI input ends in ONE line on stderr that names the
problem and the fix, no traceback, exit code 2. In-process ``e2mc.cli.main`` with tiny runs."""

import os
import shutil

import pytest
import torch

from e2mc.cli import main

TINY = [
    "data.image_size=8",
    "data.limit=128",
    "optim.batch_size=64",
    "train.probe_size=0",
    "train.tensorboard=false",
    "train.max_steps=1",
    "train.log_every=1",
]
SETS = [a for o in TINY for a in ("--set", o)]


def cli(*argv):
    """``(exit code, stdout, stderr)`` of ``e2mc ARGV`` run in this process."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def fails(*argv, must=()):
    """Run ``e2mc ARGV``; assert a one-line user error naming every fragment in ``must``."""
    code, _, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(lines) == 1, err
    for frag in must:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny VICReg and a tiny SimSiam pre-training run (one step each), made once."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    for method, sizes in (("vicreg", "{projector: [32, 32]}"), ("simsiam", "{proj_dim: 32}")):
        code, _, err = cli(
            "pretrain",
            *SETS,
            "--method",
            method,
            "--set",
            "model.init=random:resnet_mini:8-8-8",
            "--set",
            f"model.head_sizes={sizes}",
            "--out",
            root / method,
        )
        assert code == 0, err
    (root / "empty").mkdir()
    (root / "notes.pt").write_text("not a checkpoint\n")
    yield root
    torch.set_num_threads(old)


def ckpt(runs, method="vicreg"):
    return runs / method / "checkpoints" / "last.pt"


def test_usage_errors_are_one_line_pointing_at_help():
    fails("pretrin", must=("invalid choice", "'pretrain'", "e2mc --help"))
    for argv, frag in (
        (["evaluate"], "checkpoint"),
        (["compare"], "arms"),
        (["report"], "inputs"),
        (["inspect"], "path"),
        (["export", "a.pt"], "--out"),
        (["export", "a.pt", "--out", "b", "--to", "onnx"], "'safetensors'"),
    ):
        fails(*argv, must=("required" if frag != "'safetensors'" else "invalid choice", frag, f"e2mc {argv[0]} --help"))
    fails("evaluate", "a.pt", "--seeds", "a,b", must=("comma-separated integers",))


def test_missing_checkpoint_and_wrong_paths(runs, tmp_path):
    fails("continue", must=("needs a checkpoint", "e2mc continue CHECKPOINT"))
    missing = tmp_path / "nope.pth"
    fails("continue", missing, "--out", tmp_path / "o", must=(str(missing), "not found", ".pth"))
    for cmd in ("inspect", "export"):
        extra = ["--out", tmp_path / "x.pt"] if cmd == "export" else []
        fails(cmd, missing, *extra, must=(str(missing), "not found", "check the path"))
    fails("evaluate", missing, must=(str(missing), "does not exist", "run folder"))
    fails("compare", ckpt(runs), missing, must=(str(missing), "run folder"))
    fails("report", tmp_path / "nope.json", "--out", tmp_path / "r", must=("does not exist", "e2mc compare --out"))
    fails("inspect", runs / "notes.pt", must=("not a PyTorch/safetensors checkpoint", "pass a .pth/.pt/.safetensors"))
    fails("inspect", runs / "empty", must=("folder without checkpoints/last.pt", "run folder"))
    fails("report", ckpt(runs), "--out", tmp_path / "r", must=("neither a comparison .json", "e2mc compare"))
    fails("pretrain", "--config", missing.with_suffix(".yaml"), must=("no such file", "--recipe"))
    fails("pretrain", "--config", ckpt(runs), must=("not a YAML text file", "e2mc continue CHECKPOINT"))


def test_run_folder_is_accepted_as_a_checkpoint(runs, capsys):
    code, out, err = cli("inspect", runs / "vicreg")
    assert code == 0 and "format     : e2mc" in out, err


def test_wrong_recipe_and_misspelled_key(runs, tmp_path):
    for cmd in (["pretrain"], ["continue", ckpt(runs)]):
        fails(
            *cmd,
            "--recipe",
            "digits_vicreg_pretrian",
            "--out",
            tmp_path / "o",
            must=("unknown recipe", "Did you mean 'digits_vicreg_pretrain'", "e2mc recipes"),
        )
        fails(
            *cmd,
            *SETS,
            "--set",
            "optim.lrr=1",
            "--out",
            tmp_path / "o",
            must=("unknown config key 'optim.lrr'", "Did you mean 'optim.lr'"),
        )
    fails("recipes", "nosuch", must=("unknown recipe", "Available:"))
    fails("pretrain", *SETS, "--set", "optim.lr=abc", must=("optim.lr", "float"))
    fails("pretrain", *SETS, "--batch-size", "0", must=("optim.batch_size=0", ">= 1"))
    fails(
        "pretrain",
        "--recipe",
        "digits_vicreg_pretrain",
        "--method",
        "swav",
        "--out",
        tmp_path / "o",
        must=("unknown head size", "--set model.head_sizes={}"),
    )
    # a refused run leaves no run files behind: the same --out is free for the fixed command
    fails("pretrain", *SETS, "--dataset", tmp_path / "nodata", "--out", tmp_path / "o", must=("does not exist",))


def test_checkpoint_of_another_method(runs, tmp_path):
    fails(
        "continue",
        ckpt(runs, "simsiam"),
        "--method",
        "swav",
        *SETS,
        "--out",
        tmp_path / "o",
        must=("holds simsiam heads", "'swav'", "--method simsiam", "--fresh-heads"),
    )
    fails("inspect", ckpt(runs, "simsiam"), "--method", "vicreg", must=("--method simsiam", "--fresh-heads"))
    # the two fixes the message offers both work
    off = ("--set", "train.guard.action=off")  # 1 step at LARS 0.2 collapses the tiny net (guard score 0.17)
    code, _, err = cli("continue", ckpt(runs, "simsiam"), *SETS, *off, "--out", tmp_path / "auto")
    assert code == 0, err  # no --method: the checkpoint's own (simsiam)
    code, _, err = cli(
        "continue",
        ckpt(runs, "simsiam"),
        "--method",
        "swav",
        "--fresh-heads",
        *SETS,
        "--set",
        "model.head_sizes={hidden: 16, out: 8, prototypes: 10}",
        "--out",
        tmp_path / "fresh",
    )
    assert code == 0, err
    import yaml

    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["method"]["name"] == "simsiam"


def test_output_folder_that_holds_another_run(runs, tmp_path):
    for cmd in (["pretrain", *SETS], ["continue", ckpt(runs), *SETS]):
        fails(
            *cmd,
            "--out",
            runs / "vicreg",
            must=("already holds a run", "--resume", "out.overwrite=true", "another --out"),
        )
    fails("export", ckpt(runs), "--out", runs, must=("is a folder", "give a file path"))
    fails("compare", ckpt(runs), "--out", runs / "notes.pt", must=("is a file", "give a folder"))
    fails("report", runs / "vicreg", "--out", runs / "notes.pt", must=("is a file", "give a folder"))


def test_dataset_folder_missing_or_empty(runs, tmp_path):
    for ds, frag in ((tmp_path / "no_such_data", "does not exist"), (runs / "empty", "No images or recordings found")):
        fails("pretrain", *SETS, "--dataset", ds, "--out", tmp_path / "o", must=(frag, str(ds), "Expected <root>/"))
        fails("evaluate", ckpt(runs), "--dataset", ds, "--protocols", "knn", "--seeds", "0", must=(frag,))
    fails("pretrain", *SETS, "--dataset", "digitz", "--out", tmp_path / "o", must=("Unknown dataset", "'digits'"))


def test_resume_without_a_run(runs, tmp_path):
    empty = tmp_path / "never_ran"
    fails("pretrain", "--resume", "--out", empty, must=("holds no run", "check --out", "drop --resume"))
    fails("continue", ckpt(runs), *SETS, "--resume", "--out", empty, must=("holds no run", "drop --resume"))
    fails("pretrain", *SETS, "--resume", "--out", empty, must=("holds no run",))  # the trainer's own check
    fails("pretrain", "--resume", must=("needs the run folder", "--out RUN_DIR"))
    fails("continue", "--resume", "--out", runs / "vicreg", must=("is a pretrain run", "e2mc pretrain --out"))
    assert not empty.exists()


def test_resume_says_where_it_resumed(runs, tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(runs / "vicreg", run)  # stopped after step 1 of 2 (max_steps=1)
    code, out, err = cli("pretrain", "--resume", "--out", run, "--set", "train.max_steps=2")
    assert code == 0, err
    assert f"resumed from {run / 'checkpoints' / 'last.pt'}: epoch 0, step 1" in err
    from e2mc.train.run import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2


def test_auto_resume_starts_then_resumes(tmp_path):
    run = tmp_path / "requeued"
    argv = ("pretrain", "--recipe", "digits_vicreg_pretrain", *SETS, "--out", run, "--auto-resume")
    code, _, err = cli(*argv)  # first launch: nothing to resume, the run starts
    assert code == 0, err
    assert "resumed from" not in err
    code, _, err = cli(*argv, "--set", "train.max_steps=2")  # requeued: same command resumes
    assert code == 0, err
    assert "resumed from" in err and "step 1" in err
    fails("pretrain", "--auto-resume", must=("needs the run folder",))


def test_auto_resume_restarts_only_its_own_run_killed_before_a_checkpoint(tmp_path):
    run = tmp_path / "requeued"
    argv = ("pretrain", "--recipe", "digits_vicreg_pretrain", *SETS, "--out", run, "--auto-resume")
    assert cli(*argv)[0] == 0
    shutil.rmtree(run / "checkpoints")  # as if killed before its first checkpoint: config.yaml, no .pt
    before = (run / "config.yaml").read_text()
    code, _, err = cli(*argv, "--set", "optim.lr=0.123")  # another run's settings: refused, nothing deleted
    assert code == 2 and "is not this run's" in err and "nothing was changed" in err, err
    assert (run / "config.yaml").read_text() == before
    code, _, err = cli(*argv)  # the same command again: the run starts over
    assert code == 0 and "starting it again" in err, err
    assert (run / "checkpoints" / "last.pt").is_file()
    kept = list((run / "stopped").glob("*/config.yaml"))  # the stopped attempt's files, set aside
    assert len(kept) == 1 and kept[0].read_text() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device(runs):
    msg = "CUDA is not available"
    fails("evaluate", ckpt(runs), "--device", "cuda", "--protocols", "knn", "--seeds", "0", must=(msg, "--device cpu"))
    fails("pretrain", *SETS, "--device", "cuda", must=(msg, "--device cpu"))


def test_broken_pipe_is_quiet(runs, monkeypatch):
    import e2mc.commands.inspect as insp

    def boom(args):
        raise BrokenPipeError

    monkeypatch.setattr(insp, "run_inspect", boom)
    code, _, err = cli("inspect", ckpt(runs))
    assert code == 0 and err == ""


def test_export_never_replaces_an_existing_model_unasked(runs, tmp_path):
    """The --out of an export may be the very file or transformers folder a run started from: it is
    refused, untouched, unless --overwrite says to replace it."""
    existing = tmp_path / "start.pth"
    existing.write_bytes(b"the user's downloaded model")
    folder = tmp_path / "hf_start"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for out in (existing, folder):
        fails("export", ckpt(runs), "--out", out, must=(f"--out {out} already exists", "--overwrite"))
    assert existing.read_bytes() == b"the user's downloaded model" and os.listdir(folder) == ["config.json"]
    code, said, err = cli("export", ckpt(runs), "--out", existing, "--overwrite")
    assert code == 0 and existing.read_bytes() != b"the user's downloaded model", err
