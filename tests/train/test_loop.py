"""End-to-end tests of the Trainer on digits (tiny resnet_mini, 16 px, CPU)."""

import math
import os
import signal

import pytest
import torch

from e2mc.errors import ConfigError, TrainingDiverged
from e2mc.train.loop import Trainer
from e2mc.train.run import load_checkpoint, read_metrics


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def _cheap_views(x):
    """Deterministic, augmentation-free views (keeps the test fast and its loss curve smooth)."""
    v = (x.float() / 255.0 - 0.5) / 0.25
    return [v, v.flip(3)]


def test_loss_decreases_on_a_fixed_batch(tmp_path, tiny):
    """VICReg loss of two fixed views of a fixed batch drops after 40 steps of training."""
    cfg = tiny(
        tmp_path / "r",
        "train.epochs=5",
        "data.limit=512",
        "data.image_size=8",
        "optim.name=adamw",
        "optim.lr=3e-3",
        "optim.weight_decay=0",
        "train.log_every=8",
        "train.probe_size=0",
    )
    t = Trainer(cfg, quiet=True, views_fn=_cheap_views)
    batch = torch.stack([t.dataset[i][0] for i in range(128)])
    views = t.views(batch)

    def loss_now():
        t.model.train()
        with torch.no_grad():
            return float(t.method.compute_loss(t.model(views), t.criterion, t.addon)["loss"])

    before = loss_now()
    t.fit()
    after = loss_now()
    assert after < before - 0.5, (before, after)
    rows = [r for r in read_metrics(tmp_path / "r" / "metrics.csv") if r["phase"] == "train"]
    assert rows and all(float(r["img_per_s"]) > 0 for r in rows)
    assert {"base.invariance", "base.variance", "addon", "lr"} <= set(rows[0])
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("loss", "base.invariance", "base.variance", "lr"))


def test_run_folder_layout_and_checkpoint_format(tmp_path, tiny):
    out = tmp_path / "r"
    Trainer(tiny(out, "train.max_steps=2", "train.epochs=1", "addon.name=e2mc"), quiet=True).fit()
    assert (out / "config.yaml").is_file() and (out / "metrics.csv").is_file()
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)  # plain data only
    assert list(state) == [  # the checkpoint format (docs/architecture.md): these keys, in this order
        "e2mc_version",
        "format",
        "method",
        "arch",
        "cifar_stem",
        "head_sizes",
        "model",
        "optimizer",
        "optimizer_params",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "step_in_epoch",
        "run_step",
        "warmup_done",
        "rng",
        "world_size",
        "config",
        "source_format",
        "source_epoch",
        "source_layout",
        "metrics_rows",
        "auto_cov_weight",
        "data_fingerprint",
        "guard",
    ]
    assert state["format"] == "e2mc" and state["step"] == 2
    phases = [r["phase"] for r in read_metrics(out / "metrics.csv")]
    assert phases[0] == "init" and phases.count("train") == 2
    assert not [p for p in os.listdir(out / "checkpoints") if p.endswith(".tmp")]
    with pytest.raises(ConfigError, match="already holds a run"):
        Trainer(tiny(out, "train.max_steps=1"), quiet=True)


def test_trainer_reads_its_run_state_and_run_folder_without_callbacks():
    """The run's state is ``trainer.state`` (a RunState): the trainer forwards none of its fields
    but the four documented read-only properties; the run folder (``train.run.RunFolder``) calls
    nothing of the trainer's (no mixin: the trainer owns it as ``trainer.run``)."""
    import inspect

    from e2mc.train import loop, run

    props = {k for k, v in vars(loop.TrainerSetup).items() if isinstance(v, property)}
    assert props == {"model", "optimizer", "epoch", "global_step"}
    assert all(vars(loop.TrainerSetup)[k].fset is None for k in props)  # written through trainer.state only
    assert loop.TrainerSetup.__mro__[1:] == (object,) and not hasattr(run, "RunFolderMixin")
    source = inspect.getsource(run)
    for name in ("_flush", "_probe_nonfinite", "_diverged", "self.state", "self.cfg"):
        assert name not in source, name


def test_resume_gives_identical_weights(tmp_path, tiny):
    common = ["train.deterministic=true", "train.epochs=2", "data.limit=256", "optim.name=lars"]
    Trainer(tiny(tmp_path / "a", *common), quiet=True).fit()
    Trainer(tiny(tmp_path / "b", *common[:1], "train.epochs=1", *common[2:]), quiet=True).fit()
    Trainer(tiny(tmp_path / "b", *common, "out.resume=true"), quiet=True).fit()
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["epoch"] == 2


def test_sigterm_mid_epoch_then_resume_is_identical(tmp_path, tiny):
    """A SIGTERM at step 3 of epoch 0 checkpoints and exits; resuming ends where a straight run ends."""
    common = ["train.deterministic=true", "train.epochs=1", "data.limit=384"]
    Trainer(tiny(tmp_path / "a", *common), quiet=True).fit()
    t = Trainer(tiny(tmp_path / "b", *common), quiet=True)
    real, calls = t.views, []

    def views(x):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(x)

    t.views = views
    t.fit()
    assert t.stop_requested
    st = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert (st["epoch"], st["step_in_epoch"]) == (0, 3)
    Trainer(tiny(tmp_path / "b", *common, "out.resume=true"), quiet=True).fit()
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_api_raises_run_interrupted_and_resumes(tmp_path, tiny, monkeypatch):
    """The Python API never returns a signal-stopped run as if it had finished (callers would mark it done)."""
    from e2mc import pretrain
    from e2mc.errors import RunInterrupted

    cfg = tiny(tmp_path / "r", "train.epochs=1", "data.limit=256")
    real, calls = Trainer.train_step, []

    def step(self, images, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, images, **kw)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(RunInterrupted, match="--resume") as info:
        pretrain(cfg)
    assert info.value.run_dir == tmp_path / "r" and info.value.step == 2
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 2
    cfg.out.resume = True
    assert pretrain(cfg) == tmp_path / "r"  # resumed to the end: returns normally
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["epoch"] == 1


def test_nan_stops_with_last_good_checkpoint_intact(tmp_path, tiny):
    out = tmp_path / "r"
    # guard off: with it a non-finite loss restores its best checkpoint (tests/train/test_guard.py)
    t = Trainer(tiny(out, "train.epochs=3", "data.limit=256", "train.guard.action=off"), quiet=True)
    real, calls = t.views, []

    def views(x):  # poison the input of the 6th step (epoch 1, after epoch 0's checkpoint)
        calls.append(1)
        v = real(x)
        return [vi * float("nan") for vi in v] if len(calls) == 6 else v

    t.views = views
    with pytest.raises(TrainingDiverged, match=r"step 6.*last good checkpoint"):
        t.fit()
    good = load_checkpoint(out / "checkpoints" / "last.pt")
    assert good["step"] == 4 and all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


def test_batch_too_small_for_entropy(tmp_path, tiny):
    with pytest.raises(ConfigError, match="m-spacing"):
        Trainer(tiny(tmp_path / "r", "optim.batch_size=8", "addon.m=8"), quiet=True)


def test_heads_warmup_keeps_backbone(tmp_path, tiny):
    """Continuing from a model whose heads are built fresh warms them up with the backbone frozen."""
    out = tmp_path / "r"
    cfg = tiny(out, "train.epochs=1", "train.head_warmup_steps=4", mode="continue")
    t = Trainer(cfg, quiet=True)
    assert t.need_warmup and t.heads_built == ["projector"]
    bb = {k: v.clone() for k, v in t.model.backbone.state_dict().items()}
    head = {k: v.clone() for k, v in t.model.projector.state_dict().items()}
    t._warmup()  # the warm-up alone (epochs must be >= 1, and the epoch would move the backbone)
    t._close()
    after = t.model.backbone.state_dict()
    assert all(torch.equal(bb[k], after[k]) for k in bb)  # weights and BN statistics
    assert not all(torch.equal(head[k], t.model.projector.state_dict()[k]) for k in head)
    assert all(p.requires_grad for p in t.model.backbone.parameters())
    rows = read_metrics(out / "metrics.csv")
    assert [r["step"] for r in rows if r["phase"] == "warmup"] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("method", ["swav", "simsiam"])
def test_other_methods_run(tmp_path, method, tiny, monkeypatch):
    extra = ["model.head_sizes={}"]
    if method == "swav":
        extra += [
            "method.freeze_prototypes_iters=2",
            "method.queue_length=128",
            "model.head_sizes={hidden: 32, out: 16, prototypes: 20}",
        ]
    t = Trainer(tiny(tmp_path / "r", f"method.name={method}", "train.max_steps=3", *extra), quiet=True)
    if method == "swav":
        import torch.nn.functional as F

        p0 = F.normalize(t.model.prototypes.weight.detach().clone(), dim=1)
        seen = []
        orig = t.method.after_backward

        def spy(ctx):
            orig(ctx)
            seen.append((ctx.run_step, ctx.model.prototypes.weight.grad is None))

        monkeypatch.setattr(t.method, "after_backward", spy)  # METHODS' instance: undone after the test
    t.fit()
    rows = [r for r in read_metrics(tmp_path / "r" / "metrics.csv") if r["phase"] == "train"]
    assert len(rows) == 3  # the logged terms are numbers, not empty strings or "nan"
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("loss", "base", "addon", "addon.entropy"))
    if method == "swav":
        assert seen == [(0, True), (1, True), (2, False)]  # frozen for the first 2 steps of this run
        st = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
        assert st["swav_queue"] is not None and int(st["swav_queue"]["filled"]) == 128
        assert not torch.allclose(p0, st["model"]["prototypes.weight"])
