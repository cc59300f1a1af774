"""Checkpoints as the official repositories' own scripts write them, generated once per session.

The generators (``gen_*.py``, each documenting how it was checked against the official code) run
as subprocess scripts, so their functions pickle as ``__main__.<name>``; ``as_module.py`` runs
``gen_vicreg.py`` imported as ``main_vicreg`` (the submitit case). ResNet-18 at width 64 (the
smallest ResNet e2mc reads): the files are 45 MB (weights) and 90 MB (weights + momentum).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

collect_ignore = ["check"]  # scripts run by hand against official clones (not importable without them)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def generator_cmd(gen: str, *args: str, module: str | None = None) -> list[str]:
    """The command line running ``gen`` as ``__main__``, or imported as ``module``."""
    script = str(HERE / gen)
    if module:
        return [sys.executable, str(HERE / "as_module.py"), module, script, *args]
    return [sys.executable, script, *args]


def run_generator(gen: str, *args: str, module: str | None = None) -> str:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(generator_cmd(gen, *args, module=module), capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{gen} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


@dataclass(frozen=True)
class Official:
    """One generated official file and what the tests expect of it."""

    path: Path
    tensors: Path  # the generator's own tensors (plain dict), DDP names
    format: str
    method: str | None
    gen: str
    module: str | None = None  # official module name the generator ran under (None: __main__)

    def expected(self) -> dict:
        return torch.load(self.tensors, weights_only=True)


@pytest.fixture(scope="session")
def official(tmp_path_factory) -> dict[str, Official]:
    """Every generated file by case name (generators run in parallel, one torch thread each)."""
    root = tmp_path_factory.mktemp("official")
    jobs = {
        "vicreg_main": ("gen_vicreg.py", None),
        "vicreg_module": ("gen_vicreg.py", "main_vicreg"),
        "swav": ("gen_swav.py", None),
        "simsiam": ("gen_simsiam.py", None),
        "byol": ("gen_byol.py", None),
    }
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    procs = {
        name: subprocess.Popen(
            generator_cmd(gen, "generate", str(root / name), module=module),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for name, (gen, module) in jobs.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, f"generator for {name} failed:\n{err[-3000:]}"
    cases = {}
    for variant, module in (("main", None), ("module", "main_vicreg")):
        d = root / f"vicreg_{variant}"
        cases[f"vicreg_model_{variant}"] = Official(
            d / "model.pth", d / "model.tensors.pt", "vicreg", "vicreg", "gen_vicreg.py", module
        )
        cases[f"vicreg_resnet50_{variant}"] = Official(
            d / "resnet50.pth", d / "model.tensors.pt", "torchvision", None, "gen_vicreg.py", module
        )
    d = root / "swav"
    cases["swav_checkpoint"] = Official(
        d / "checkpoint.pth.tar", d / "checkpoint.tensors.pt", "swav", "swav", "gen_swav.py"
    )
    cases["swav_release"] = Official(
        d / "swav_800ep_pretrain.pth.tar", d / "checkpoint.tensors.pt", "swav", "swav", "gen_swav.py"
    )
    d = root / "simsiam"
    cases["simsiam_checkpoint"] = Official(
        d / "checkpoint_0099.pth.tar", d / "checkpoint.tensors.pt", "simsiam", "simsiam", "gen_simsiam.py"
    )
    d = root / "byol"
    cases["byol_checkpoint"] = Official(
        d / "byol-cifar10-0-ep=999.ckpt", d / "byol.tensors.pt", "byol", "byol", "gen_byol.py"
    )
    return cases


def official_name(case: str, key: str) -> str | None:
    """The DDP-named generator tensor that holds SSLModel ``key`` (None: the file has no such tensor)."""
    head, _, rest = key.partition(".")
    if case.startswith("vicreg_model"):
        return f"module.{key}"
    if case.startswith("vicreg_resnet50"):
        return f"module.backbone.{rest}" if head == "backbone" else None
    if case.startswith("swav"):
        return {"backbone": f"module.{rest}", "projector": f"module.projection_head.{rest}"}.get(head, f"module.{key}")
    if case.startswith("byol"):  # solo-learn: the momentum network is e2mc's target slot
        return f"momentum_{rest}" if head == "target" else key
    if case.startswith("simsiam"):
        return {"backbone": "module.encoder.", "projector": "module.encoder.fc.", "predictor": "module.predictor."}[
            head
        ] + rest
    raise KeyError(case)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A tiny image folder (2 classes x 8 random 32 px PNGs) for short continue runs."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            arr = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root
