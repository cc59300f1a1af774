"""Which training columns the report plots."""

from e2mc.report.plots import curve_columns


def test_constant_and_empty_columns_are_not_plotted():
    runs = {
        "a": [{"epoch": "0", "step": "1", "phase": "train", "loss": "3.0", "addon.m": "11", "addon.tied": "0",
               "rankme": ""},
              {"epoch": "1", "step": "2", "phase": "train", "loss": "2.5", "addon.m": "11", "addon.tied": "0",
               "rankme": "4.0"}],
        "b": [{"epoch": "0", "step": "1", "phase": "train", "loss": "3.1", "addon.m": "11", "addon.tied": "0.01",
               "rankme": "nan"}],
    }
    # addon.m is 11 everywhere; addon.tied varies across runs; rankme has one finite value only
    assert curve_columns(runs) == ["loss", "addon.tied"]
