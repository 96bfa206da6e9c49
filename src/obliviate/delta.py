"""Deltas: the change a request made to the trained tensors, saved as safetensors; drift."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save



_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask requires setting it; restored immediately


def layer_group(name: str) -> str:
    """Coarse location of a tensor for per-group drift: down_blocks.N / mid_block / up_blocks.N / other."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def atomic_write(path: Path, write) -> None:
    """The one atomic writer: `write(f)` fills a temp file in the same directory (a binary
    file object), which is fsynced and renamed over `path` with os.replace, so readers never
    see a half-written file and a failure (a full disk) leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.filename is None:  # errors on a descriptor (a full disk) carry no path: name it
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(out: Path):
    """A new directory written whole or not at all: the block fills a hidden sibling
    (`.NAME.partial`), renamed to `out` when it ends; on any error it is removed."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)  # an unwritable destination fails now, before any long work
    try:
        yield tmp
    except BaseException:  # e.g. a full disk: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # an empty directory the caller allowed
        out.rmdir()
    tmp.rename(out)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes that depend only on the tensors and the metadata's content.

    safetensors writes its metadata from a hash map whose order changes from process to
    process, so identical deltas got different file hashes (and so different parent hashes
    and evaluation keys). The header is re-serialised with sorted keys; the tensor data and
    its offsets are untouched, so any safetensors reader loads the file as before.
    """
    raw = save(tensors, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def save_delta(path: Path, delta: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    atomic_write_bytes(path, canonical_safetensors({k: v.detach().float().cpu().contiguous() for k, v in delta.items()}, metadata))


def save_verified_tensor(path: Path, tensor: torch.Tensor) -> None:
    """A cache file that carries the sha256 of its data, so a damaged copy is noticed."""
    t = tensor.detach().cpu().contiguous()
    atomic_write_bytes(path, canonical_safetensors({"tensor": t}, {"sha256": _tensor_sha(t)}))


def load_verified_tensor(path: Path) -> torch.Tensor | None:
    """The tensor of a `save_verified_tensor` file, or None when the file is missing,
    truncated, altered or from an older version without a checksum (callers regenerate)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            expected = (f.metadata() or {}).get("sha256")
            t = f.get_tensor("tensor")
    except Exception:  # any parse failure of a damaged file: header, offsets, size
        return None
    return t if expected is not None and _tensor_sha(t) == expected else None


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of named tensors (float32 values, names and shapes): identifies a
    model that exists only in memory, e.g. an early-stopping snapshot."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().float().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensor_sha(t: torch.Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load_delta(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"delta file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"delta file {path} is corrupt or not safetensors: {err}") from None


def file_hash(path: Path, into=None) -> str:
    """The one file hash: sha256 of the file's bytes, read in chunks. With `into` (a hashlib
    object) the bytes are added to that running hash instead (several files, one identity)."""
    h = hashlib.sha256() if into is None else into
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_delta(params: dict[str, torch.nn.Parameter], delta: dict[str, torch.Tensor]) -> None:
    unknown = [k for k in delta if k not in params]
    if unknown:
        raise ValueError(f"delta names tensors the model does not have, e.g. {unknown[:3]}")
    for name, value in delta.items():
        if params[name].shape != value.shape:
            raise ValueError(f"delta tensor {name} has shape {tuple(value.shape)}, the model {tuple(params[name].shape)}")


@torch.no_grad()
def apply_delta(module: torch.nn.Module, delta: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    params = dict(module.named_parameters())
    _check_delta(params, delta)
    for name, value in delta.items():
        params[name].add_(value.to(params[name].device, params[name].dtype), alpha=scale)


@contextlib.contextmanager
def swapped(params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]):
    """The one weight swap: inside the block the parameters named in `values` hold those
    values; afterwards exactly their own values again (restored from a copy, not by
    subtracting, which float rounding perturbs), also when the block raises."""
    saved = {n: params[n].detach().clone() for n in values}
    try:
        with torch.no_grad():
            for n, v in values.items():
                params[n].copy_(v.to(params[n].device, params[n].dtype))
        yield
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)


@contextlib.contextmanager
def with_delta(module: torch.nn.Module, delta: dict[str, torch.Tensor] | None):
    """`module` with `delta` added inside the block, its own weights after."""
    params = dict(module.named_parameters())
    delta = delta or {}
    _check_delta(params, delta)
    with swapped(params, {n: params[n].detach() + v.to(params[n].device, params[n].dtype) for n, v in delta.items()}):
        yield module


def drift(delta: dict[str, torch.Tensor]) -> dict:
    """L1 and L2 norms of a change, overall and per layer group."""
    groups: dict[str, dict[str, float]] = {}
    total_l1, total_sq = 0.0, 0.0
    for name, value in delta.items():
        v = value.detach().double()
        l1, sq = float(v.abs().sum()), float((v * v).sum())
        g = groups.setdefault(layer_group(name), {"l1": 0.0, "l2": 0.0})
        g["l1"] += l1
        g["l2"] += sq  # squared for now
        total_l1 += l1
        total_sq += sq
    for g in groups.values():
        g["l2"] = g["l2"] ** 0.5
    return {"l1": total_l1, "l2": total_sq**0.5, "groups": dict(sorted(groups.items()))}
