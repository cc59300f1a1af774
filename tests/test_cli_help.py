"""Every sub-command explains itself: a description, examples that parse, and help for every
option (iterating over the real parser, so a new command or option without help fails here)."""

import argparse
import shlex

import pytest

from e2mc.cli import build_parser


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_there_are_commands():
    assert {"demo", "pretrain", "continue", "evaluate", "compare", "report", "inspect", "export", "recipes"} <= set(
        _commands()[1]
    )


@pytest.mark.parametrize("name", sorted(_commands()[1]))
def test_help_has_description_examples_and_option_help(name, capsys):
    parser, commands = _commands()
    p = commands[name]
    assert p.description and len(p.description) > 40, f"{name}: no description"
    assert p.epilog and p.epilog.startswith("examples:"), f"{name}: no examples"
    examples = [line.strip() for line in p.epilog.splitlines()[1:] if line.strip()]
    assert examples and all(e.startswith(f"e2mc {name}") for e in examples)
    for e in examples:  # every example is a valid command line
        words = shlex.split(e.split("#")[0].split(">")[0])
        assert parser.parse_args(words[1:]).func is not None, e
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}: no help"
    with pytest.raises(SystemExit):
        parser.parse_args([name, "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and p.description.split("\n")[0] in text


def test_defaults_are_shown():
    _, commands = _commands()
    texts = {n: " ".join(commands[n].format_help().split()) for n in ("evaluate", "continue", "demo")}
    assert "features (default: 256)" in texts["evaluate"]  # --batch-size
    assert "--image-size IMAGE_SIZE resize images" in texts["evaluate"] and "native size" in texts["evaluate"]
    for flag in ("--addon", "--entropy-weight", "--cov-weight", "--transform"):
        part = texts["continue"].split("examples:")[0].split(flag)[-1][:400]
        assert "default" in part, flag
    assert "usage: e2mc continue CHECKPOINT [options]" in texts["continue"]
