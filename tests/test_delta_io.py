"""The one weight swap, the one atomic writer and the one file hash (delta.py)."""
import hashlib
import os

import pytest
import torch

from obliviate.delta import atomic_directory, atomic_write, file_hash, swapped, with_delta
from obliviate.trainer import Hook


def _module():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_swapped_and_with_delta_restore_the_exact_weights_even_on_error():
    m = _module()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    params = dict(m.named_parameters())
    delta = {"0.weight": torch.full((4, 3), 0.1), "1.bias": torch.tensor([1e-7, 3.0])}  # 1e-7 is lost in a subtract-back
    with with_delta(m, delta) as same:
        assert same is m
        assert torch.equal(params["0.weight"], before["0.weight"] + 0.1)
        assert torch.equal(params["0.bias"], before["0.bias"])  # untouched tensors stay
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())  # bit-exact
    with pytest.raises(RuntimeError, match="boom"):
        with swapped(params, {"1.weight": torch.zeros(2, 4)}):
            assert not params["1.weight"].any()
            raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())
    with pytest.raises(ValueError, match="does not have"):
        with with_delta(m, {"nope": torch.zeros(1)}):
            pass
    with pytest.raises(ValueError, match="shape"):
        with with_delta(m, {"0.weight": torch.zeros(3, 4)}):
            pass
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old"

    def half(f):
        f.write(b"new, half")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_write(path, half)
    assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["f.bin"]  # no temp file left
    torch_state = {"x": torch.arange(5)}
    atomic_write(path, lambda f: torch.save(torch_state, f))  # writers that take a file object
    assert torch.equal(torch.load(path)["x"], torch_state["x"])


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(OSError):
        with atomic_directory(out) as tmp:
            (tmp / "a").write_text("1")
            raise OSError(28, "No space left on device")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()
    assert (out / "a").read_text() == "1" and list(tmp_path.iterdir()) == [out]


def test_file_hash_alone_and_into_a_running_hash(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (5 << 20))  # more than one read chunk
    b.write_bytes(b"yz")
    assert file_hash(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    h = hashlib.sha256()
    file_hash(a, into=h)
    file_hash(b, into=h)
    assert h.hexdigest() == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()


def test_a_hook_reports_nothing_unless_it_says_so():
    from obliviate.methods.conabl import ConAbl, ConAblSettings
    from obliviate.regularizers.projection import Projection, ProjectionSettings

    assert Hook().report() == {}
    method = ConAbl(ConAblSettings())
    method.anchor = None
    assert method.report() == {}
    method.anchor = "circle"
    assert method.report() == {"anchor": "circle"}
    proj = Projection(ProjectionSettings())
    proj.concepts = ["lava", "ice"]
    assert proj.report() == {"projection_concepts": ["lava", "ice"]}
