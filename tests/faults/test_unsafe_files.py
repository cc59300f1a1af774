"""Issue 11 item 8: files e2mc refuses are described for what they are (code-bearing pickle, or not
a checkpoint), in one line, never with a hint to load unsafely; nothing in them is executed."""

import os
import pickle

import pytest
import torch

from e2mc.cli import main
from e2mc.errors import CheckpointError
from e2mc.models.checkpoints import load_model


class _Evil:
    """Unpickling this the unsafe way runs ``os.system`` (touches a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _files(tmp):
    """name -> (path, fragment the message must hold)."""
    marker = tmp / "ran"
    code = "could run code when loaded"
    out = {}
    p = tmp / "evil.pkl"
    p.write_bytes(pickle.dumps(_Evil(marker)))  # a plain pickle, protocol 4 (FRAME opcodes)
    out["plain pickle with __reduce__"] = (p, code)
    p = tmp / "evil0.pkl"
    p.write_bytes(pickle.dumps(_Evil(marker), protocol=0))
    out["protocol-0 pickle with __reduce__"] = (p, code)
    p = tmp / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Evil(marker)}, p)
    out["torch zip checkpoint with __reduce__"] = (p, code)
    p = tmp / "evil_legacy.pt"
    torch.save({"x": _Evil(marker)}, p, _use_new_zipfile_serialization=False)
    out["legacy torch file with __reduce__"] = (p, code)
    notckpt = "not a PyTorch/safetensors checkpoint"
    p = tmp / "README.md"
    p.write_text("# A project\n\nSome text, not a checkpoint.\n" * 20)
    out["text file"] = (p, notckpt)
    p = tmp / "random.pt"
    p.write_bytes(bytes(range(256)) * 8 + os.urandom(512))
    out["random bytes"] = (p, notckpt)
    p = tmp / "empty.pt"
    p.write_bytes(b"")
    out["empty file"] = (p, notckpt)
    good = tmp / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    p = tmp / "truncated.pt"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated zip"] = (p, "truncated")
    return out, marker


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("files"))


KINDS = [
    "plain pickle with __reduce__",
    "protocol-0 pickle with __reduce__",
    "torch zip checkpoint with __reduce__",
    "legacy torch file with __reduce__",
    "text file",
    "random bytes",
    "empty file",
    "truncated zip",
]


@pytest.mark.parametrize("kind", KINDS)
def test_load_model_says_what_the_file_is(files, kind):
    (path, fragment), marker = files[0][kind], files[1]
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert fragment in msg and str(path) in msg and "\n" not in msg, msg
    assert "weights_only" not in msg and "Weights only" not in msg, msg
    if "could run code" in fragment:
        assert "system" in msg  # names the global (posix.system / nt.system)
        assert "not a PyTorch" not in msg
    else:
        assert "could run code" not in msg
    assert not marker.exists()  # nothing was executed


def test_the_evil_files_really_run_code_when_unpickled_unsafely(tmp_path):
    """Control: the fixtures are what they claim (so the tests above can fail)."""
    files, marker = _files(tmp_path)
    pickle.loads(files["plain pickle with __reduce__"][0].read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_cli_one_line_exit_2(files, kind, capsys):
    path, fragment = files[0][kind]
    code = main(["inspect", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert "Traceback" not in err and "weights_only" not in err
