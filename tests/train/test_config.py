import pytest
import torch

from e2mc.config import E2MC_DEFAULTS, RunConfig, load_config
from e2mc.errors import ConfigError
from e2mc.recipes import list_recipes, recipe_path
from e2mc.train.run import prepare_run_dir


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "optim.lr=0.1",
            "train.epochs=3",
            "train.channels_last=true",
            "addon.m=None",
            "model.head_sizes={projector: [8, 8]}",
        ],
    )
    assert isinstance(cfg, RunConfig)
    assert cfg.optim.lr == 0.1 and cfg.train.epochs == 3 and cfg.train.channels_last is True
    assert cfg.addon.m is None and cfg.model.head_sizes == {"projector": [8, 8]}


@pytest.mark.parametrize("method", ["vicreg", "swav", "simsiam", "byol"])
def test_method_defaults_applied_only_when_unset(method):
    cfg = load_config(None, [f"method.name={method}"])
    assert (cfg.addon.entropy_weight, cfg.addon.cov_weight, cfg.addon.transform) == E2MC_DEFAULTS[method]
    cfg = load_config(None, [f"method.name={method}", "addon.entropy_weight=3"])
    assert cfg.addon.entropy_weight == 3.0 and cfg.addon.cov_weight == E2MC_DEFAULTS[method][1]


def test_paper_defaults_table():
    paper = dict(E2MC_DEFAULTS)  # the paper's three, then e2mc's choices for the others
    assert paper == {
        "vicreg": (10.0, 1.0, "sigmoid"),
        "swav": (10.0, 1.0, "gaussian_cdf"),
        "simsiam": (1.0, 25.0, "gaussian_cdf"),
        "barlowtwins": (10.0, 1.0, "sigmoid"),  # no paper values: VICReg's (methods/barlowtwins.py)
        "byol": (1.0, 25.0, "gaussian_cdf"),  # not in the paper: SimSiam's (the same predictor scheme)
        "mocov3": (10.0, 1.0, "sigmoid"),  # no MoCo v3 run in the paper: e2mc's choice (its VICReg values)
        "dino": (10.0, 1.0, "sigmoid"),  # no DINO run in the paper: e2mc's choice (its VICReg values)
        "wav2vec2": (10.0, 1.0, "sigmoid"),  # no audio run in the paper: e2mc's choice (its VICReg values)
        "hubert": (10.0, 1.0, "sigmoid"),  # no HuBERT run in the paper: e2mc's choice (its VICReg values)
    }


def test_schedule_default_depends_on_mode():
    assert load_config(None, ["mode=continue"]).optim.schedule == "constant"
    assert load_config(None, ["mode=continue"]).optim.warmup_epochs == 0
    assert load_config(None, ["mode=pretrain"]).optim.schedule == "warmup_cosine"


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"'optim\.lr'.*Valid keys"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        load_config({"trian": {"epochs": 2}})


def test_bad_values():
    with pytest.raises(ConfigError, match="cannot read 'abc' as float"):
        load_config(None, ["optim.lr=abc"])
    with pytest.raises(ConfigError, match="use one of"):
        load_config(None, ["method.name=nosuchmethod"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(None, ["optim.lr=0.123", "method.name=swav"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path).to_dict() == cfg.to_dict()


def test_missing_file_and_recipe():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nope/config.yaml")
    with pytest.raises(ConfigError, match="Did you mean 'vicreg_e2mc_imagenet'"):
        recipe_path("vicreg_e2mc_imagnet")


def test_recipes_load():
    names = list_recipes()
    for n in (
        "vicreg_e2mc_imagenet",
        "swav_e2mc_imagenet",
        "simsiam_e2mc_imagenet",
        "digits_vicreg_pretrain",
        "digits_vicreg_e2mc",
        "cifar10_vicreg_pretrain",
        "cifar10_vicreg_e2mc",
        "cifar10_dino_pretrain",
        "cifar10_dino_continue",
    ):
        assert n in names and names[n]
    v = load_config("vicreg_e2mc_imagenet")
    assert v.mode == "continue" and v.optim.schedule == "constant" and v.optim.name == "lars"
    assert v.optim.batch_size * 2 == 512 and v.addon.entropy_weight == 10 and v.addon.transform == "sigmoid"
    s = load_config("swav_e2mc_imagenet")
    assert s.addon.transform == "gaussian_cdf" and s.method.freeze_prototypes_iters > 0
    assert load_config("simsiam_e2mc_imagenet").addon.cov_weight == 25
    d = load_config("cifar10_dino_pretrain")
    assert d.method.name == "dino" and d.model.head_sizes["out"] == 4096 and d.method.local_crops_number == 4
    c = load_config("cifar10_dino_continue")  # the careful continuation defaults, stated in the recipe
    assert c.mode == "continue" and c.method.continue_momentum == 1.0 and not c.method.continue_temp_warmup
    assert c.method.center_init == "estimate" and c.train.guard.action == "lower_lr"


def test_output_folder_holding_a_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match="already holds a run"):
        prepare_run_dir(tmp_path, resume=False, overwrite=False)
    prepare_run_dir(tmp_path, resume=True, overwrite=False)  # resume is allowed
    (tmp_path / "notes.txt").write_text("mine")
    prepare_run_dir(tmp_path, resume=False, overwrite=True)
    assert not (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "notes.txt").exists()


def test_resume_refuses_a_changed_schedule_but_allows_extending_a_constant_lr():
    """The restored scheduler keeps its own step function, so a changed epoch count, warm-up or LR
    would be silently ignored: refused for a shaped schedule, allowed for a constant one."""
    import pytest

    from e2mc.config import load_config
    from e2mc.errors import ConfigError
    from e2mc.train.run import check_resume_config

    pre = load_config(None, ["mode=pretrain", "train.epochs=30"])
    stored = pre.to_dict()
    with pytest.raises(ConfigError, match="train.epochs: checkpoint 30, now 20"):
        check_resume_config(stored, load_config(None, ["mode=pretrain", "train.epochs=20"]))
    with pytest.raises(ConfigError, match="optim.lr"):
        check_resume_config(stored, load_config(None, ["mode=pretrain", "train.epochs=30", "optim.lr=0.5"]))
    check_resume_config(stored, load_config(None, ["mode=pretrain", "train.epochs=30"]))  # same: fine
    cont = load_config(None, ["mode=continue", "train.epochs=2"])
    check_resume_config(cont.to_dict(), load_config(None, ["mode=continue", "train.epochs=5"]))


def test_config_names_are_the_registries():
    """One source per name list: the light-weight tuples in config (the CLI's choices) equal the
    registries that build the objects, so a method/add-on/transform/optimiser added to one and not
    the other fails here."""
    import torch

    from e2mc import config
    from e2mc.criteria import ADDONS
    from e2mc.criteria.entropy import TRANSFORMS
    from e2mc.criteria.kernels import _SLOPE_NAMES
    from e2mc.methods import METHODS
    from e2mc.train.optim import build_optimizer, build_scheduler

    assert set(config.METHOD_NAMES) == set(METHODS)
    assert set(config.ADDON_NAMES) == set(ADDONS)
    assert set(config.TRANSFORM_NAMES) == set(TRANSFORMS) == set(_SLOPE_NAMES)
    assert set(config.E2MC_DEFAULTS) == set(METHODS)
    p = [torch.nn.Parameter(torch.ones(2))]
    for name in config.OPTIMIZER_NAMES:  # every name builds
        opt = build_optimizer(name, p, lr=0.1, weight_decay=0.0)
    for kind in config.SCHEDULE_NAMES:
        build_scheduler(kind, opt, total_steps=4)
