"""A YAML config (or tune search space) with a key given twice is refused with one line naming
the key and both lines; YAML would keep only the last one, e.g. losing a whole optim: block
(issue 28, item 5)."""

import pytest

from e2mc.config import load_config, load_yaml
from e2mc.errors import ConfigError

from .conftest import cli, one_line_error

TOP = """\
optim:
  lr: 0.5
  name: sgd
train:
  epochs: 2
optim:
  weight_decay: 0.0
"""
NESTED = """\
optim:
  lr: 0.5
  lr: 0.05
"""


def test_duplicate_top_level_key(tmp_path):
    (tmp_path / "c.yaml").write_text(TOP)
    with pytest.raises(ConfigError, match=r"duplicate key 'optim' \(first at line 1\) again at line 6"):
        load_config(str(tmp_path / "c.yaml"))


def test_duplicate_nested_key_and_flow_mapping():
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' \(first at line 2\) again at line 3"):
        load_yaml(NESTED, "c.yaml")
    with pytest.raises(ConfigError, match=r"duplicate key 'a'"):
        load_yaml("x: {a: 1, b: 2, a: 3}\n")


def test_no_duplicate_still_loads(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.5\n  name: sgd\ntrain:\n  epochs: 2\n")
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.epochs) == (0.5, "sgd", 2)
    assert load_yaml("a: [1, {b: 1}, {b: 2}]\n") == {"a": [1, {"b": 1}, {"b": 2}]}  # same key in two mappings


def test_cli_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(TOP)
    code, _, err = cli("pretrain", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    one_line_error(code, err, "duplicate key 'optim'", "line 6")
    assert not (tmp_path / "run").exists()


def test_tune_space_duplicates(tmp_path):
    from e2mc.tuning.space import parse_space

    (tmp_path / "s.yaml").write_text("e2mc:\n  entropy_weight: [1, 10]\nlr: [0.1]\ne2mc:\n  cov_weight: [1]\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'e2mc' \(first at line 1\) again at line 4"):
        parse_space(str(tmp_path / "s.yaml"))
