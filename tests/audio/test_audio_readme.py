"""The README's audio worked example runs as written (its Python block, then its e2mc command)."""

import re
import shlex
from pathlib import Path

from e2mc.cli import main

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_audio_example_runs_as_written(tmp_path, monkeypatch, capsys, one_torch_thread):
    block = README.split("<!-- audio:start -->")[1].split("<!-- audio:end -->")[0]
    (code,) = re.findall(r"```python\n(.*?)```", block, flags=re.S)
    (bash,) = re.findall(r"```bash\n(.*?)```", block, flags=re.S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("E2MC_CACHE", str(tmp_path / "cache"))
    exec(compile(code, "README.md", "exec"), {})
    train, evaluate = (shlex.split(line) for line in bash.strip().splitlines())
    assert train[:2] == ["e2mc", "continue"] and evaluate[:2] == ["e2mc", "evaluate"]
    assert main(train[1:] + ["--set", "train.tensorboard=false", "--set", "train.probe_size=8"]) == 0
    assert (tmp_path / "runs" / "audio" / "checkpoints" / "last.pt").is_file()
    assert main(evaluate[1:] + ["--device", "cpu"]) == 0
    table = README.split("<!-- audio:end -->")[1].split("```text")[1].split("```")[0].strip()
    assert table.splitlines()[2] in capsys.readouterr().out  # the README's table header, as printed
