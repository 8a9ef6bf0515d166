"""Writing files so that an interrupted write never destroys the previous version."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync, then rename:
    readers see the old file or the new one, never half of one (an OSError: "cannot write PATH: ...")."""
    with _cannot_write(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file ordinary permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


BUILD_MARKER = ".spidec-build"  # in every folder spidec compile writes: "spidec VERSION"


def _is_build(out: Path) -> bool:
    """A folder spidec compile wrote: its marker, or (builds from before the marker) a build manifest."""
    if (out / BUILD_MARKER).is_file():
        return True
    try:
        import json

        return "target" in json.loads((out / "spidec.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_build_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Where ``spidec compile`` may write: a new or empty folder, or one it wrote before (its own files
    are rewritten, the user's checkpoints, logs and results in it are kept); any other folder only
    with ``force``."""
    from .errors import SpidecError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpidecError(f"output {str(out)!r} is a file; give a folder for the build", hint="e.g. -o build/model")
    if force or not out.exists() or _is_build(out):
        return out
    try:
        present = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise SpidecError(f"cannot read the output folder {str(out)!r}: {e.strerror}") from None
    if present:
        shown = ", ".join(repr(n) for n in present[:3]) + (f" and {len(present) - 3} more" if len(present) > 3 else "")
        raise SpidecError(f"output folder {str(out)!r} holds other files ({shown}) and no spidec build; "
                          "nothing was written", hint="give a new or empty folder, or add --force to write into it")
    return out


def _real_dir(path: Path) -> None:
    """Make folder ``path`` of a build (its parent exists); a symbolic link at its name is replaced
    by a folder, never followed."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


class BuildFiles:
    """The files of one build, written all or nothing: each into a temporary file beside its name
    (created exclusively, never through a symbolic link), and only when every one is written are
    they renamed onto their names, so a full disk or a crash leaves the previous build whole and a
    symbolic link at a name is replaced, not followed.

        with BuildFiles(out) as files:
            files.write_text("model.c", text)
    """

    def __init__(self, out: str | os.PathLike) -> None:
        from . import __version__

        self.out = Path(out)
        self._staged: list[tuple[Path, Path]] = []
        with _cannot_write(self.out):  # (the folder itself may be a link the user made: it is followed)
            self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / BUILD_MARKER).is_file():  # first: a build cut short is still known as spidec's
            write_bytes(self.out / BUILD_MARKER, f"spidec {__version__}\n".encode())

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.out / name
        with _cannot_write(path):
            if path.parent != self.out:
                for parent in reversed(path.relative_to(self.out).parents[:-1]):
                    _real_dir(self.out / parent)
            self._staged.append((_temp_file(path, data), path))
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def copy(self, src: Path, name: str) -> Path:
        return self.write_bytes(name, Path(src).read_bytes())

    def __enter__(self) -> BuildFiles:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None:
                for tmp, path in self._staged:
                    with _cannot_write(path):
                        os.replace(tmp, path)
        finally:
            for tmp, _path in self._staged:
                Path(tmp).unlink(missing_ok=True)
            self._staged = []


def _temp_file(path: Path, data: bytes, sync: bool = False) -> Path:
    """``data`` in a new temporary file beside ``path`` (O_EXCL | O_NOFOLLOW), with ordinary permissions."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` by ``data`` atomically (a symbolic link at ``path`` is replaced, not followed)."""
    path = Path(path)
    with _cannot_write(path):
        tmp = _temp_file(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def os_error_text(e: OSError) -> str:
    """``[Errno 28] No space left on device``: an OSError without its (perhaps temporary) file name."""
    return f"[Errno {e.errno}] {e.strerror}" if e.errno is not None and e.strerror else str(e)


@contextlib.contextmanager
def _cannot_write(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` (a full disk, a read-only file system, no permission) as
    the one-line SpidecError "cannot write PATH: [Errno N] ..."."""
    from .errors import SpidecError

    try:
        yield
    except OSError as e:
        raise SpidecError(f"cannot write {path}: {os_error_text(e)}") from None


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())
