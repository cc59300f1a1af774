import pytest
import torch

from e2mc.errors import DataError
from e2mc.evaluation.features import extract_features, file_sha256, state_dict_sha256


def test_extract_matches_manual_forward_and_caches(tiny_net, colour_data, tmp_path):
    train, _ = colour_data
    fs = extract_features(tiny_net, train, batch_size=7, which=("backbone", "projector"), cache_dir=tmp_path)
    assert fs["backbone"].shape == (60, 8) and fs["projector"].shape == (60, 6)
    assert fs.labels.dtype == torch.int64 and torch.equal(fs.labels, train.tensors[1])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    tiny_net.eval()
    with torch.no_grad():
        ref = tiny_net.embed((train.tensors[0].float() / 255 - mean) / std)
    assert fs["backbone"].dtype == torch.float16
    assert torch.allclose(fs["backbone"].float(), ref, atol=1e-5, rtol=1e-3)  # fp16: 11-bit mantissa
    assert tiny_net.training is False  # mode restored (it was eval here)
    assert len(list(tmp_path.glob("*/progress.json"))) == 1
    again = extract_features(tiny_net, train, batch_size=7, which=("backbone", "projector"), cache_dir=tmp_path)
    assert again.meta["cached"] and torch.equal(again["backbone"], fs["backbone"])
    # a different model gets a different key
    other = type(tiny_net)(seed=1)
    extract_features(other, train, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*/progress.json"))) == 2


def test_hashes(tmp_path, tiny_net):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert state_dict_sha256(tiny_net) == state_dict_sha256(type(tiny_net)(seed=0))
    assert state_dict_sha256(tiny_net) != state_dict_sha256(type(tiny_net)(seed=2))


class _NaNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 4)

    def embed(self, x):
        return self.lin(x.mean(dim=(2, 3))) * float("nan")


class _Broken(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(5, 4)

    def embed(self, x):
        return self.lin(x.mean(dim=(2, 3)))  # 3 channels into a 5-input layer


@pytest.mark.parametrize("net,match", [(_NaNNet, "NaN"), (_Broken, "failed at batch 0")])
def test_failed_extraction_writes_no_cache(net, match, colour_data, tmp_path):
    with pytest.raises(DataError, match=match):
        extract_features(net(), colour_data[0], cache_dir=tmp_path)
    assert list(tmp_path.glob("*/*")) == []  # no entry (the key's lock file may remain)


def test_projector_missing(colour_data, tmp_path):
    with pytest.raises(DataError, match="no projector"):
        extract_features(_Broken(), colour_data[0], which=("projector",), cache_dir=tmp_path)


def test_bf16_autocast_close(tiny_net, colour_data, tmp_path):
    a = extract_features(tiny_net, colour_data[0], use_cache=False, cache_dtype="float32")
    b = extract_features(tiny_net, colour_data[0], amp_dtype="bf16", use_cache=False, cache_dtype="float32")
    assert b["backbone"].dtype == torch.float32
    assert torch.allclose(a["backbone"], b["backbone"], atol=0.05, rtol=0.05)


def test_dino_head_bottleneck_is_the_projector_row(colour_data, tmp_path):
    """A DINO model has no ``projector``: its head's bottleneck (``head.mlp``, before the L2
    normalisation and the prototypes) is what the projector rows (features, RankMe) read, as the
    collapse guard does; checked against ``head.mlp`` applied to the returned backbone features."""
    from e2mc.evaluation.api import evaluate
    from e2mc.metrics import rankme
    from e2mc.models.model import SSLModel

    torch.manual_seed(0)
    m = SSLModel.build("dino", "resnet_mini:8-8-16", hidden=32, bottleneck=8, out=64).eval()
    assert m.projector is None
    train, test = colour_data
    fs = extract_features(
        m, train, batch_size=16, which=("backbone", "projector"), cache_dir=tmp_path, cache_dtype="float32"
    )
    with torch.no_grad():
        want = m.head.mlp(fs["backbone"])
    assert fs["projector"].shape == (len(train), 8)
    torch.testing.assert_close(fs["projector"], want, atol=1e-5, rtol=1e-4)
    res = evaluate(m, (train, test), protocols=["rankme"], settings={"eval.use_cache": False})
    ft = extract_features(
        m, test, batch_size=16, which=("backbone", "projector"), cache_dir=tmp_path, cache_dtype="float32"
    )
    assert res["rankme"]["projector"] == pytest.approx(float(rankme(ft["projector"])), rel=1e-4)
