"""``e2mc recipes``: list the bundled recipes, or print one."""

from __future__ import annotations

import argparse

from e2mc.commands import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "recipes",
        help="list the bundled training recipes (the paper's and CPU-scale ones)",
        description="List the bundled recipes, or print one as YAML to copy and edit.",
        examples=[
            "e2mc recipes",
            "e2mc recipes vicreg_e2mc_imagenet > my.yaml   # then: e2mc continue CKPT --config my.yaml",
        ],
    )
    p.add_argument("name", nargs="?", help="print this recipe's YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2mc.recipes import list_recipes, recipe_path

    if args.name:
        print(recipe_path(args.name).read_text(), end="")
        return 0
    recipes = list_recipes()
    width = max(len(name) for name in recipes)
    for name, summary in recipes.items():
        print(f"{name:<{width}}  {summary}")
    return 0
