"""Content-addressed storage: every upload and artefact is kept under its SHA-256, computed
while streaming, and re-verified before use."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy.orm import Session

from app.errors import AppError, TooLarge
from reconstruction.models.formats import sha256_file

__all__ = ["CHUNK", "Spooled", "Store", "StoreCorrupted"]

CHUNK = 1 << 20


class StoreCorrupted(AppError):
    """A stored object no longer matches its hash."""

    status_code = 500


@dataclass(frozen=True)
class Spooled:
    """An upload copied to the store's scratch area, hashed, not yet committed."""

    path: Path
    sha256: str
    size: int


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.scratch = root / "tmp"
        for folder in (self.objects, self.scratch, root / "audits"):
            folder.mkdir(parents=True, exist_ok=True)

    def workdir(self, prefix: str) -> Path:
        """A private scratch folder (mode 0700) inside the store's volume."""
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.scratch))

    def spool(self, source: BinaryIO, into: Path, name: str, *, limit: int) -> Spooled:
        """Copy ``source`` to ``into/name`` in chunks (constant memory), hashing as it goes;
        :class:`TooLarge` past ``limit`` bytes (and nothing is kept)."""
        digest = hashlib.sha256()
        size = 0
        target = into / name
        with open(target, "wb") as out:
            while block := source.read(CHUNK):
                size += len(block)
                if size > limit:
                    out.close()
                    target.unlink(missing_ok=True)
                    raise TooLarge(f"upload {name!r} exceeds the limit of {limit} bytes")
                digest.update(block)
                out.write(block)
        return Spooled(target, digest.hexdigest(), size)

    def path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def commit(self, spooled: Spooled) -> bool:
        """Move a spooled file into the store under its hash; False when it was already there."""
        target = self.path(spooled.sha256)
        if target.exists():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled.path, target)
        os.chmod(target, 0o444)
        return True

    def commit_with(self, spooled: Iterable[Spooled], session: Session) -> None:
        """Move the files into the store and commit the database transaction that records
        them, as one step: when the commit fails, the objects this call added are removed."""
        added = [s.sha256 for s in spooled if self.commit(s)]
        try:
            session.commit()
        except Exception:
            for sha in added:
                self.discard(sha)
            raise

    def add(self, path: Path) -> str:
        """Hash a file the service wrote itself (in chunks), move it into the store under its
        hash, and return the hash."""
        sha256 = sha256_file(path, CHUNK)
        self.commit(Spooled(path, sha256, path.stat().st_size))
        return sha256

    def discard(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def verified(self, sha256: str) -> Path:
        """The stored object, after checking its bytes still hash to ``sha256``."""
        path = self.path(sha256)
        try:
            actual = sha256_file(path, CHUNK)
        except OSError as exc:
            raise StoreCorrupted(f"stored object {sha256} is missing: {exc}") from exc
        if actual != sha256:
            raise StoreCorrupted(f"stored object {sha256} does not match its hash")
        return path

    def copy_out(self, sha256: str, target: Path) -> None:
        shutil.copyfile(self.verified(sha256), target)
