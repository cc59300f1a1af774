"""Published models by name (``e2mc.models.zoo``) against a loopback HTTP server.

The server (a thread, ``http.server``, port 0) serves files the tests make under the official
URLs' paths; ``E2MC_ZOO_URL_BASE`` points the zoo at it and ``TORCH_HOME`` the cache at a temp
folder. The served VICReg file is made the way VICReg's ``main_vicreg.py`` saves ``model.pth``:
``torch.save(dict(epoch=..., model=<DDP-wrapped VICReg>.state_dict(), optimizer=...))`` with the
module attribute names ``backbone`` / ``projector`` (a tiny backbone, so the file is small).
"""

import dataclasses
import hashlib
import http.server
import json
import re
import socket
import threading

import pytest
import torch
from torch import nn

from e2mc.cli import main
from e2mc.errors import CheckpointError
from e2mc.models import load_model, zoo
from e2mc.models.backbones import ResNetMini

NAME, PATH = "vicreg:resnet50-full", "/vicreg/resnet50_fullckpt.pth"


class Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` ({path: bytes}) with Range support; ``cut[path] = n`` makes the next GET of
    ``path`` send the full length in its header, then only ``n`` bytes, then close."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files, self.cut, self.requests = {}, {}, []

    @property
    def base(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        n = srv.cut.pop(self.path, None)
        self.wfile.write(body if n is None else body[:n])
        if n is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def server(monkeypatch, tmp_path):
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("E2MC_ZOO_URL_BASE", srv.base)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield srv
    srv.shutdown()
    srv.server_close()


class _VICReg(nn.Module):
    """The official VICReg module's attribute names (``backbone``, ``projector``: Linear/BN/ReLU x2,
    then Linear without bias), on a tiny backbone."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNetMini((8, 16, 32))
        self.projector = nn.Sequential(
            nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(True), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(True)
        )
        self.projector.append(nn.Linear(64, 64, bias=False))


class _DDP(nn.Module):
    """What DistributedDataParallel's state_dict looks like: the model under ``module.``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


@pytest.fixture(scope="module")
def vicreg_file(tmp_path_factory):
    torch.manual_seed(0)
    model = _DDP(_VICReg())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.module.projector(model.module.backbone(torch.randn(4, 3, 8, 8))).sum().backward()
    opt.step()
    path = tmp_path_factory.mktemp("vicreg") / "model.pth"
    torch.save(dict(epoch=100, model=model.state_dict(), optimizer=opt.state_dict()), path)
    return path.read_bytes(), model.module


def cache_file(tmp_path):
    return tmp_path / "torch" / "hub" / "checkpoints" / "resnet50_fullckpt.pth"


def left(tmp_path):
    """The cache's files but the download's lock (``.<name>.lock``, kept)."""
    return [p.name for p in cache_file(tmp_path).parent.iterdir() if not p.name.endswith(".lock")]


def set_row(monkeypatch, **kw):
    monkeypatch.setitem(zoo.ZOO, NAME, dataclasses.replace(zoo.ZOO[NAME], **kw))


def test_download_then_load(server, vicreg_file, tmp_path, capfd):
    data, ref = vicreg_file
    server.files[PATH] = data
    model, report = load_model(NAME)
    file = cache_file(tmp_path)
    assert file.read_bytes() == data and not file.with_name(file.name + ".part").exists()
    assert report.source["sha256"] == hashlib.sha256(data).hexdigest()
    assert report.source["url"] == server.base + PATH and report.source["cache_path"] == str(file)
    assert report.path == str(file) and report.format == "vicreg" and report.epoch == 100
    assert report.heads == ["projector"] and report.arch == "resnet_mini:8-16-32"
    sd = model.state_dict()
    assert all(torch.equal(sd[f"backbone.{k}"], v) for k, v in ref.backbone.state_dict().items())
    assert all(torch.equal(sd[f"projector.{k}"], v) for k, v in ref.projector.state_dict().items())
    err = capfd.readouterr().err
    assert "resnet50_fullckpt.pth" in err and "100%" in err  # tqdm's bar
    _, again = load_model(NAME)  # from the cache: no second request
    assert len(server.requests) == 1 and again.source == report.source


def test_resume_after_cut_connection(server, vicreg_file, tmp_path, monkeypatch):
    data = vicreg_file[0]
    server.files[PATH] = data
    server.cut[PATH] = 1000
    set_row(monkeypatch, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    _, report = load_model(NAME)
    assert server.requests == [(PATH, None), (PATH, "bytes=1000-")]
    assert cache_file(tmp_path).read_bytes() == data
    assert report.source["sha256"] == hashlib.sha256(data).hexdigest()


def test_resume_a_part_file_left_by_a_killed_download(server, vicreg_file, tmp_path):
    data = vicreg_file[0]
    server.files[PATH] = data
    part = cache_file(tmp_path).with_name("resnet50_fullckpt.pth.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:777])
    load_model(NAME)
    assert server.requests == [(PATH, "bytes=777-")] and cache_file(tmp_path).read_bytes() == data


def one_line_error(fn, match):
    with pytest.raises(CheckpointError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_truncated_file_refused(server, vicreg_file, tmp_path, monkeypatch):
    data = vicreg_file[0]
    server.files[PATH] = data[:-100]  # the server's copy is short
    set_row(monkeypatch, size=len(data))
    msg = one_line_error(lambda: load_model(NAME), "not the .* bytes e2mc expects")
    assert server.base + PATH in msg and str(cache_file(tmp_path)) in msg
    assert left(tmp_path) == []  # no complete file, no .part


def test_wrong_file_refused(server, vicreg_file, tmp_path, monkeypatch):
    data = vicreg_file[0]
    server.files[PATH] = data[:100] + bytes([data[100] ^ 1]) + data[101:]  # same size, one bit off
    set_row(monkeypatch, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    one_line_error(lambda: load_model(NAME), "sha256 .*not the expected")
    assert left(tmp_path) == []


def test_404_and_no_network(server, tmp_path, monkeypatch):
    msg = one_line_error(lambda: load_model(NAME), "HTTP 404")
    assert server.base + PATH in msg and f"place it at {cache_file(tmp_path)}" in msg
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("E2MC_ZOO_URL_BASE", closed)
    msg = one_line_error(lambda: load_model(NAME), "cannot download")
    assert closed + PATH in msg and f"place it at {cache_file(tmp_path)}" in msg


def test_unknown_name_lists_close_ones():
    msg = one_line_error(lambda: load_model("vicreg:resnet50-ful"), "not in e2mc's model zoo")
    assert "vicreg:resnet50-full" in msg and "e2mc zoo" in msg
    one_line_error(lambda: load_model("vicreg:resnet200x2-full"), "listed for reference only")
    msg = one_line_error(lambda: load_model("byol:resnet50-imagenet"), "listed for reference only")
    assert "no longer accessible" in msg and "by its path" in msg


def test_cli_zoo_inspect_and_continue(server, vicreg_file, tmp_path, capsys):
    server.files[PATH] = vicreg_file[0]
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in zoo.ZOO) and "https://dl.fbaipublicfiles.com/vicreg/resnet50.pth" in out
    assert main(["inspect", NAME]) == 0
    out = capsys.readouterr().out
    sha = hashlib.sha256(vicreg_file[0]).hexdigest()
    assert f"sha256     : {sha}" in out and f"source     : {NAME} <- {server.base}{PATH}" in out
    assert main(["zoo"]) == 0 and f"{NAME} *" in capsys.readouterr().out  # marked as cached
    assert main(["zoo", "--download", NAME]) == 0
    assert capsys.readouterr().out.startswith(f"{cache_file(tmp_path)}\nurl    : {server.base}{PATH}\nsha256 : {sha}")
    assert main(["export", NAME, "--out", str(tmp_path / "back.pth")]) == 0  # back in VICReg's layout
    assert "(vicreg layout, from vicreg)" in capsys.readouterr().out
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    orig = torch.load(cache_file(tmp_path), weights_only=True)
    assert back["model"].keys() == orig["model"].keys()
    assert all(torch.equal(v, orig["model"][k]) for k, v in back["model"].items())
    run = tmp_path / "run"
    sets = ["data.dataset=digits", "data.image_size=8", "data.limit=64", "optim.batch_size=32"]
    sets += ["train.max_steps=1", "train.probe_size=16", "train.tensorboard=false"]
    argv = ["continue", NAME, *(a for s in sets for a in ("--set", s)), "--out", str(run)]
    assert main(argv) == 0
    logged = capsys.readouterr()
    assert f"sha256     : {sha}" in logged.out + logged.err  # the run prints the load report
    source = json.loads((run / "load_report.json").read_text())["source"]
    assert source["sha256"] == sha and source["cache_path"] == str(cache_file(tmp_path))
    assert main(["inspect", "swav:resnet50-80ep"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "swav:resnet50-800ep" in err


def test_registry_rows_are_consistent():
    from e2mc.models.adapters import ADAPTERS
    from e2mc.models.heads import METHOD_HEADS

    rows = list(zoo.ZOO.values())
    assert all(r.layout in ADAPTERS and r.method in METHOD_HEADS for r in rows)
    assert all(r.name.startswith(r.method + ":") for r in rows)
    assert all(r.url.startswith("https://dl.fbaipublicfiles.com/") for r in rows if not r.unsupported)
    gone = [r.name for r in rows if r.url.startswith("https://drive.google.com/")]  # solo-learn's, withdrawn
    assert len(gone) == 4 and all(zoo.ZOO[n].unsupported and zoo.ZOO[n].layout == "byol" for n in gone)
    files = [r.file_name for r in rows]
    assert len(set(files)) == len(files)  # one cache file per release (both SimSiam URLs end in checkpoint_0099)
    assert {"vicreg:resnet50", "vicreg:resnet50-full", "swav:resnet50-800ep", "simsiam:resnet50-bs256"} <= set(zoo.ZOO)


@pytest.mark.parametrize("base", ["not a url", "ftp://mirror.example/x", "http://"])
def test_a_malformed_mirror_address_is_one_line(base, tmp_path, monkeypatch):
    monkeypatch.setenv("E2MC_ZOO_URL_BASE", base)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="E2MC_ZOO_URL_BASE=.* is not an http\\(s\\) address"):
        load_model("vicreg:resnet50")
    assert not any(tmp_path.rglob("*.pth*"))  # nothing was started
