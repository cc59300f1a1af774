"""Read released checkpoints that name harmless Python globals, without running anything.

Official SSL training scripts pickle more than tensors: facebookresearch/vicreg's LARS keeps the
function ``exclude_bias_and_norm`` in every param group (a global reference such as
``__main__.exclude_bias_and_norm``), DINO stores its ``argparse.Namespace``, many repositories
keep numpy scalars or ``pathlib`` paths next to the tensors. ``torch.load(weights_only=True)``
refuses all of them. Here each global is looked up in a fixed table (:data:`INERT`, plus the
filter functions of :data:`FILTER_FUNCTIONS` under any module name) and materialised as

* an inert :class:`StandIn` for code that loading never needs (a filter function): nothing is
  imported, calling it raises, and it pickles back as the same global reference it was read
  from (:func:`save`), so an exported file resumes in the official script, whose own function
  the reference then names again;
* a data-only type (``argparse.Namespace``, numpy scalars/dtypes/arrays, ``pathlib`` paths as pure
  paths, ``collections`` containers (a ``defaultdict`` read as a dict, a ``deque`` as a list), the
  builtin value types, Lightning's ``AttributeDict``), which torch's weights-only unpickler builds
  like its own tensors.

Loading still goes through ``torch.load(weights_only=True)`` (its unpickler, with these names
added for this one call): a global outside the table, ``os.system``, ``builtins.eval``,
``functools.partial``, a dotted name reaching into a function's attributes, is refused, naming it.

:func:`to_plain` / :func:`from_plain` turn stand-ins into plain data and back, for e2mc's own
checkpoints (which stay loadable by ``weights_only=True`` alone).
"""

from __future__ import annotations

import argparse
import collections
import io
import pathlib
import pickle
import re
from typing import Any

import numpy as np
import torch

from e2mc.errors import CheckpointError

# Functions official SSL scripts put into optimizer param groups (LARS filters): never called
# when loading, only by the script's own optimizer step, which resolves the name to its own code.
FILTER_FUNCTIONS = frozenset({"exclude_bias_and_norm"})

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class StandIn:
    """An inert object standing where a checkpoint names a function e2mc will not import.

    ``module`` and ``name`` are the global's; ``str(stand_in)`` is ``module.name``. Calling it
    raises :class:`CheckpointError`; two stand-ins of one global are equal.
    """

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args, **kwargs):
        raise CheckpointError(
            f"{self} in this checkpoint is an inert stand-in for a function of the script that wrote it; "
            "e2mc does not run code from checkpoints"
        )

    def __reduce__(self):  # pickled by _Pickler.save_global as the global it stands for
        return self.name

    def __eq__(self, other):
        return isinstance(other, StandIn) and (self.module, self.name) == (other.module, other.name)

    def __hash__(self):
        return hash((StandIn, self.module, self.name))

    def __str__(self):
        return f"{self.module}.{self.name}"

    def __repr__(self):
        return f"<stand-in for {self}>"


class AttributeDict(dict):
    """Data-only stand-in for Lightning's ``AttributeDict`` (a dict with attribute access)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def as_dict(default_factory=None, *args):
    """Stands for ``collections.defaultdict``: a plain dict (the items come after; the factory,
    a type such as ``list``, is dropped: the data is kept, no default is made up)."""
    return dict(*args)


def as_list(iterable=(), maxlen=None):
    """Stands for ``collections.deque``: a plain list of its items (``maxlen`` dropped)."""
    return list(iterable)


def _numpy_core():
    return getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1


def _inert_table() -> dict[str, Any]:
    core = _numpy_core().multiarray
    table: dict[str, Any] = {"argparse.Namespace": argparse.Namespace}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[f"{mod}.scalar"] = core.scalar
        table[f"{mod}._reconstruct"] = core._reconstruct
    table["numpy.dtype"] = np.dtype
    table["numpy.ndarray"] = np.ndarray
    for t in {type(np.dtype(c)) for c in "?bhilqBHILQefdgFDGSUV"}:  # numpy >= 1.25 dtype classes
        table[f"numpy.dtypes.{t.__name__}"] = t
    for mod in ("pathlib", "pathlib._local"):
        for flavour, pure in (("Posix", pathlib.PurePosixPath), ("Windows", pathlib.PureWindowsPath)):
            table[f"{mod}.{flavour}Path"] = pure  # a pure path: no file system access, ever
            table[f"{mod}.Pure{flavour}Path"] = pure
    for name in ("OrderedDict", "Counter"):
        table[f"collections.{name}"] = getattr(collections, name)
    # torch's unpickler fills only plain dicts and lists: these two are read as such
    table["collections.defaultdict"] = as_dict
    table["collections.deque"] = as_list
    for t in (list, dict, set, frozenset, tuple, int, float, complex, bool, str, bytes, bytearray, slice, range):
        table[f"builtins.{t.__name__}"] = t
        table[f"__builtin__.{t.__name__}"] = t  # protocol 2's name for the builtins module
    for mod in (
        "pytorch_lightning.utilities.parsing",
        "lightning.pytorch.utilities.parsing",
        "lightning_fabric.utilities.data",
        "lightning.fabric.utilities.data",
    ):
        table[f"{mod}.AttributeDict"] = AttributeDict
    table["torch.torch_version.TorchVersion"] = torch.torch_version.TorchVersion
    return table


INERT: dict[str, Any] = _inert_table()


def classify(qualified: str) -> tuple[Any, str] | None:
    """``(object, how)`` for a global a pickle names, or ``None`` when it is not known to be inert.

    ``how`` is ``"stand-in"`` (an inert :class:`StandIn`) or ``"data"`` (a data-only type)."""
    if qualified in INERT:
        return INERT[qualified], "data"
    module, _, name = qualified.rpartition(".")
    if name in FILTER_FUNCTIONS and module and _IDENT.match(module):
        return StandIn(module, name), "stand-in"
    return None


def allowed_for(names) -> tuple[list[tuple[Any, str]], list[str], list[str]]:
    """``(safe_globals entries, used descriptions, refused names)`` for the globals ``names``
    (torch's own allow-list not counted)."""
    try:  # torch's own allow-list (a private name: where it is gone, torch's unpickler still decides)
        from torch._weights_only_unpickler import _get_allowed_globals

        torch_own = set(_get_allowed_globals())
    except (ImportError, AttributeError):
        torch_own = None

    def own(q: str) -> bool:
        return q in torch_own if torch_own is not None else q.split(".")[0] in ("torch", "_codecs")

    entries, used, refused = [], [], []
    for q in dict.fromkeys(names):
        if own(q):
            continue
        found = classify(q)
        if found is None:
            refused.append(q)
            continue
        obj, how = found
        entries.append((obj, q))
        used.append(f"{q} ({'inert stand-in, never called' if how == 'stand-in' else 'data only'})")
    return entries, used, refused


def load(path, names) -> tuple[Any, list[str]]:
    """``torch.load(path, weights_only=True)`` with the known-inert globals among ``names`` (the
    globals the file's pickle names) allowed; returns ``(object, stand-ins used)``. Raises
    CheckpointError naming the globals that are not known to be inert (nothing is loaded then)."""
    entries, used, refused = allowed_for(names)
    if refused:
        raise CheckpointError(", ".join(refused))
    # the whole data table too: torch builds (BUILD) only instances of allowed types, and a numpy
    # dtype's pickle names numpy.dtype but builds an instance of its numpy.dtypes class
    entries += [(obj, q) for q, obj in INERT.items()]
    with torch.serialization.safe_globals(entries):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj, used


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing a :class:`StandIn` as the global reference it stands for."""

    def save_global(self, obj, name=None):
        if not isinstance(obj, StandIn):
            return super().save_global(obj, name)
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
        self.memoize(obj)


class _PickleModule:
    """What ``torch.save(pickle_module=...)`` needs: a ``Pickler`` class."""

    Pickler = _Pickler


def has_stand_ins(obj) -> bool:
    """Whether ``obj`` (nested dicts, lists, tuples) holds a :class:`StandIn`."""
    if isinstance(obj, StandIn):
        return True
    if isinstance(obj, dict):
        return any(has_stand_ins(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(has_stand_ins(v) for v in obj)
    return False


def save(obj, f) -> None:
    """``torch.save(obj, f)``; stand-ins in ``obj`` are written as the globals they stand for."""
    if has_stand_ins(obj):
        torch.save(obj, f, pickle_module=_PickleModule)
    else:
        torch.save(obj, f)


_PLAIN_KEY = "__e2mc_global__"
_NUMPY_KEY = "__e2mc_numpy__"


def to_plain(obj):
    """``obj`` as data ``torch.load(weights_only=True)`` reads: every :class:`StandIn` replaced by
    ``{"__e2mc_global__": "module.name"}``, every numpy scalar or array (a source optimiser's numpy
    learning rate) by ``{"__e2mc_numpy__": dtype, "value": Python value(s)}``. e2mc's own run
    checkpoints keep a source's optimiser layout this way, so that ``--resume`` reads them."""
    if isinstance(obj, StandIn):
        return {_PLAIN_KEY: str(obj)}
    if isinstance(obj, (np.generic, np.ndarray)) and obj.dtype.kind in "biufc":
        return {_NUMPY_KEY: obj.dtype.str, "value": obj.tolist(), "array": isinstance(obj, np.ndarray)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj):
    """The inverse of :func:`to_plain` (only known filter functions come back as stand-ins; numpy
    values with their dtype)."""
    if isinstance(obj, dict):
        if set(obj) == {_PLAIN_KEY} and isinstance(obj[_PLAIN_KEY], str):
            found = classify(obj[_PLAIN_KEY])
            if found is not None and found[1] == "stand-in":
                return found[0]
        if set(obj) == {_NUMPY_KEY, "value", "array"} and isinstance(obj[_NUMPY_KEY], str):
            dtype = np.dtype(obj[_NUMPY_KEY])
            return np.asarray(obj["value"], dtype=dtype) if obj["array"] else dtype.type(obj["value"])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def pickle_bytes(obj) -> bytes:  # for tests and tools: one pickle of obj, stand-ins as globals
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()
