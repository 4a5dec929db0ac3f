"""Bounded parsing: check what a compressed file would expand to before anything expands it.

Uploaded archives and images are untrusted. Zip archives (torch.export ``.pt2``, TorchScript)
are judged by the sizes their central directory declares, against an absolute cap and a ratio
to the file's own size, before any member is read; gzip streams (``.nii.gz``) are inflated in
chunks into nothing, counting, and refused as soon as they pass the cap, so memory stays
constant whatever the file claims.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

__all__ = [
    "MAX_ARCHIVE_BYTES",
    "MAX_ARCHIVE_RATIO",
    "MAX_DECODED_BYTES",
    "ExpansionError",
    "check_gzip",
    "check_zip",
]

#: the most a model archive may expand to, all members together
MAX_ARCHIVE_BYTES = 2 * 2**30
#: the most a model archive may expand relative to its size (torch saves members uncompressed;
#: archives under 16 MiB expanded may exceed the ratio)
MAX_ARCHIVE_RATIO = 20
ARCHIVE_SLACK = 16 * 2**20
#: the most an image file may decode to (pixel or voxel data, any compression)
MAX_DECODED_BYTES = 256 * 2**20
CHUNK = 1 << 16


class ExpansionError(ValueError):
    """A file would expand past the caps (a decompression bomb, or simply too large)."""


def check_zip(path: str | Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> int:
    """The declared expanded size of a zip archive; :class:`ExpansionError` past ``max_bytes``
    or ``MAX_ARCHIVE_RATIO`` times the archive's size. Reads the central directory only."""
    p = Path(path)
    size = p.stat().st_size
    with zipfile.ZipFile(p) as archive:
        expanded = sum(info.file_size for info in archive.infolist())
    allowed = min(max_bytes, max(MAX_ARCHIVE_RATIO * size, ARCHIVE_SLACK))
    if expanded > allowed:
        raise ExpansionError(
            f"{p.name} would expand to {expanded} bytes ({expanded / max(size, 1):.0f} times its "
            f"size); at most {allowed} bytes are accepted"
        )
    return expanded


def check_gzip(path: str | Path, max_bytes: int = MAX_DECODED_BYTES) -> int:
    """The inflated size of a gzip file (every member), counted in constant memory;
    :class:`ExpansionError` as soon as it passes ``max_bytes``."""
    p = Path(path)
    total = 0
    with open(p, "rb") as f:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while block := f.read(CHUNK):
            while block:
                total += len(inflater.decompress(block, CHUNK))
                if total > max_bytes:
                    raise ExpansionError(
                        f"{p.name} expands to more than {max_bytes} bytes; at most "
                        f"{max_bytes} bytes are accepted"
                    )
                if inflater.eof:  # a further gzip member may follow
                    block = inflater.unused_data
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    block = inflater.unconsumed_tail
    return total
