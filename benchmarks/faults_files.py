"""Fault probes of category ``files`` (issue 22): the files users download. Registered into
``benchmarks/faults.py``'s list by ``register(h)``.

A file written the way facebookresearch/vicreg's ``main_vicreg.py`` writes it (LARS filter
functions in the optimizer state; ``tests/official/gen_vicreg.py``) must load, continue and export
back with its optimizer; a file whose pickle would run code must be refused in one line with
nothing run; a published name whose server cannot be reached must say where to put the file.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONT = [
    "--dataset",
    "digits",
    "--set",
    "data.limit=32",
    "--set",
    "data.image_size=16",
    "--batch-size",
    "8",
    "--set",
    "train.max_steps=2",
    "--set",
    "train.probe_size=0",
    "--set",
    "train.tensorboard=false",
]


class _Call:
    """Pickles as ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def register(h) -> None:
    """Add the ``files`` probes to ``h.PROBES``."""

    def official_vicreg(ctx, module=None) -> Path | None:
        """``model.pth`` as main_vicreg.py writes it (run as ``__main__``, or imported as ``module``)."""
        out = ctx.tmp / "official"
        gen = str(ROOT / "tests" / "official" / "gen_vicreg.py")
        cmd = (
            [sys.executable, gen]
            if module is None
            else [sys.executable, str(Path(gen).with_name("as_module.py")), module, gen]
        )
        p = subprocess.run([*cmd, "generate", str(out)], capture_output=True, text=True, env=ctx.env(), timeout=600)
        return out / "model.pth" if p.returncode == 0 else None

    @h.probe("files", "ok", "official VICReg model.pth (LARS filter as __main__.exclude_bias_and_norm) -> inspect")
    def _vicreg_inspect(ctx):
        path = official_vicreg(ctx)
        if path is None:
            return h.judge(ctx, h.Proc(1, "", "[probe] generator failed"), "ok")
        p = ctx.cli("inspect", path)
        said = "stand-in   : __main__.exclude_bias_and_norm" in p.out
        return h.judge(ctx, p, "ok", extra_wrong="" if said or p.code else "the stand-in is not reported")

    @h.probe("files", "ok", "official VICReg model.pth (submitit pickling) -> continue with its LARS momentum, export")
    def _vicreg_round_trip(ctx):
        path = official_vicreg(ctx, module="main_vicreg")
        if path is None:
            return h.judge(ctx, h.Proc(1, "", "[probe] generator failed"), "ok")
        run = ctx.tmp / "run"
        p = ctx.cli("continue", path, *CONT, "--set", "optim.restore_state=true", "--out", run)
        if p.code != 0:
            return h.judge(ctx, p, "ok")
        out = ctx.tmp / "back.pth"
        p = ctx.cli("export", run, "--to", "original", "--out", out)
        wrong = ""
        if p.code == 0:
            names = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import pickletools, zipfile; z = zipfile.ZipFile({str(out)!r}); "
                    "d = z.read([n for n in z.namelist() if n.endswith('data.pkl')][0]); "
                    "print(b'main_vicreg' in d and b'exclude_bias_and_norm' in d)",
                ],
                capture_output=True,
                text=True,
            ).stdout.strip()
            from e2mc.models.checkpoints import read_checkpoint

            state = read_checkpoint(out)[0]["optimizer"]["state"]
            if names != "True":
                wrong = "the filter function is not written back as main_vicreg.exclude_bias_and_norm"
            elif len(state) != 69 or not all("mu" in s for s in state.values()):
                wrong = f"the exported optimizer holds {len(state)} momentum buffers, not 69"
        return h.judge(ctx, p, "ok", extra_wrong=wrong)

    def hostile(ctx, payload, name) -> tuple:
        marker = ctx.tmp / "ran"
        path = ctx.tmp / name
        torch.save({"model": {"w": torch.zeros(2)}, "x": payload(f"touch {marker}")}, path)
        return path, marker

    @h.probe("files", "error", "checkpoint whose pickle calls functools.partial(os.system) -> inspect")
    def _partial(ctx):
        path, marker = hostile(ctx, lambda cmd: _Call(functools.partial(os.system, cmd)), "partial.pth")
        p = ctx.cli("inspect", path)
        lost = ["the payload ran"] if marker.exists() else []
        named = "functools.partial" in p.err
        return h.judge(ctx, p, "error", lost, extra_wrong="" if named else "the refused global is not named")

    @h.probe("files", "error", "checkpoint reaching a known filter function's __globals__ -> continue")
    def _nested(ctx):
        from e2mc.models.safepickle import StandIn, _PickleModule

        marker = ctx.tmp / "ran"
        fn = StandIn("main_vicreg", "exclude_bias_and_norm")
        path = ctx.tmp / "nested.pth"
        payload = {"model": {"w": torch.zeros(2)}, "x": _Call(getattr, fn, "__globals__")}
        torch.save(payload, path, pickle_module=_PickleModule)
        p = ctx.cli("continue", path, *CONT, "--out", ctx.tmp / "run")
        lost = ["the payload ran"] if marker.exists() else []
        return h.judge(ctx, p, "error", lost, extra_wrong="" if "getattr" in p.err else "getattr not named")

    @h.probe("files", "error", "published name (vicreg:resnet50-full) with its server unreachable -> inspect")
    def _zoo_offline(ctx):
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = ctx.env(E2MC_ZOO_URL_BASE=f"http://127.0.0.1:{port}", TORCH_HOME=ctx.tmp / "torch")
        p = ctx.cli("inspect", "vicreg:resnet50-full", env=env, timeout=120)
        said = f"127.0.0.1:{port}" in p.err and str(ctx.tmp / "torch") in p.err
        left = [f for f in (ctx.tmp / "torch").rglob("*") if f.is_file() and not f.name.startswith(".")]
        lost = (
            [f"a partial download was left as a complete file: {left[0].name}"]
            if any(not f.name.endswith(".part") for f in left)
            else []
        )
        return h.judge(ctx, p, "error", lost, extra_wrong="" if said else "the URL or the file path is not named")
