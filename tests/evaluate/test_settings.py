"""Evaluation settings: one typed object, ``--set eval.KEY=VALUE`` overrides checked like the run
config, the protocol registry, and the linear probe's grid-edge advice that names the exact key."""

import shlex

import pytest

from e2mc.cli import main
from e2mc.errors import ConfigError
from e2mc.evaluation.api import evaluate
from e2mc.evaluation.protocols import LABEL_FREE, PROTOCOLS, grid_edge_advice
from e2mc.evaluation.settings import EvalSettings, keys, parse_item


def test_overrides_are_typed_and_copy():
    base = EvalSettings()
    s = base.with_overrides(["eval.linear.weight_decays=[1e-5,1e-4]", "eval.knn.ks=5", "eval.use_cache=false"])
    assert s.linear.weight_decays == (1e-5, 1e-4) and s.knn.ks == (5,) and s.use_cache is False
    assert base.linear.weight_decays == EvalSettings().linear.weight_decays  # the original is untouched
    s = s.with_overrides({"eval.entropy.transform": "gaussian_cdf", "eval.image_size": "null"})
    assert s.entropy.transform == "gaussian_cdf" and s.image_size is None
    assert "linear.weight_decays" in keys() and "decompose.reference" in keys()


@pytest.mark.parametrize(
    "item, message",
    [
        (
            "eval.linear.weight_decay=[1e-3]",
            r"unknown evaluation setting 'eval.linear.weight_decay'; did you mean eval.linear.weight_decays\?",
        ),
        ("linear.weight_decays=[1e-3]", r"unknown evaluation setting 'linear.weight_decays'.*settings are eval.<key>"),
        ("eval.linear.solver=sgd", r"eval.linear.solver='sgd' is not valid; give one of auto, lbfgs, streaming"),
        ("eval.linear.weight_decays=[]", r"eval.linear.weight_decays is empty; give at least one value"),
        (
            "eval.linear.weight_decays=[1e-3,-1]",
            r"eval.linear.weight_decays=-1.0 is out of range; give a finite number >= 0",
        ),
        ("eval.knn.ks=[0,5]", r"eval.knn.ks=0 is out of range; give an integer >= 1"),
        ("eval.seeds=[a]", r"eval.seeds: cannot read 'a' as int; give an integer"),
        ("eval.knn.temperature=nan", r"eval.knn.temperature: cannot read .* as float"),
        ("eval.linear", r"must look like key=value"),
    ],
)
def test_bad_settings_are_one_line_config_errors(item, message):
    with pytest.raises(ConfigError, match=message) as exc:
        EvalSettings().with_overrides([item])
    assert "\n" not in str(exc.value)


def test_cli_set_errors_are_one_line(capsys):
    rc = main(["evaluate", "random:resnet_mini:8-16-32", "--set", "eval.linear.weight_decays=[x]"])
    err = capsys.readouterr().err
    assert rc == 2 and "eval.linear.weight_decays: cannot read 'x' as float" in err and "Traceback" not in err


def test_registry_and_the_one_label_free_list():
    from e2mc.tuning import scoring

    assert (
        list(PROTOCOLS)[:2] == ["knn", "linear"] and "decompose" in PROTOCOLS and not PROTOCOLS["decompose"].label_free
    )
    assert set(LABEL_FREE) == {"rankme", "entropy", "uniformity", "spectrum", "lidar", "alpha_req"}
    assert all(not PROTOCOLS[p].needs_train for p in LABEL_FREE)  # label-free: no training labels needed
    assert set(scoring.LABEL_FREE) <= set(LABEL_FREE)  # the tune's rules are a subset of the one list
    with pytest.raises(ConfigError, match=r"unknown protocol\(s\) \['bogus'\]; choose from knn, linear"):
        evaluate(None, "digits", ("bogus",))


def test_grid_edge_advice_names_the_exact_set_key_and_the_cli_accepts_it(tiny_net, colour_data, tmp_path):
    """Colour-coded classes: every penalty of a small grid scores 100% on the held-out part, the
    smallest wins the tie, so the choice is at the grid's edge; the advice is a --set that parses."""
    grid = [1e-3, 1e-2, 1e-1]
    settings = {"eval.linear.weight_decays": grid, "eval.device": "cpu", "eval.cache_dir": str(tmp_path)}
    res = evaluate(tiny_net, colour_data, ("linear",), settings)["linear"]
    assert res["selected_at_grid_edge"] and res["weight_decay"] == 1e-3
    assert "--set eval.linear.weight_decays=[1e-05,0.0001,0.001,0.01,0.1]" in res["advice"]
    item = shlex.split(res["advice"].split("--set ", 1)[1])[0]
    wider = EvalSettings().with_overrides([item])
    assert wider.linear.weight_decays == (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    assert "largest" in grid_edge_advice(1.0, [0.1, 1.0], "eval.linear.weight_decays")
    key, _ = parse_item(item)
    assert key == "eval.linear.weight_decays"


def test_old_keywords_still_work_with_a_deprecation_warning(tiny_net, colour_data, tmp_path):
    new = evaluate(tiny_net, colour_data, ("knn",), {"eval.knn.ks": [3], "eval.cache_dir": str(tmp_path)})
    with pytest.warns(DeprecationWarning, match=r"evaluate\(ks=, cache_dir=\) is deprecated"):
        old = evaluate(tiny_net, colour_data, protocols=("knn",), ks=(3,), cache_dir=str(tmp_path))
    assert old["knn"] == new["knn"] == {"top1_k3": new["knn"]["top1_k3"], "uar_k3": new["knn"]["uar_k3"]}
    with pytest.raises(ConfigError, match="unknown argument 'kz'"):
        evaluate(tiny_net, colour_data, ("knn",), kz=(3,))


def test_every_eval_key_named_in_the_source_exists():
    """Advice that names an ``eval.`` setting (errors, warnings, help, results) can be followed as written."""
    import re
    from pathlib import Path

    import e2mc

    valid = {"eval." + k for k in keys()}
    named = set()
    for path in sorted(Path(e2mc.__file__).parent.rglob("*.py")):
        named |= {(path.name, m) for m in re.findall(r"(?<![\w.])eval\.[a-z_]+(?:\.[a-z_]+)?", path.read_text())}
    bad = [f"{f}: {k}" for f, k in sorted(named) if k not in valid and k not in ("eval.KEY", "eval.key")]
    assert not bad, bad
    assert len(named) > 10  # the scan finds the keys that the messages name
