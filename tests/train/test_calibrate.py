"""addon.cov_weight=auto: the measured weight against a hand computation of both loss terms."""

import numpy as np
import pytest
import torch

from e2mc.config import load_config
from e2mc.errors import ConfigError
from e2mc.train.calibrate import auto_cov_weight, calibration_indices
from e2mc.train.loop import Trainer


def _vicreg_numpy(z1, z2, sim=25.0, var=25.0, cov=1.0, eps=1e-4):
    inv = ((z1 - z2) ** 2).mean()

    def hinge(z):
        return np.maximum(0.0, 1.0 - np.sqrt(z.var(axis=0, ddof=1) + eps)).mean()

    def offdiag(z):
        c = np.cov(z, rowvar=False)
        return ((c**2).sum() - (np.diag(c) ** 2).sum()) / z.shape[1]

    return sim * inv + var * (hinge(z1) + hinge(z2)) / 2 + cov * (offdiag(z1) + offdiag(z2))


def _e2mc_cov_numpy(z):
    u = 1.0 / (1.0 + np.exp(-z))
    c = np.cov(u, rowvar=False)
    return ((c**2).sum() - (np.diag(c) ** 2).sum()) / z.shape[1]


def test_auto_cov_weight_matches_hand_computation(tiny, tmp_path):
    cfg = tiny(
        tmp_path / "run",
        "addon.name=e2mc",
        "addon.cov_weight=auto",
        "addon.cov_fraction=0.25",
        "train.max_steps=1",
        "data.limit=256",
        mode="continue",
    )
    assert cfg.addon.cov_weight == "auto"
    t = Trainer(cfg, quiet=True)
    try:
        state = {k: v.clone() for k, v in t.model.state_dict().items()}
        base, cov = [], []
        with torch.no_grad():
            torch.manual_seed(cfg.train.seed)  # the calibration's RNG stream (views)
            t.model.train()
            for rows in calibration_indices(len(t.dataset), cfg.optim.batch_size, cfg.train.seed):
                images = torch.stack([t.dataset[i][0] for i in rows])
                z1, z2 = (z.double().numpy() for z in t.model(t.views(images))["z"][:2])
                base.append(_vicreg_numpy(z1, z2))
                cov.append(_e2mc_cov_numpy(z1) + _e2mc_cov_numpy(z2))  # covariance summed over the views
        t.model.load_state_dict(state)
        expected = 0.25 * abs(np.mean(base)) / np.mean(cov)
        assert len(base) == 2
        assert t.state.auto_cov_weight == pytest.approx(expected, rel=1e-3)
        assert t.addon.cov_weight == pytest.approx(expected, rel=1e-3)
    finally:
        t._close()
    plain = tiny(
        tmp_path / "plain",
        "addon.name=e2mc",
        "addon.cov_weight=1",
        "train.max_steps=1",
        "data.limit=256",
        mode="continue",
    )
    t = Trainer(plain, quiet=True)  # the same start without calibration: BN statistics were restored
    try:
        for k, v in state.items():
            if v.is_floating_point():
                assert torch.equal(t.model.state_dict()[k], v), k
    finally:
        t._close()


def test_auto_cov_weight_is_stored_and_reused_on_resume(tiny, tmp_path):
    cfg = tiny(
        tmp_path / "run",
        "addon.name=e2mc",
        "addon.cov_weight=auto",
        "train.max_steps=1",
        "data.limit=256",
        mode="continue",
    )
    run = Trainer(cfg, quiet=True).fit()
    stored = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["auto_cov_weight"]
    assert stored > 0
    t = Trainer(
        tiny(
            tmp_path / "run",
            "addon.name=e2mc",
            "addon.cov_weight=auto",
            "train.max_steps=2",
            "data.limit=256",
            "out.resume=true",
            mode="continue",
        ),
        quiet=True,
    )
    try:
        assert t.state.auto_cov_weight == stored and t.addon.cov_weight == stored
    finally:
        t._close()


def test_auto_cov_weight_rules():
    assert auto_cov_weight(-20.0, 0.005, 0.1) == pytest.approx(400.0)
    with pytest.raises(ConfigError, match="cov_weight a number"):
        auto_cov_weight(20.0, 0.0, 0.1)
    with pytest.raises(ConfigError, match="cov_fraction"):
        load_config(None, ["addon.cov_weight=auto", "addon.cov_fraction=0"])
    assert load_config(None, ["addon.cov_weight=auto"]).addon.cov_weight == "auto"
