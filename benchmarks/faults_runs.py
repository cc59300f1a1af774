"""Fault probes of issue 28 (runs that stay right when the world changes under them), registered
into ``benchmarks/faults.py``'s list by ``register(faults)``: a resume from a channels-last start
(bit-exact for any layout and precision), out of memory in ``continue`` and ``evaluate``, one
``torchrun`` rank killed, ``e2mc tune`` stopped by SIGTERM while scoring. Run only these with
``python benchmarks/faults.py --match world:``.
"""

from __future__ import annotations

import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

# Run as the probed process: one fault injected into the real CLI (E2MC_WORLD_FAULT), then `e2mc ARGS`.
WRAPPER = r"""
import os, runpy, signal, sys, time
import torch
kind, at = os.environ.get("E2MC_WORLD_FAULT", ""), int(os.environ.get("E2MC_WORLD_N", "1"))
count = [0]
def nth():
    count[0] += 1
    return count[0] == at
def no_memory():  # the real CPU allocator's failure
    torch.empty(1 << 60, dtype=torch.uint8)
if kind == "oom_step":  # the N-th augmentation call (inside the training step) runs out of memory
    from e2mc.data import views
    real_views = views.ViewGenerator.__call__
    def views_call(self, *a, **k):
        if nth():
            no_memory()
        return real_views(self, *a, **k)
    views.ViewGenerator.__call__ = views_call
elif kind == "oom_eval":  # feature extraction runs out of memory
    import e2mc.evaluation.features as features
    def forward(*a, **k):
        no_memory()
    features._forward = forward
elif kind == "kill_rank" and os.environ.get("RANK") == os.environ.get("E2MC_WORLD_RANK"):
    from e2mc.train.loop import Trainer
    real_step = Trainer.train_step
    def step(self, images, **kw):  # SIGKILL right before this rank's N-th step
        if nth():
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, images, **kw)
    Trainer.train_step = step
elif kind == "hold_score":  # print a line when a probe's scoring starts, wait there for the signal
    import e2mc.evaluation.api as api
    real_eval = api.evaluate
    def evaluate(checkpoint, *a, **k):
        if os.sep + "probes" + os.sep in str(checkpoint):
            print("at:score", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120:  # the signal's handler ends this
                time.sleep(0.01)
        return real_eval(checkpoint, *a, **k)
    api.evaluate = evaluate
sys.argv = ["e2mc"] + sys.argv[1:]
runpy.run_module("e2mc", run_name="__main__")
"""

SMALL = ["--set", "data.image_size=8", "--set", "data.limit=128", "--batch-size", "32", "--set", "train.probe_size=0"]
SMALL += ["--set", "train.tensorboard=false", "--set", "train.log_every=1", "--dataset", "digits"]


def register(h) -> None:
    """Add this file's probes to ``h.PROBES`` (``h``: the ``benchmarks.faults`` module)."""

    def wrapper(ctx) -> Path:
        path = ctx.tmp / "world_wrapper.py"
        path.write_text(WRAPPER)
        return path

    def run(ctx, cmd, env=None, timeout=300) -> h.Proc:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ctx.env(), cwd=ctx.tmp)
        except subprocess.TimeoutExpired as exc:
            return h.Proc(124, str(exc.stdout or ""), str(exc.stderr or "") + f"\n[probe] timed out after {timeout}s")
        return h.Proc(p.returncode, p.stdout, p.stderr)

    def signal_at(ctx, cmd, sig, marker, env=None) -> h.Proc:
        """Run ``cmd``; send ``sig`` when a stderr line contains ``marker`` (an event, not a delay)."""
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ctx.env(), cwd=ctx.tmp
        )
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                proc.send_signal(sig)
                break
        out, rest = proc.communicate(timeout=300)
        return h.Proc(proc.returncode, out, "".join(lines) + rest)

    e2mc = [sys.executable, "-m", "e2mc"]

    def layout_probe(*extra):
        def fn(ctx):
            start = ctx.cli(
                "pretrain", *h.TINY, "--set", "train.channels_last=true", "--set", "train.max_steps=2", "--out", "start"
            )
            if start.code != 0:
                return h.judge(ctx, start, "ok")
            ck = ctx.tmp / "start" / "checkpoints" / "last.pt"
            args = [*SMALL, "--epochs", "2", "--set", "train.channels_last=false", *extra]
            ref = ctx.cli("continue", ck, *args, "--out", "ref")
            if ref.code != 0:
                return h.judge(ctx, ref, "ok")
            first = signal_at(ctx, e2mc + ["continue", str(ck), *args, "--out", "run"], signal.SIGTERM, " step 3")
            if first.code not in (0, 3):
                return h.judge(ctx, first, "stop")
            p = ctx.cli("continue", "--out", "run", "--resume")
            lost = []
            if p.code == 0 and not h.same_weights(
                ctx.tmp / "run/checkpoints/last.pt", ctx.tmp / "ref/checkpoints/last.pt"
            ):
                lost.append("resumed weights differ from the uninterrupted run")
            return h.judge(ctx, p, "ok", lost)

        return fn

    name = "world: channels-last start, continue with channels_last=false{}, SIGTERM at step 3, --resume bit-exact"
    h.probe("checkpoint", "ok", name.format(""))(layout_probe())
    h.probe("checkpoint", "ok", name.format(" + bf16"))(layout_probe("--set", "train.precision=bf16"))

    @h.probe("crash", "error", "world: out of memory in the training step (CPU allocator) of continue, then --resume")
    def _oom_step(ctx):
        ck = ctx.base / "checkpoints" / "last.pt"
        args = ["continue", str(ck), *SMALL, "--epochs", "2", "--out", "run"]
        p = run(ctx, [sys.executable, str(wrapper(ctx)), *args], ctx.env(E2MC_WORLD_FAULT="oom_step", E2MC_WORLD_N=6))
        last = ctx.tmp / "run" / "checkpoints" / "last.pt"
        line = h.key_line(p)
        wrong = (
            "" if "batch size 32" in line and "optim.batch_size" in line else "the line names no batch size to lower"
        )
        lost = []
        if p.code == 2:
            if not last.is_file() or h.sha(last) != h.sha(ctx.tmp / "run/checkpoints/epoch_0001.pt"):
                lost.append("last.pt is not the epoch-1 checkpoint written before the failure")
            again = ctx.cli(*args, "--resume")
            ref = ctx.cli(*args[:-1], "ref")
            if again.code != 0 or ref.code != 0:
                wrong = wrong or f"--resume after the failure: exit {again.code}"
            elif not h.same_weights(last, ctx.tmp / "ref/checkpoints/last.pt"):
                lost.append("resumed weights differ from the uninterrupted run")
        return h.judge(ctx, p, "error", lost, wrong)

    @h.probe("crash", "error", "world: out of memory in evaluate's feature extraction")
    def _oom_eval(ctx):
        ck = ctx.base / "checkpoints" / "last.pt"
        args = [
            "evaluate",
            str(ck),
            "--dataset",
            "digits",
            "--protocols",
            "knn",
            "--image-size",
            "8",
            "--batch-size",
            "64",
        ]
        p = run(ctx, [sys.executable, str(wrapper(ctx)), *args], ctx.env(E2MC_WORLD_FAULT="oom_eval"))
        line = h.key_line(p)
        return h.judge(ctx, p, "error", extra_wrong="" if "--batch-size 32" in line else "no --batch-size advice")

    @h.probe(
        "crash",
        "stop+ok",
        "world: torchrun 2 ranks, rank 1 killed after its first checkpoint; the printed command resumes",
    )
    def _rank_killed(ctx):
        def torchrun(out, logs, **env):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
            cmd += [f"--master_port={port}", "--log-dir", logs, "--redirects", "3", str(wrapper(ctx)), "pretrain"]
            cmd += [*h.TINY, "--batch-size", "16", "--device", "cpu", "--epochs", "2", "--out", out]
            return run(ctx, cmd, ctx.env(**env))

        ref = torchrun("ref", "ref_logs")  # a finished run exits 0 (no rerun on gloo's exit abort: fixed)
        if ref.code != 0:
            return h.judge(ctx, ref, "ok")
        torchrun("run", "logs", E2MC_WORLD_FAULT="kill_rank", E2MC_WORLD_RANK=1, E2MC_WORLD_N=6)
        logs = list(ctx.tmp.glob("logs/*/attempt_0/0/stderr.log"))
        err = logs[0].read_text() if logs else "no log of rank 0"
        survivor = h.Proc(3 if "rank 0: another process" in err else 1, "", err)
        line = (err.strip().splitlines() or [""])[-1]
        if "Traceback" in err or "resume with `" not in line or "(step 4) is intact" not in line:
            outcome, p, note = h.judge(ctx, survivor, "stop")
            return (h.WRONG if outcome == h.OK else outcome), p, note or "no one-line message naming the checkpoint"
        cmd = shlex.split(line.split("resume with `", 1)[1].rstrip("`"))
        cmd = [sys.executable if c == "python" else c for c in cmd]
        cmd[cmd.index("logs")] = "resume_logs"
        again = run(ctx, cmd)
        lost = []
        if again.code == 0 and not h.same_weights(
            ctx.tmp / "run/checkpoints/last.pt", ctx.tmp / "ref/checkpoints/last.pt"
        ):
            lost.append("resumed weights differ from the uninterrupted run")
        outcome, _, note = h.judge(ctx, again if again.code else survivor, "stop+ok", lost)
        if again.code:  # say why the printed command failed: torchrun's and the ranks' last lines
            tails = [again.err] + [p.read_text() for p in sorted(ctx.tmp.glob("resume_logs/*/attempt_0/*/stderr.log"))]
            note = f"{note}; the printed command: exit {again.code}: " + " | ".join(
                (t.strip().splitlines() or [""])[-1][:200] for t in tails
            )
        return outcome, survivor, note

    @h.probe("crash", "stop+ok", "world: e2mc tune SIGTERM while scoring a probe, then the printed command")
    def _tune_sigterm(ctx):
        space = ctx.tmp / "space.yaml"
        space.write_text(
            "addons: [none, e2mc]\ne2mc: {entropy_weight: [10], cov_weight: [1, 1000]}\nepochs: 1\nlr: [null]\n"
            "set: {optim.batch_size: 64, train.probe_size: 0, train.log_every: 1000, data.image_size: 8}\n"
        )
        args = ["tune", str(ctx.base / "checkpoints" / "last.pt"), "--dataset", "digits", "--out", "tune"]
        args += ["--space", str(space), "--recipe", "digits_vicreg_e2mc", "--holdout", "120", "--train-images", "192"]
        args += ["--workers", "1", "--final-seeds", "1"]  # the probes of this space, one seed: as few as needed
        env = ctx.env(E2MC_WORLD_FAULT="hold_score")
        first = signal_at(ctx, [sys.executable, str(wrapper(ctx)), *args], signal.SIGTERM, "at:score", env)
        line = (first.err.strip().splitlines() or [""])[-1]  # the whole line (key_line shortens it)
        if first.code != 3 or "while scoring probe" not in line or "rerun the same command: " not in line:
            outcome, p, note = h.judge(ctx, first, "stop")
            return (h.WRONG if outcome == h.OK else outcome), p, note or "no one-line stop message with the command"
        again = run(ctx, e2mc + shlex.split(line.split("rerun the same command: ", 1)[1])[1:])
        wrong = "" if again.code != 0 or (ctx.tmp / "tune" / "tune.json").is_file() else "no tune.json"
        return h.judge(ctx, again, "ok", extra_wrong=wrong)
