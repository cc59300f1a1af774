"""Compare two torch.save files: keys, shapes, optimizer structure, pickle globals."""

import io
import pickletools
import sys
import types
import zipfile

import torch


def exclude_bias_and_norm(p):
    return p.ndim == 1


def globals_of(path):
    z = zipfile.ZipFile(path)
    pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
    out = set()
    ops = list(pickletools.genops(io.BytesIO(z.read(pkl))))
    strings = []
    for op, arg, _pos in ops:
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        if op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
        if op.name == "STACK_GLOBAL":
            out.add(strings[-2] + "." + strings[-1])
    return out


def struct(obj, depth=0):
    if isinstance(obj, torch.Tensor):
        return ("T", tuple(obj.shape), str(obj.dtype))
    if isinstance(obj, dict):
        return (
            type(obj).__name__,
            [(k if not isinstance(k, int) else "int", struct(v, depth + 1)) for k, v in obj.items()],
        )
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(x, int) for x in obj):
            return ("intlist", len(obj))
        return (type(obj).__name__, [struct(x, depth + 1) for x in obj])
    if callable(obj):
        return ("fn", obj.__module__ if hasattr(obj, "__module__") else None, getattr(obj, "__qualname__", None))
    return (type(obj).__name__,)


def diff(a, b, path="", out=None):
    out = [] if out is None else out
    if type(a) != type(b) or (isinstance(a, tuple) and a[0] != b[0]):
        out.append(f"{path}: {str(a)[:120]} != {str(b)[:120]}")
        return out
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[1], list):
        la, lb = a[1], b[1]
        if a[0] in ("dict", "OrderedDict"):
            ka, kb = [k for k, _ in la], [k for k, _ in lb]
            if ka != kb:
                out.append(
                    f"{path}: keys differ: only-a {sorted(set(map(str, ka)) - set(map(str, kb)))[:8]} only-b {sorted(set(map(str, kb)) - set(map(str, ka)))[:8]} order-same={ka == kb}"
                )
                return out
            for (k, va), (_, vb) in zip(la, lb):
                diff(va, vb, f"{path}/{k}", out)
        else:
            if len(la) != len(lb):
                out.append(f"{path}: len {len(la)} != {len(lb)}")
                return out
            for i, (va, vb) in enumerate(zip(la, lb)):
                diff(va, vb, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: {a} != {b}")
    return out


if __name__ == "__main__":
    stub = types.ModuleType("main_vicreg")  # the filter function's module when written by a submitit run
    stub.exclude_bias_and_norm = exclude_bias_and_norm
    sys.modules.setdefault("main_vicreg", stub)
    a, b = sys.argv[1], sys.argv[2]
    A, B = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    d = diff(struct(A), struct(B))
    ga, gb = globals_of(a), globals_of(b)
    print(f"{a} vs {b}")
    print(
        "  structure (keys in order, tensor shapes/dtypes, optimizer state/param_groups):", "SAME" if not d else d[:10]
    )
    print("  pickle globals:", "SAME" if ga == gb else f"only-a {ga - gb} only-b {gb - ga}", sorted(ga))
