"""Bundled training recipes (YAML). ``list_recipes()`` names them; ``recipe_path(name)`` finds one
(``e2mc.config.load_config(name)`` reads it as a ``RunConfig``). Data only: this package imports
nothing of e2mc but its errors. Each file's header comment says where its numbers come from."""

from __future__ import annotations

from pathlib import Path

from e2mc.errors import ConfigError

_DIR = Path(__file__).parent


def _names() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


def _summary(path: Path, width: int = 110) -> str:
    """First sentence of the file's header comment, cut at a word near ``width`` characters."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("# ").strip())
    text = " ".join(w for w in words if w)
    text = text.split(". ", 1)[0].rstrip(".")
    if len(text) > width:
        text = text[: text.rfind(" ", 0, width - 3)].rstrip(",:;") + "..."
    return text


def list_recipes() -> dict[str, str]:
    """``{name: one-line summary}`` of the bundled recipes."""
    return {name: _summary(_DIR / f"{name}.yaml") for name in _names()}


def recipe_path(name: str) -> Path:
    """Path of the recipe ``name`` (with or without ``.yaml``); ``ConfigError`` listing the names."""
    stem = str(name)[:-5] if str(name).endswith(".yaml") else str(name)
    path = _DIR / f"{stem}.yaml"
    if not path.is_file():
        import difflib

        close = difflib.get_close_matches(stem, _names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown recipe {name!r}.{hint} Available: {', '.join(_names())} "
            "(`e2mc recipes` lists them; or pass a YAML file path)"
        )
    return path
