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
import json
import zipfile
from pathlib import Path
from typing import Literal

from reconstruction.bounded import check_zip

__all__ = ["ModelError", "ModelFormat", "detect_format", "pickled_members", "sha256_file"]

#: file formats, and ``torch.module`` for trusted in-memory modules (never uploaded)
ModelFormat = Literal["onnx", "torch.export", "torchscript", "torch.module"]

EXPORT_ADVICE = (
    "export the network to ONNX (torch.onnx.export), to a torch.export program "
    "(torch.export.save, .pt2) or, as a legacy format, to TorchScript (torch.jit.save)"
)


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
            config = json.loads(z.read(name))
            for entry in config.get("config", {}).values():
                if entry.get("use_pickle"):
                    raise ModelError(
                        f"the torch.export archive stores {entry.get('path_name')} as a pickle; "
                        "only raw tensor payloads are accepted"
                    )


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
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise ModelError(f"{p.name} is a damaged zip archive: {exc}") from exc
    # ONNX is a protobuf ModelProto: its first field is ir_version (tag 0x08)
    if head[:1] == b"\x08":
        return "onnx"
    raise ModelError(f"{p.name} is not a model format we accept: {EXPORT_ADVICE}")
