"""Recognise a model file by its content, hash it, and refuse what must never be loaded.

Uploaded models are untrusted. Nothing here unpickles, nor imports torch (the service's web
process checks uploads with it): pickles (``torch.save`` state dicts or modules, ``.pt``/
``.pth``) are recognised by their bytes and refused, and a torch.export archive's structure is
checked so that ``torch.export.load`` will not reach Python's pickle (its weights and constants
must be raw tensor payloads). Its remaining pickled members (sample inputs) must pass torch's
``weights_only`` unpickler, which builds tensors and containers only: that check runs where the
archive is loaded (:func:`reconstruction.models.torch_model.load_torch_export`), which the
service does only in its isolated worker process, as it loads TorchScript (by TorchScript's own
C++ unpickler).
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

from reconstruction.bounded import check_zip
from reconstruction.documents import read_mapping

__all__ = ["ModelError", "ModelFormat", "detect_format", "pickled_members", "sha256_file"]

#: file formats, and ``torch.module`` for trusted in-memory modules (never uploaded)
ModelFormat = Literal["onnx", "torch.export", "torchscript", "torch.module"]

EXPORT_ADVICE = (
    "export the network to ONNX (torch.onnx.export), to a torch.export program "
    "(torch.export.save, .pt2) or, as a legacy format, to TorchScript (torch.jit.save)"
)
#: the largest ``*_config.json`` member of a torch.export archive read (a few hundred bytes a
#: tensor)
MAX_CONFIG_BYTES = 4 * 2**20


class ModelError(ValueError):
    """A model file cannot be accepted; the message says why and what to do."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _zip_format(path: Path) -> ModelFormat:
    check_zip(path)  # before any member is read (ExpansionError: a decompression bomb)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            _check_pt2(z, names)
            return "torch.export"
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        raise ModelError(
            f"{path.name} is a pickled PyTorch file (torch.save: a state dict or a module); "
            f"pickles can run arbitrary code and are never loaded: {EXPORT_ADVICE}"
        )
    raise ModelError(
        f"{path.name} is a zip archive but not a model format we accept: {EXPORT_ADVICE}"
    )


def _check_pt2(z: zipfile.ZipFile, names: list[str]) -> None:
    """Refuse torch.export archives whose loading would call Python's pickle."""
    for name in names:
        leaf = name.rsplit("/", 1)[-1]
        pickled_weight = "/data/weights/" in name and leaf.endswith(".pt")
        pickled_constant = "/data/constants/" in name and (
            leaf.startswith(("custom_obj", "opaque_obj")) or leaf.endswith(".pt")
        )
        if pickled_weight or pickled_constant:
            raise ModelError(
                f"the torch.export archive holds a pickled member ({name}); "
                "save it again with a current torch.export.save"
            )
        if name.endswith("_config.json"):
            for entry in _payload_config(z, name):
                if entry.get("use_pickle"):
                    raise ModelError(
                        f"the torch.export archive stores {entry.get('path_name')} as a pickle; "
                        "only raw tensor payloads are accepted"
                    )


def _payload_config(z: zipfile.ZipFile, name: str) -> list[dict[str, Any]]:
    """The entries of a weights or constants ``*_config.json`` member (how each tensor is
    stored), read bounded (:data:`MAX_CONFIG_BYTES`, the documents' nesting bound) and checked
    to be ``{"config": {name: {...}, ...}}``; :class:`ModelError` otherwise."""
    member = f"the torch.export archive member {name}"
    size = z.getinfo(name).file_size
    if size > MAX_CONFIG_BYTES:
        raise ModelError(f"{member} has {size} bytes; at most {MAX_CONFIG_BYTES} are accepted")
    try:
        document = read_mapping(
            z.read(name).decode("utf-8"), member, as_json=True, max_chars=MAX_CONFIG_BYTES
        )
    except UnicodeDecodeError as exc:
        raise ModelError(f"{member} is not UTF-8 JSON (byte {exc.start}: {exc.reason})") from exc
    except ValueError as exc:
        raise ModelError(str(exc)) from exc
    entries = document.get("config", {})
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise ModelError(
            f"{member} is not a torch.export tensor configuration: its 'config' must map each "
            "tensor's name to an object; save it again with torch.export.save"
        )
    return list(entries.values())


def pickled_members(names: list[str]) -> list[str]:
    """The members of a torch.export archive that ``torch.export.load`` unpickles (with
    torch's ``weights_only`` unpickler): its sample inputs and any other ``.pt``/``.pkl``."""
    return [n for n in names if n.rsplit("/", 1)[-1].endswith((".pt", ".pkl"))]


def detect_format(path: str | Path) -> ModelFormat:
    """``"onnx"``, ``"torch.export"`` or ``"torchscript"``, from the file's bytes.

    Raises :class:`ModelError` for pickles and anything unrecognised, and
    :class:`~reconstruction.bounded.ExpansionError` for zip archives that would expand past the
    caps (checked from their declared sizes before any member is read)."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(8)
    if not head:
        raise ModelError(f"{p.name} is empty")
    if head[:1] == b"\x80" or head[:2] == b"\x8a\x0a":
        raise ModelError(
            f"{p.name} is a Python pickle; pickles can run arbitrary code and are never "
            f"loaded: {EXPORT_ADVICE}"
        )
    if zipfile.is_zipfile(p):
        try:
            return _zip_format(p)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise ModelError(f"{p.name} is a damaged zip archive: {exc}") from exc
        except (NotImplementedError, RuntimeError) as exc:  # a compression method, encryption
            raise ModelError(f"{p.name} is a zip archive we cannot read: {exc}") from exc
    # ONNX is a protobuf ModelProto: its first field is ir_version (tag 0x08)
    if head[:1] == b"\x08":
        return "onnx"
    raise ModelError(f"{p.name} is not a model format we accept: {EXPORT_ADVICE}")
