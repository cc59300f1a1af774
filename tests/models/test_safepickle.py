"""Issue 22 item 1: released files that name harmless globals load (as inert stand-ins or data-only
values, listed in the report), and anything else is refused with nothing run.

The harmless files are written the way training scripts write them: ``torch.save`` in a child
process, the filter function defined in the script run as ``__main__`` or in a module imported
under its own name (a submitit run). The hostile ones carry the classic tricks; a sentinel file
and a sentinel module prove that nothing ran and nothing was imported."""

import argparse
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from e2mc.cli import main
from e2mc.errors import CheckpointError
from e2mc.models import safepickle
from e2mc.models.checkpoints import _file_globals, load_model, read_checkpoint

WRITER = textwrap.dedent(
    """
    import argparse, collections, pathlib, sys, types
    import numpy as np, torch

    def exclude_bias_and_norm(p):
        return p.ndim == 1

    if sys.argv[2] != "__main__":  # the script imported as a module (submitit pickles this name)
        mod = types.ModuleType(sys.argv[2])
        exclude_bias_and_norm.__module__ = sys.argv[2]
        mod.exclude_bias_and_norm = exclude_bias_and_norm
        sys.modules[sys.argv[2]] = mod

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for g in opt.param_groups:
        g["weight_decay_filter"] = g["lars_adaptation_filter"] = exclude_bias_and_norm
    net(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    torch.save(
        {
            "epoch": 7,
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "args": argparse.Namespace(arch="resnet50", lr=0.3, dump=pathlib.PurePosixPath("/ckpt")),
            "best": np.float64(0.25),
            "count": np.int64(12),
            "dtype": np.dtype("float32"),
            "array": np.arange(6, dtype=np.float32).reshape(2, 3),
            "path": pathlib.Path("/data/run"),
            "win": pathlib.PureWindowsPath("C:/data/run"),
            "hist": collections.defaultdict(list, {"loss": [1.0, 0.5]}),
            "recent": collections.deque([1, 2, 3], maxlen=5),
        },
        sys.argv[1],
    )
    """
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{module name: path} of files written by a training script (run as __main__ / imported)."""
    tmp = tmp_path_factory.mktemp("written")
    script = tmp / "train_script.py"
    script.write_text(WRITER)
    out = {}
    for module in ("__main__", "main_vicreg"):
        path = tmp / f"{module}.pth"
        subprocess.run([sys.executable, str(script), str(path), module], check=True, timeout=300)
        out[module] = path
    return out


@pytest.mark.parametrize("module", ["__main__", "main_vicreg"])
def test_harmless_globals_load_with_stand_ins_listed(written, module):
    path = written[module]
    assert f"{module}.exclude_bias_and_norm" in _file_globals(path)  # what the official files hold
    with pytest.raises(Exception, match="Weights only load failed"):  # noqa: B017 (torch alone refuses it)
        torch.load(path, weights_only=True)
    used: list = []
    obj, meta = read_checkpoint(path, used)
    assert meta is None
    fn = obj["optimizer"]["param_groups"][0]["weight_decay_filter"]
    assert isinstance(fn, safepickle.StandIn) and str(fn) == f"{module}.exclude_bias_and_norm"
    assert fn == obj["optimizer"]["param_groups"][0]["lars_adaptation_filter"]
    with pytest.raises(CheckpointError, match="inert stand-in"):
        fn(torch.zeros(3))
    assert f"{module}.exclude_bias_and_norm (inert stand-in, never called)" in used
    assert any(u.startswith("argparse.Namespace") for u in used)
    assert obj["args"] == argparse.Namespace(arch="resnet50", lr=0.3, dump=pathlib.PurePosixPath("/ckpt"))
    assert obj["best"] == 0.25 and obj["best"].dtype == np.float64 and obj["count"] == 12
    assert obj["dtype"] == np.float32
    np.testing.assert_array_equal(obj["array"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert obj["path"] == pathlib.PurePosixPath("/data/run") and not hasattr(obj["path"], "exists")
    assert obj["win"] == pathlib.PureWindowsPath("C:/data/run")
    assert obj["hist"]["loss"] == [1.0, 0.5] and list(obj["recent"]) == [1, 2, 3]
    assert len(obj["optimizer"]["state"]) == 4 and all(
        "momentum_buffer" in s for s in obj["optimizer"]["state"].values()
    )


def test_stand_ins_pickle_back_as_the_same_global(written, tmp_path):
    obj, _ = read_checkpoint(written["main_vicreg"])
    out = tmp_path / "again.pth"
    safepickle.save(obj, out)
    assert "main_vicreg.exclude_bias_and_norm" in _file_globals(out)
    # the writer's own process resolves the reference to its own function again
    check = textwrap.dedent(
        f"""
        import sys, types, torch
        mod = types.ModuleType("main_vicreg")
        def exclude_bias_and_norm(p):
            return p.ndim == 1
        exclude_bias_and_norm.__module__ = "main_vicreg"
        mod.exclude_bias_and_norm = exclude_bias_and_norm
        sys.modules["main_vicreg"] = mod
        ck = torch.load({str(out)!r}, weights_only=False)
        assert ck["optimizer"]["param_groups"][0]["weight_decay_filter"] is exclude_bias_and_norm
        net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        opt.load_state_dict(ck["optimizer"])
        net.load_state_dict(ck["model"])
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    plain = safepickle.to_plain(obj["optimizer"])
    assert plain["param_groups"][0]["weight_decay_filter"] == {"__e2mc_global__": "main_vicreg.exclude_bias_and_norm"}
    assert safepickle.from_plain(plain)["param_groups"][0]["weight_decay_filter"] == safepickle.StandIn(
        "main_vicreg", "exclude_bias_and_norm"
    )


def test_report_and_inspect_list_the_stand_ins(tmp_path, capsys):
    """A VICReg-layout file written by export with a stored optimizer holding a filter function."""
    from e2mc.models.export import export_model

    model, report = load_model("random:resnet_mini", method="vicreg")
    fn = safepickle.StandIn("__main__", "exclude_bias_and_norm")
    n = len(list(model.parameters()))
    opt = {"state": {}, "param_groups": [{"lr": 0.0, "params": list(range(n)), "weight_decay_filter": fn}]}
    path = export_model(model, report, tmp_path / "model.pth", format="vicreg", optimizer_state=opt)
    assert "__main__.exclude_bias_and_norm" in _file_globals(path)
    again, rep = load_model(path)
    assert rep.format == "vicreg" and rep.optimizer_state["param_groups"][0]["weight_decay_filter"] == fn
    assert rep.stand_ins == ["__main__.exclude_bias_and_norm (inert stand-in, never called)"]
    assert rep.to_dict()["stand_ins"] == rep.stand_ins
    assert main(["inspect", str(path)]) == 0
    assert "stand-in   : __main__.exclude_bias_and_norm (inert stand-in, never called)" in capsys.readouterr().out


# --- hostile files -------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``fn(*args)``: the ``__reduce__`` trick."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _hostile(tmp, marker):
    """name -> path of torch files whose loading would run code (touch ``marker``)."""
    import builtins
    import functools

    cmd = f"touch {marker}"
    stand_in = safepickle.StandIn("main_vicreg", "exclude_bias_and_norm")
    payloads = {
        "os.system": _Reduce(os.system, cmd),
        "builtins.eval": _Reduce(builtins.eval, f"__import__('os').system({cmd!r})"),
        "builtins.exec": _Reduce(builtins.exec, f"import os; os.system({cmd!r})"),
        "subprocess.call": _Reduce(subprocess.call, ["touch", str(marker)]),
        "functools.partial": _Reduce(functools.partial(os.system, cmd)),
        # a known-inert name, reached through getattr to its function's globals
        "getattr on a stand-in": _Reduce(builtins.getattr, stand_in, "__globals__"),
        # a dotted name (pickle protocol 4 resolves it attribute by attribute)
        "dotted global": safepickle.StandIn("main_vicreg", "exclude_bias_and_norm.__globals__"),
        # the stand-in itself called while loading
        "calling a stand-in": _Reduce(stand_in, cmd),
        # an inert container whose factory is code
        "defaultdict of os.system": _Reduce(__import__("collections").defaultdict, os.system),
        # a numpy object scalar wrapping a call
        "numpy object scalar": _Reduce(np.array, [_Reduce(os.system, cmd)], object),
    }
    out = {}
    for name, payload in payloads.items():
        path = tmp / (name.replace(" ", "_").replace(".", "_") + ".pth")
        torch.save({"model": {"w": torch.zeros(2)}, "x": payload}, path, pickle_module=safepickle._PickleModule)
        out[name] = path
    return out


HOSTILE = [
    "os.system",
    "builtins.eval",
    "builtins.exec",
    "subprocess.call",
    "functools.partial",
    "getattr on a stand-in",
    "dotted global",
    "calling a stand-in",
    "defaultdict of os.system",
    "numpy object scalar",
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    marker = tmp / "ran"
    return _hostile(tmp, marker), marker


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_files_are_refused_and_nothing_runs(hostile, name):
    files, marker = hostile
    with pytest.raises(CheckpointError) as info:
        load_model(files[name])
    msg = str(info.value)
    assert "\n" not in msg and "weights_only" not in msg, msg
    assert "code" in msg, msg  # says why: it would run code (naming the globals) or calls a function
    assert not marker.exists()


def test_refusal_names_the_globals(hostile):
    with pytest.raises(CheckpointError, match=r"posix\.system|os\.system"):
        load_model(hostile[0]["os.system"])
    with pytest.raises(CheckpointError, match=r"functools\.partial"):
        load_model(hostile[0]["functools.partial"])
    with pytest.raises(CheckpointError, match=r"exclude_bias_and_norm\.__globals__"):
        load_model(hostile[0]["dotted global"])


def test_a_stand_in_never_imports_its_module(tmp_path, monkeypatch):
    """The module a filter function lives in is never imported (it could run code at import)."""
    marker = tmp_path / "imported"
    (tmp_path / "sentinel_train.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "ckpt.pth"
    net = torch.nn.Linear(2, 2)
    fn = safepickle.StandIn("sentinel_train", "exclude_bias_and_norm")
    safepickle.save({"model": net.state_dict(), "optimizer": {"param_groups": [{"f": fn}]}}, path)
    used: list = []
    obj, _ = read_checkpoint(path, used)
    assert obj["optimizer"]["param_groups"][0]["f"] == fn
    assert used == ["sentinel_train.exclude_bias_and_norm (inert stand-in, never called)"]
    assert not marker.exists() and "sentinel_train" not in sys.modules


def test_plain_numpy_values_survive_a_weights_only_round_trip(tmp_path):
    """A source optimiser's numpy learning rate (SwAV's) kept in an e2mc run checkpoint: written
    as plain data (so ``--resume``'s weights-only load reads it) and given back with its dtype."""
    import numpy as np

    groups = [{"lr": np.float64(1 / 3), "steps": np.int64(7), "betas": np.array([0.9, 0.999], np.float32), "x": 1.5}]
    path = tmp_path / "groups.pt"
    torch.save({"param_groups": safepickle.to_plain(groups)}, path)
    back = safepickle.from_plain(torch.load(path, weights_only=True)["param_groups"])
    assert type(back[0]["lr"]) is np.float64 and back[0]["lr"] == np.float64(1 / 3)
    assert type(back[0]["steps"]) is np.int64 and back[0]["steps"] == 7
    assert back[0]["betas"].dtype == np.float32 and back[0]["betas"].tolist() == groups[0]["betas"].tolist()
    assert back[0]["x"] == 1.5
