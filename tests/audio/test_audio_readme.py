"""The README's audio worked example runs as written (its Python block, then its e2mc command)."""

import re
import shlex
from pathlib import Path

from e2mc.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_audio_example_runs_as_written(tmp_path, monkeypatch, one_torch_thread):
    block = README.split("<!-- audio:start -->")[1].split("<!-- audio:end -->")[0]
    (code,) = re.findall(r"```python\n(.*?)```", block, flags=re.S)
    (bash,) = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "cache"))
    exec(compile(code, "README.md", "exec"), {})
    words = shlex.split(bash.strip())
    assert words[:2] == ["e2mc", "continue"]
    assert main(words[1:] + ["--set", "train.tensorboard=false", "--set", "train.probe_size=8"]) == 0
    assert (tmp_path / "runs" / "audio" / "checkpoints" / "last.pt").is_file()
