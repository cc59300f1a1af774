"""Fault probes of category ``world`` (issue 28): the world changes under a run, or holds files a
new user has. Registered into ``benchmarks/faults.py``'s probe list by ``register(h)``, where
``h`` is that module (its ``probe``, ``judge``, ``Ctx``, ``snapshot``, ``lost_files``, ...).

Each class of fault gets a probe whose outcome is judged on the state it leaves, not just the exit
code: a resume on changed data (refused without a word lost, or accepted with the schedule
recomputed), image folders with a symlink loop, 16-bit PNGs, an animated GIF or a file name that
is not UTF-8 (the right number of images, pixels not black), a YAML key given twice, checkpoints
of a newer e2mc (warning, refusal, version kept by export), a mistyped command and a folder of runs.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import torch

FOLDER_RUN = [
    "--method",
    "vicreg",
    "--set",
    "model.init=random:resnet_mini:8-8-8",
    "--set",
    "model.head_sizes={projector: [16, 16]}",
    "--set",
    "data.image_size=8",
    "--batch-size",
    "4",
    "--set",
    "train.probe_size=0",
    "--set",
    "train.tensorboard=false",
    "--set",
    "train.log_every=1",
]


def _images(root: Path, rng, classes=("a", "b"), n=8, tag="") -> Path:
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.array([[[rng.randrange(256) for _ in range(3)] for _ in range(10)] for _ in range(10)], np.uint8)
            Image.fromarray(arr).save(root / c / f"{c}{tag}{i}.png")
    return root


def _cached_rows(ctx):
    """Images the run decoded: rows of the dataset cache's ``.npy`` (the folder's one entry)."""
    caches = sorted((ctx.tmp / "dcache").glob("*.npy"))
    return np.load(caches[0], mmap_mode="r").shape[0] if len(caches) == 1 else None


def register(h) -> None:  # noqa: C901 - one closure per probe, registered in order
    """Add the ``world`` probes to ``h.PROBES``."""

    def folder_run(ctx, data, *extra, epochs=3):
        return ctx.cli(
            "pretrain",
            "--dataset",
            data,
            *FOLDER_RUN,
            "--set",
            f"data.cache_dir={ctx.tmp / 'dcache'}",
            "--epochs",
            epochs,
            *extra,
            "--out",
            ctx.tmp / "run",
        )

    def stopped_cosine_run(ctx):
        """A 3-epoch cosine run on 2 x 8 images as it stood after epoch 1 (as if killed), or the failed Proc."""
        data = _images(ctx.tmp / "data", ctx.rng)
        p = folder_run(ctx, data, "--set", "optim.schedule=cosine")
        if p.code != 0:
            return data, p
        ck = ctx.tmp / "run" / "checkpoints"
        shutil.copy(ck / "epoch_0001.pt", ck / "last.pt")
        for f in ck.glob("epoch_000[23].pt"):
            f.unlink()
        _images(data, ctx.rng, n=2, tag="new")  # 16 -> 20 images while the run is down
        return data, None

    @h.probe("world", "error", "images added between a kill and --resume")
    def _data_added(ctx):
        _, failed = stopped_cosine_run(ctx)
        if failed:
            return h.judge(ctx, failed, "ok")
        run = ctx.tmp / "run"
        before = h.snapshot(run)
        p = ctx.cli("pretrain", "--out", run, "--resume")
        wrong = "" if "16 -> 20 images" in p.err else "the error does not name the change"
        return h.judge(ctx, p, "error", h.lost_files(before, run), extra_wrong=wrong)

    @h.probe("world", "ok", "images added, then --resume --allow-data-change")
    def _data_added_allowed(ctx):
        _, failed = stopped_cosine_run(ctx)
        if failed:
            return h.judge(ctx, failed, "ok")
        run = ctx.tmp / "run"
        p = ctx.cli("pretrain", "--out", run, "--resume", "--allow-data-change")
        lrs = [float(r["lr"]) for r in csv.DictReader((run / "metrics.csv").open()) if r["phase"] == "train"]
        wrong = ""
        if "LR schedule recomputed for 14 steps" not in p.out + p.err:
            wrong = "no line saying the schedule was recomputed"
        elif len(lrs) != 14 or lrs[-1] != 0.0 or min(lrs[:-1]) <= 0:
            wrong = f"LR not 0 exactly at the run's end: {lrs}"
        return h.judge(ctx, p, "ok", extra_wrong=wrong)

    @h.probe("world", "ok", "symlink loop in a class folder (ln -s . a/loop)")
    def _symlink_loop(ctx):
        data = _images(ctx.tmp / "data", ctx.rng, n=10)
        os.symlink(".", data / "a" / "loop")
        p = folder_run(ctx, data, "--set", "train.max_steps=1", epochs=1)
        wrong = ""
        if p.code == 0:
            n = _cached_rows(ctx)
            if n != 20:
                wrong = f"{n} images trained on instead of 20"
            elif "symlink loop" not in p.err:
                wrong = "the skipped loop is not reported"
        return h.judge(ctx, p, "ok", extra_wrong=wrong)

    @h.probe("world", "ok", "a class of 16-bit PNGs (mode I;16)")
    def _png16(ctx):
        from PIL import Image

        data = _images(ctx.tmp / "data", ctx.rng, classes=("a",))
        (data / "bright16").mkdir()
        for i in range(8):  # values 60000..65535: 233..255 in 8 bits, near-black or noise if cut to the low byte
            arr = np.array([[ctx.rng.randrange(60000, 65536) for _ in range(10)] for _ in range(10)], np.uint16)
            Image.fromarray(arr).save(data / "bright16" / f"{i}.png")
        p = folder_run(ctx, data, "--set", "train.max_steps=1", epochs=1)
        wrong = ""
        if p.code == 0:
            caches = sorted((ctx.tmp / "dcache").glob("*.npy"))
            images = np.load(caches[0]) if caches else None
            if images is None or images.shape[0] != 16:
                wrong = "dataset cache missing or of the wrong size"
            elif images[8:].min() < 233:
                wrong = (
                    f"16-bit class decoded wrongly: min {images[8:].min()}, mean {images[8:].mean():.0f} (want >= 233)"
                )
        return h.judge(ctx, p, "ok", extra_wrong=wrong)

    @h.probe("world", "ok", "an animated GIF in a class folder")
    def _gif(ctx):
        from PIL import Image

        data = _images(ctx.tmp / "data", ctx.rng)
        frames = [Image.fromarray(np.full((10, 10, 3), 40 * k, np.uint8)).convert("P") for k in range(3)]
        frames[0].save(data / "b" / "anim.gif", save_all=True, append_images=frames[1:])
        p = folder_run(ctx, data, "--set", "data.on_error=raise", "--set", "train.max_steps=1", epochs=1)
        n = _cached_rows(ctx) if p.code == 0 else 17
        return h.judge(ctx, p, "ok", extra_wrong="" if n == 17 else f"{n} images instead of 17")

    @h.probe("world", "ok", "a file name that is not valid UTF-8")
    def _bad_name(ctx):
        data = _images(ctx.tmp / "data", ctx.rng)
        with open(os.fsencode(data / "a") + b"/caf\xe9.png", "wb") as fh:
            fh.write((data / "a" / "a0.png").read_bytes())
        p = folder_run(ctx, data, "--set", "data.on_error=raise", "--set", "train.max_steps=1", epochs=1)
        n = _cached_rows(ctx) if p.code == 0 else 17
        return h.judge(ctx, p, "ok", extra_wrong="" if n == 17 else f"{n} images instead of 17")

    @h.probe("world", "error", "config file: a top-level key given twice (optim: block lost)")
    def _yaml_dupe(ctx):
        cfg = ctx.tmp / "c.yaml"
        cfg.write_text("optim:\n  name: sgd\n  lr: 0.5\ntrain:\n  epochs: 1\noptim:\n  weight_decay: 0.0\n")
        p = ctx.cli("pretrain", "--config", cfg, *h.QUICK, "--out", ctx.tmp / "run")
        wrong = "" if "duplicate key 'optim'" in p.err and "line 6" in p.err else "key or line not named"
        lost = ["the rejected run wrote a run folder"] if (ctx.tmp / "run" / "checkpoints").exists() else []
        return h.judge(ctx, p, "error", lost, extra_wrong=wrong)

    def versioned(ctx, version):
        state = torch.load(ctx.base / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
        state["e2mc_version"] = version
        path = ctx.tmp / f"v{version}.pt"
        torch.save(state, path)
        return path

    def newer(minor: int, major: int = 0) -> str:
        import e2mc

        mj, mn = (int(x) for x in e2mc.__version__.split(".")[:2])
        return f"{mj + major}.{mn + minor}.0"

    @h.probe("world", "ok", "checkpoint of a newer e2mc minor -> evaluate")
    def _newer_minor(ctx):
        import e2mc

        v = newer(1)
        p = ctx.cli("evaluate", versioned(ctx, v), *h.EVAL)
        said = f"e2mc {v}, newer than this e2mc {e2mc.__version__}" in p.err
        return h.judge(ctx, p, "ok", extra_wrong="" if said else "no warning naming both versions")

    @h.probe("world", "error", "checkpoint of a newer e2mc major -> continue")
    def _newer_major(ctx):
        p = ctx.cli("continue", versioned(ctx, newer(0, 1)), "--dataset", "digits", *h.CONT, "--out", ctx.tmp / "r")
        return h.judge(ctx, p, "error", extra_wrong="" if "newer major version" in p.err else "reason not named")

    @h.probe("world", "ok", "export of a newer-minor checkpoint keeps its version")
    def _export_version(ctx):
        v = newer(1)
        out = ctx.tmp / "exported.pt"
        p = ctx.cli("export", versioned(ctx, v), "--out", out)
        kept = p.code == 0 and torch.load(out, weights_only=True).get("e2mc_version") == v
        return h.judge(ctx, p, "ok", extra_wrong="" if kept or p.code else "export rewrote the version")

    @h.probe("world", "error", "mistyped command (e2mc contineu)")
    def _typo(ctx):
        p = ctx.cli("contineu", ctx.base)
        hint = "did you mean 'continue'" in p.err or "maybe you meant 'continue'" in p.err
        return h.judge(ctx, p, "error", extra_wrong="" if hint else "no 'did you mean continue'")

    @h.probe("world", "error", "evaluate a folder of runs (the demo's output)")
    def _demo_folder(ctx):
        demo = ctx.tmp / "demo"
        shutil.copytree(ctx.base, demo / "runs" / "vicreg_s0")
        p = ctx.cli("evaluate", demo, *h.EVAL)
        named = "runs/vicreg_s0" in p.err
        return h.judge(ctx, p, "error", extra_wrong="" if named else "the run folders inside are not named")
