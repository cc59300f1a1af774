"""Resume is bit-exact whatever the memory format of the start checkpoint's tensors, the run's
``train.channels_last`` and its precision: per bundled CPU recipe (at tiny sizes), a run stopped
mid-epoch at a step count and resumed ends with the weights of a run never stopped.

The class of the bug: a model loaded by ``load_model`` takes the file's tensors as they are
(``assign=True``), so a channels-last checkpoint gave a channels-last model even with
``train.channels_last=false``, while a resumed run rebuilds the model (contiguous) and copies the
weights in: the convolutions rounded differently after the resume.
"""

import pytest
import torch

from e2mc.config import load_config
from e2mc.train.loop import Trainer

from .conftest import same_weights, weights

SMALL = [
    "data.dataset=digits",
    "data.image_size=8",
    "data.limit=128",
    "data.num_workers=0",
    "model.head_sizes={projector: [32, 32]}",
    "optim.batch_size=32",
    "train.epochs=2",  # 4 steps per epoch
    "train.log_every=1",
    "train.probe_size=16",
    "train.tensorboard=false",
    "train.deterministic=true",
]
TINY_VIT = "timm:vit_tiny_patch16_224:img_size=8,patch_size=4,depth=1,embed_dim=16,num_heads=2"
STOP_AT = 3  # mid-epoch 1; the resumed run crosses the epoch boundary


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A channels-last strided start checkpoint (a digits pre-training run, as the recipes make)."""
    out = tmp_path_factory.mktemp("start")
    torch.set_num_threads(1)
    cfg = load_config(
        "digits_vicreg_pretrain",
        SMALL + ["model.init=random:resnet_mini:8-8-8", "train.epochs=1", f"out.dir={out}"],
    )
    assert cfg.train.channels_last
    Trainer(cfg, quiet=True).fit()
    sd = weights(out)
    assert sd["backbone.conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    return out / "checkpoints" / "last.pt"


def _stopped_at(trainer, step):
    """Stop ``trainer`` (as SIGTERM does: save, then end) once it has trained ``step`` steps."""
    real = trainer.train_step

    def train_step(*args, **kw):
        out = real(*args, **kw)
        if trainer.global_step + 1 == step:  # global_step counts this step after train_step returns
            trainer.stop_requested = True
        return out

    trainer.train_step = train_step
    return trainer


CASES = [  # (recipe, overrides): the bundled recipes that run on a CPU, at their precision/layout
    ("digits_vicreg_pretrain", ["model.init=random:resnet_mini:8-8-8"]),
    ("digits_vicreg_e2mc", []),
    ("digits_vicreg_e2mc", ["train.channels_last=false"]),  # issue 28 item 2
    ("digits_vicreg_e2mc", ["train.channels_last=false", "train.precision=bf16"]),
    ("cifar10_vicreg_pretrain", ["model.init=random:resnet_mini:8-8-8", "model.cifar_stem=false"]),
    ("cifar10_vicreg_e2mc", []),
    ("cifar10_vicreg_e2mc", ["train.channels_last=false", "optim.name=adamw", "optim.lr=0.001"]),
    (
        "cifar10_dino_pretrain",
        [f"model.init=random:{TINY_VIT}", "model.head_sizes={hidden: 16, bottleneck: 8, out: 32}"],
    ),
]


@pytest.mark.parametrize(("recipe", "extra"), CASES, ids=[f"{r}{''.join(e[:3])}" for r, e in CASES])
def test_resume_is_bit_exact_per_recipe_layout_and_precision(tmp_path, start, recipe, extra):
    sets = SMALL + ([] if "pretrain" in recipe else [f"model.init={start}"]) + extra
    ref, run = tmp_path / "ref", tmp_path / "run"
    Trainer(load_config(recipe, sets + [f"out.dir={ref}"]), quiet=True).fit()
    stopped = _stopped_at(Trainer(load_config(recipe, sets + [f"out.dir={run}"]), quiet=True), STOP_AT)
    stopped.fit()
    assert stopped.stop_requested and stopped.global_step == STOP_AT
    resumed = Trainer(load_config(recipe, sets + [f"out.dir={run}", "out.resume=true"]), quiet=True)
    assert resumed.global_step == STOP_AT
    resumed.fit()
    assert resumed.global_step == 8
    a, b = weights(ref), weights(run)
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert same_weights(a, b), f"resumed weights differ from the uninterrupted run's by up to {worst}"
