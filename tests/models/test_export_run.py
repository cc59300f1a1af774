"""`export --to original` of a run's checkpoint writes the layout the run was continued from."""

import torch

from e2mc.cli import main
from tests.models.conftest import rand_like_sd, trunk_shapes, vicreg_projector_shapes

TINY = [
    "data.dataset=digits",
    "data.image_size=16",
    "data.limit=32",
    "optim.batch_size=16",
    "optim.schedule=constant",
    "optim.lr=0.001",
    "train.epochs=1",
    "train.probe_size=0",
    "train.tensorboard=false",
]


def test_run_from_vicreg_full_checkpoint_exports_vicreg_layout(tmp_path, capsys):
    torch.set_num_threads(1)
    trunk = rand_like_sd(trunk_shapes("resnet18"), seed=7)
    proj = rand_like_sd(vicreg_projector_shapes(512, (32, 32, 16)), seed=8)
    for k in [k for k in trunk if k.endswith("running_var")]:
        trunk[k] = torch.ones_like(trunk[k])
    for k in [k for k in trunk if k.endswith("running_mean")]:
        trunk[k] = torch.zeros_like(trunk[k])
    for k in [k for k in trunk if k.endswith(".weight") and trunk[k].dim() == 4]:
        trunk[k] = trunk[k] * 0.05  # keep activations finite through 18 layers
    src = {
        "model": {f"module.backbone.{k}": v for k, v in trunk.items()}
        | {f"module.projector.{k}": v for k, v in proj.items()},
        "epoch": 100,
    }
    torch.save(src, tmp_path / "resnet50_fullckpt.pth")
    run = tmp_path / "run"
    sets = [a for o in TINY for a in ("--set", o)]
    assert main(["continue", str(tmp_path / "resnet50_fullckpt.pth"), *sets, "--addon", "e2mc", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run / "checkpoints" / "last.pt"), "--out", str(tmp_path / "x.pth")]) == 0
    said = capsys.readouterr().out
    assert "vicreg layout" in said and "epoch 101" in said
    out = torch.load(tmp_path / "x.pth", weights_only=True)
    assert set(out) == {"model", "epoch"} and out["epoch"] == 101  # 100 before + 1 continued
    assert set(out["model"]) == set(src["model"])
    for k, v in out["model"].items():
        assert v.shape == src["model"][k].shape and v.dtype == src["model"][k].dtype
    moved = [k for k in out["model"] if k.endswith("weight") and not torch.equal(out["model"][k], src["model"][k])]
    assert moved  # these are the continued weights, not a copy of the source
    run_state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for k, v in run_state["model"].items():  # the same tensors under the published names
        name = "module." + k if k.startswith(("backbone.", "projector.")) else None
        if name is not None:
            assert torch.equal(out["model"][name], v)
