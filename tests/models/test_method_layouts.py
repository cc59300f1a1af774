"""A method's official layouts and releases live in its method file (``Method.adapters``,
``Method.releases``); the generic registries (``ADAPTERS``, the flat kinds, Lightning's descent,
``ZOO``, ``export --to``) are built from ``METHODS``.

The script below (a fresh interpreter, so that every import-time table is built after the
registration) registers a method the package does not ship, ``toy_twin``, whose official file is
``{"weights": {"trunk.*", "neck.*"}, "step": n}``: its own adapter with its own flat kind, and one
release. It is then used only through the generic code.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e2mc.methods.layout import flat_kind, join_flat, split_flat

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from e2mc.methods import Method, register
    from e2mc.methods.adapter import Adapter, epoch_of, flat_parts, inner_kind
    from e2mc.methods.layout import FlatKind, join_flat, sub
    from e2mc.methods.release import Release

    class ToyKind(FlatKind):
        name, method, tops = "toy_twin", "toy_twin", ("trunk",)

        def score(self, sd, tops):
            return 0.9 if "trunk" in tops and "neck" in tops else 0.0

        def split(self, sd):
            return sub(sd, "trunk."), {"projector": sub(sd, "neck.")}, [k for k in sd if not k.startswith(("trunk.", "neck."))]

        def join(self, backbone, heads):
            out = {f"trunk.{k}": v for k, v in backbone.items()}
            out.update({f"neck.{k}": v for k, v in heads.get("projector", {}).items()})
            return out

    class ToyAdapter(Adapter):
        name, expected, description, kind = "toy_twin", ("weights", "step"), "toy file", ToyKind()

        def detect(self, obj):
            return 0.8 if isinstance(obj, dict) and inner_kind(obj.get("weights")) == "toy_twin" else 0.0

        def split(self, obj):
            return flat_parts(obj["weights"], "toy_twin", epoch=epoch_of({"epoch": obj.get("step")}))

        def pack(self, backbone, heads, meta):
            return {"weights": join_flat(backbone, heads, {"kind": "toy_twin"}), "step": meta.get("epoch") or 0}

    @register
    class ToyTwin(Method):
        name, heads, outputs = "toy_twin", ("projector",), ("z",)
        adapters = (ToyAdapter(),)
        releases = (Release("toy_twin:mini", "toy_twin", "resnet_mini:8-8-16", "toy_twin", True, "https://example.org/toy/mini.pth"),)
        releases_source = "a toy README"

        def default_head_sizes(self, d):
            return {"projector": [2 * d, d]}

        def build_heads(self, d, sizes):
            from e2mc.methods.vicreg import vicreg_projector
            return {"projector": vicreg_projector(d, sizes["projector"])}

    from e2mc.commands.inspect import EXPORT_CHOICES
    from e2mc.models import zoo
    from e2mc.models.adapters import ADAPTERS
    from e2mc.models.checkpoints import load_model
    from e2mc.models.export import export_model
    from e2mc.models.model import SSLModel

    out, res = sys.argv[1], {}
    res["adapters"] = list(ADAPTERS)
    res["export_choices"] = "toy_twin" in EXPORT_CHOICES
    res["zoo"] = [zoo.ZOO["toy_twin:mini"].layout, zoo.SOURCES["toy_twin"], zoo.is_zoo_name("toy_twin:other")]
    torch.manual_seed(0)
    sd = SSLModel.build("toy_twin", "resnet_mini:8-8-16").state_dict()
    weights = {("trunk." + k[9:] if k.startswith("backbone.") else "neck." + k[10:]): v for k, v in sd.items()}
    torch.save({"weights": weights, "step": 7}, f"{out}/toy.pth")
    model, report = load_model(f"{out}/toy.pth")
    res["loaded"] = [report.format, report.method, report.heads, report.epoch]
    res["same"] = all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    export_model(model, report, f"{out}/back.pth")
    back = torch.load(f"{out}/back.pth", weights_only=True)
    res["round_trip"] = back["step"] == 7 and set(back["weights"]) == set(weights)
    res["round_trip"] &= all(torch.equal(back["weights"][k], v) for k, v in weights.items())
    # a Lightning module holding the method's network as "net.": the descent stops at its "trunk"
    torch.save({"state_dict": {"net." + k: v for k, v in weights.items()}, "pytorch-lightning_version": "2.1.0"},
               f"{out}/toy.ckpt")
    model, report = load_model(f"{out}/toy.ckpt")
    res["lightning"] = [report.format, report.method, report.layout["prefix"], report.layout["kind"]]
    export_model(model, report, f"{out}/back.ckpt")
    res["lightning_back"] = sorted(torch.load(f"{out}/back.ckpt", weights_only=True)["state_dict"]) == sorted(
        "net." + k for k in weights)
    print(json.dumps(res))
    """
)


def test_a_method_file_declares_its_layouts_and_releases(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # the methods' adapters between the generic ones, in registry order (detection ties keep this order)
    assert res["adapters"][:2] == ["e2mc", "lightning"]
    assert res["adapters"][-5:] == ["toy_twin", "torchvision", "timm", "transformers", "state_dict"]
    assert res["export_choices"] and res["zoo"] == ["toy_twin", "a toy README", True]
    assert res["loaded"] == ["toy_twin", "toy_twin", ["projector"], 7] and res["same"] and res["round_trip"]
    assert res["lightning"] == ["lightning", "toy_twin", "net.", "toy_twin"] and res["lightning_back"]


def test_importing_the_methods_imports_no_torch():
    """The config and the CLI's choices read ``METHODS`` (``e2mc --help`` stays fast): a method
    file's adapters, flat kinds and releases are declared without torch."""
    code = "import sys, e2mc.methods, e2mc.methods.adapter, e2mc.methods.release; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]


@pytest.mark.parametrize(
    "tops, kind",
    [
        (("encoder", "predictor", "backbone"), "simsiam"),  # two marks outrank the SSLModel naming
        (("backbone", "prototypes"), "model"),  # SSLModel's prototypes head, not SwAV's file
        (("conv1", "prototypes"), "swav"),
        (("conv1", "projection_head"), "swav"),
        (("encoder", "conv1"), "backbone"),  # an encoder alone is not SimSiam's file
        (("conv1", "layer1"), "backbone"),
    ],
)
def test_flat_kind_precedence(tops, kind):
    sd = {f"{t}.weight": None for t in tops}
    assert flat_kind(sd) == kind


def test_flat_kinds_split_and_join_back():
    import torch

    t = torch.zeros(1)
    sd = {"module.encoder.conv1.weight": t, "module.encoder.fc.0.weight": t, "module.predictor.0.weight": t}
    backbone, heads, dropped, layout = split_flat(sd)
    assert layout == {"kind": "simsiam", "module_prefix": True} and not dropped
    assert set(backbone) == {"conv1.weight"} and set(heads) == {"projector", "predictor"}
    assert join_flat(backbone, heads, layout) == sd
    model = {"backbone.conv1.weight": t, "projector.0.weight": t, "extra.w": t}
    backbone, heads, dropped, layout = split_flat(model)
    assert layout["kind"] == "model" and dropped == ["extra.w"] and set(heads) == {"projector"}
    assert join_flat(backbone, heads, layout) == {k: v for k, v in model.items() if k != "extra.w"}


def test_an_adapter_name_is_taken_once():
    from e2mc.models.adapters import ADAPTERS, _registry

    with pytest.raises(ValueError, match="already taken"):
        _registry(*ADAPTERS.values(), ADAPTERS["torchvision"])
    with pytest.raises(ValueError, match="already taken"):
        _registry(type("Fake", (type(ADAPTERS["timm"]),), {"name": "safetensors"})())


def test_a_flat_kind_name_is_taken_once(monkeypatch):
    from e2mc.methods import METHODS
    from e2mc.methods.layout import BackboneKind, flat_kinds

    class Clash(BackboneKind):
        name = "model"

    method = next(iter(METHODS.values()))
    monkeypatch.setattr(type(method), "adapters", (*method.adapters, type("A", (), {"kind": Clash()})()))
    with pytest.raises(ValueError, match="'model' of Clash is already taken"):
        flat_kinds()


def test_each_method_declares_its_own_layouts_and_releases():
    from e2mc.methods import METHODS
    from e2mc.models import zoo
    from e2mc.models.adapters import ADAPTERS

    for name, m in METHODS.items():
        assert all(ADAPTERS[a] is b for a, b in zip(m.layouts, m.adapters))
        assert all(r.method == name and r.name.startswith(name + ":") for r in m.releases)
        assert all(zoo.ZOO[r.name] is r for r in m.releases) and (name in zoo.SOURCES) == bool(m.releases)
    assert len(zoo.ZOO) == sum(len(m.releases) for m in METHODS.values())


def test_every_export_layout_is_a_cli_choice():
    """`export --to` lists its choices without importing the adapters: the two lists must agree
    (the transformers layout was missing from the CLI's when it was added)."""
    from e2mc.commands.inspect import EXPORT_CHOICES
    from e2mc.models.export import EXPORT_TARGETS

    assert sorted(EXPORT_CHOICES) == sorted(EXPORT_TARGETS)


def test_export_model_of_a_path_and_hand_built_settings_are_one_line_errors(tmp_path):
    """A new user's trial: export_model("run.pt", ...) raised AttributeError and EvalSettings(seeds=0)
    a TypeError deep inside evaluate; both are e2mc's one-line errors (a lone seed is a tuple of one)."""
    import pytest

    from e2mc.errors import CheckpointError, ConfigError
    from e2mc.evaluation.api import evaluation_settings
    from e2mc.evaluation.settings import EvalSettings
    from e2mc.models.export import export_model

    with pytest.raises(CheckpointError, match="takes a loaded model"):
        export_model("run.pt", None, tmp_path / "x.pt")
    assert evaluation_settings(EvalSettings(seeds=0)).seeds == (0,)
    with pytest.raises(ConfigError, match="eval.batch_size=-3 is out of range"):
        evaluation_settings(EvalSettings(batch_size=-3))
    from e2mc.models.checkpoints import load_model

    with pytest.raises(ConfigError, match="unknown method 'vicregg'; did you mean 'vicreg'"):
        load_model("random:resnet_mini", method="vicregg")  # was: "build new vicregg heads"
