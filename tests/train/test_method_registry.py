"""A method registered in one place is known everywhere.

The script below (run in a fresh interpreter, so that every import-time table is built after the
registration) registers a method the package does not ship, ``ema_twin``: VICReg's criterion on
an expander, plus a momentum copy of the expander as its own state (updated by ``after_step``,
saved under its own checkpoint key, restored on resume) and an epoch counter (``epoch_start``).
Then it uses it only through the generic code: config (name, options, ranges, E2MC defaults),
the CLI's choices, views, heads, the model's forward, and a trainer run that is stopped and
resumed.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import copy, json, sys
    import torch
    from e2mc.methods import METHODS, Method, Option, register

    @register
    class EmaTwin(Method):
        name, heads, outputs = "ema_twin", ("projector",), ("z",)
        view_recipe = dict(n_large=2, large_scale=(0.2, 1.0), blur_p=(0.0,), solarize_p=(0.0,))
        e2mc_defaults, paper_eps = (2.0, 3.0, "identity"), 1e-6
        options = {"momentum": Option(0.9, 0), "inv_weight": Option(25.0, 0)}
        state_key = "ema_twin_target"
        epochs_started = []

        def default_head_sizes(self, d):
            return {"projector": [2 * d, d]}

        def head_sizes_from_weights(self, heads):
            return {}

        def build_heads(self, d, sizes):
            from e2mc.methods.vicreg import vicreg_projector
            return {"projector": vicreg_projector(d, sizes["projector"])}

        def forward_heads(self, model, features, sizes, images):
            return {"z": list(model.projector(features).split(sizes))}

        def build_criterion(self, cfg):
            from e2mc.criteria import VICRegLoss
            return VICRegLoss(sim_weight=cfg.method.inv_weight)

        def base_loss(self, out, criterion, zs, ctx):
            return criterion(zs)

        def build_state(self, cfg, model, world_size, global_batch, log):
            return copy.deepcopy(model.projector).requires_grad_(False)

        def save_state(self, state, per_device_batch):
            return {k: v.clone() for k, v in state.state_dict().items()}

        def load_state(self, state, saved, per_device_batch, log):
            state.load_state_dict(saved)

        def after_step(self, ctx):
            m = ctx.cfg.method.momentum
            with torch.no_grad():
                for t, o in zip(ctx.state.parameters(), ctx.model.projector.parameters()):
                    t.mul_(m).add_(o.detach(), alpha=1 - m)

        def epoch_start(self, ctx, epoch):
            self.epochs_started.append(epoch)

    from e2mc.cli import build_parser
    from e2mc.config import load_config, ConfigError
    from e2mc.data.views import view_config
    from e2mc.models.model import SSLModel
    from e2mc.train.loop import Trainer
    from e2mc.train.run import load_checkpoint

    out, res = sys.argv[1], {}
    parser = build_parser()
    res["cli"] = parser.parse_args(["pretrain", "--method", "ema_twin"]).method
    sets = ["data.dataset=digits", "data.image_size=16", "model.init=random:resnet_mini:8-8-16",
            "method.name=ema_twin", "method.momentum=0.5", "optim.batch_size=32", "optim.schedule=constant",
            "train.probe_size=0", "train.tensorboard=false", "train.log_every=1", "addon.name=e2mc",
            f"out.dir={out}"]
    cfg = load_config(None, sets + ["train.max_steps=2"])
    res["addon"] = [cfg.addon.entropy_weight, cfg.addon.cov_weight, cfg.addon.transform]
    res["options"] = cfg.to_dict()["method"]
    for bad in ("method.momentum=-1", "method.temperature=0.3"):
        try:
            load_config(None, sets + [bad])
        except ConfigError as e:
            res.setdefault("errors", []).append(str(e))
    res["views"] = view_config("ema_twin", 16).large_scale
    model = SSLModel.build("ema_twin", "resnet_mini:8-8-16")
    res["z"] = list(model([torch.zeros(2, 3, 16, 16)] * 2)["z"][1].shape)
    Trainer(cfg, quiet=True).fit()
    st = load_checkpoint(f"{out}/checkpoints/last.pt")
    target = st["ema_twin_target"]
    online = {k[len("projector."):]: v for k, v in st["model"].items() if k.startswith("projector.")}
    res["moved"] = not torch.equal(target["0.weight"], online["0.weight"])
    t = Trainer(load_config(None, sets + ["train.max_steps=3", "out.resume=true"]), quiet=True)
    res["restored"] = all(torch.equal(v, target[k]) for k, v in t.state.method_state.state_dict().items())
    t.fit()
    res["step"] = load_checkpoint(f"{out}/checkpoints/last.pt")["step"]
    res["epochs_started"] = METHODS["ema_twin"].epochs_started
    print(json.dumps(res))
    """
)


def test_one_registration_makes_a_method_known_everywhere(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), *sys.path])}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["cli"] == "ema_twin"
    assert res["addon"] == [2.0, 3.0, "identity"]  # its own E2MC defaults
    assert res["options"] == {"name": "ema_twin", "views": None, "momentum": 0.5, "inv_weight": 25.0}
    assert "method.momentum=-1.0 is out of range" in res["errors"][0]
    assert res["errors"][1].startswith("method.temperature is an option of swav, not of ema_twin")
    assert res["views"] == [0.2, 1.0] and res["z"] == [2, 16]
    assert res["moved"] and res["restored"]  # its state moved by after_step, saved and restored
    assert res["step"] == 3 and res["epochs_started"] == [0, 0]  # the first run, then the resumed one
