"""Verified downloads into a content-addressed cache, and the safe ``.lam`` model archive.

Downloads (:func:`download`) stream over HTTP(S) with :mod:`urllib` (``file://`` URLs and local paths work
too) into ``<cache>/downloads/<sha256>.part``, resume with a ``Range`` request after an interruption,
verify the sha256 and only then move the file atomically to ``<cache>/downloads/<sha256>``. A lock file
serialises processes that fetch the same file.

A ``.lam`` archive (:func:`pack_model` / :func:`unpack_model`) is an uncompressed zip holding exactly
``model.safetensors`` and ``metadata.json``; unpacking refuses anything else. Nothing here ever unpickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

try:  # POSIX only; on other platforms concurrent downloads are not serialised.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ChecksumError",
    "DownloadError",
    "IncompleteDownloadError",
    "UnsafeArchiveError",
    "cache_dir",
    "download",
    "pack_model",
    "sha256_file",
    "unpack_model",
    "validate_export_dir",
]

CHUNK_BYTES = 1 << 20
MODEL_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
ARCHIVE_MEMBERS = (METADATA_FILE, MODEL_FILE)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
MAX_METADATA_BYTES = 64 * 1024 * 1024
MAX_MODEL_BYTES = 16 * 1024**3
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class DownloadError(RuntimeError):
    """A file could not be downloaded (HTTP error, connection failure, unexpected size)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


class IncompleteDownloadError(DownloadError):
    """The connection ended before the whole file arrived; the ``.part`` file is kept for resuming."""


class UnsafeArchiveError(ValueError):
    """A model archive or export directory holds something other than safetensors weights + JSON metadata."""


# --------------------------------------------------------------------------------------------- cache


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$LAM_CACHE``, else ``$XDG_CACHE_HOME/lam``, else ``~/.cache/lam``."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("LAM_CACHE"):
        return Path(os.environ["LAM_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lam"
    return Path.home() / ".cache" / "lam"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(value: str, what: str = "sha256") -> str:
    """Normalise a hex sha256 (lower case) or raise a clear ``ValueError``."""
    sha = str(value).strip().lower()
    if not _SHA256_RE.match(sha):
        raise ValueError(f"{what} must be 64 hexadecimal digits, got {value!r}")
    return sha


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock (``fcntl.flock``) held for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ download


class _Restart(Exception):
    """The server cannot continue the partial file: start again from byte 0."""


class _Transient(Exception):
    """The transfer broke off part-way; retrying with a Range request may finish it."""


def _local_path(url: str) -> Path | None:
    if url.startswith("file://"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"file URL {url!r} names a remote host; only local file:// URLs are supported")
        return Path(urllib.request.url2pathname(parsed.path))
    if url.startswith(("http://", "https://")):
        return None
    if "://" in url:
        raise DownloadError(f"unsupported URL scheme in {url!r} (use http://, https://, file:// or a path)")
    return Path(url).expanduser()


def _open(url: str, offset: int, timeout: float) -> tuple[IO[bytes], int, int | None]:
    """Open ``url`` at byte ``offset`` if possible: returns (stream, start byte, total size or None)."""
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            raise DownloadError(f"{url}: no such file")
        total = local.stat().st_size
        fh = open(local, "rb")
        start = offset if 0 < offset <= total else 0
        fh.seek(start)
        return fh, start, total
    headers = {"User-Agent": "lam-hub (python urllib)", "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset > 0:
            raise _Restart from exc
        raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"could not connect to {url}: {exc.reason}") from exc
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"could not connect to {url}: {exc}") from exc
    length = resp.headers.get("Content-Length")
    length_int = int(length) if length and length.isdigit() else None
    if offset > 0 and resp.status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            resp.close()
            raise _Restart
        total = int(match.group(3)) if match.group(3) != "*" else None
        return resp, offset, total
    return resp, 0, length_int  # 200: the server ignored Range (or none was sent)


def _fetch(url: str, part: Path, size: int | None, timeout: float, progress: bool) -> None:
    """Append the missing bytes of ``url`` to ``part`` (restarting when the server cannot resume)."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset == size:
        return  # complete from an earlier run that stopped before verification
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    try:
        stream, start, total = _open(url, offset, timeout)
    except _Restart:
        part.unlink(missing_ok=True)
        stream, start, total = _open(url, 0, timeout)
    with contextlib.closing(stream):
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url} has {total} bytes but the registry entry says {size}")
        received = start
        with open(part, "ab" if start > 0 else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=Path(urllib.parse.urlparse(url).path).name or url, disable=not progress, leave=False,
        ) as bar:
            try:
                while chunk := stream.read(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if size is not None and received > size:
                        part.unlink(missing_ok=True)
                        raise DownloadError(f"{url} sent more than the expected {size} bytes; aborted")
            except (http.client.IncompleteRead, OSError) as exc:
                out.flush()
                raise _Transient(f"transfer of {url} broke off after {received} bytes ({exc})") from exc
            finally:
                out.flush()
                os.fsync(out.fileno())
    if total is not None and received < total:
        raise _Transient(f"connection to {url} closed after {received} of {total} bytes")


def download(
    url: str,
    sha256: str,
    dest: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    cache: str | os.PathLike | None = None,
    size: int | None = None,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Download ``url`` once, verify its sha256, and return the verified local file.

    The file is stored content-addressed as ``<dest>/<sha256>``, where ``dest`` defaults to
    ``cache_dir(cache) / "downloads"``; a second call with the same hash makes no request (the cached
    file is re-hashed and downloaded again if it was damaged). An interrupted transfer leaves
    ``<sha256>.part``; the next attempt (up to ``retries`` within this call, or a later call) resumes it
    with an HTTP ``Range`` request, or restarts cleanly when the server does not honour ranges.
    The file is moved into place with :func:`os.replace` only after verification; a wrong hash deletes
    the partial file and raises :class:`ChecksumError`. ``url`` may be http(s)://, file:// or a local path.
    ``size`` (bytes, optional) aborts transfers that are longer than announced.
    """
    sha = check_sha256(sha256)
    folder = Path(dest).expanduser() if dest is not None else cache_dir(cache) / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / sha, folder / f"{sha}.part"
    with file_lock(folder / f"{sha}.lock"):
        if final.is_file():
            if sha256_file(final) == sha:
                return final
            warnings.warn(f"cached file {final} is damaged (sha256 mismatch); downloading it again", stacklevel=2)
            final.unlink()
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, size, timeout, progress)
                break
            except _Transient as exc:
                if attempt == retries:
                    raise IncompleteDownloadError(
                        f"{exc}; gave up after {retries + 1} attempts. The partial file {part} is kept: "
                        "call again to resume."
                    ) from exc
        actual = sha256_file(part)
        if actual != sha:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"sha256 mismatch for {url}: expected {sha}, got {actual}. The download was deleted; "
                "the file on the server differs from the one registered."
            )
        os.replace(part, final)
    return final


# ------------------------------------------------------------------------------------------ archive


def _check_safetensors(fh: IO[bytes], file_size: int, where: str) -> None:
    """Check the safetensors layout (8-byte header length, JSON header, offsets inside the file)."""
    raw = fh.read(8)
    if len(raw) < 8:
        raise UnsafeArchiveError(f"{where}: too short to be a safetensors file")
    n = int.from_bytes(raw, "little")
    if n < 2 or n > _MAX_SAFETENSORS_HEADER or n + 8 > file_size:
        raise UnsafeArchiveError(f"{where}: not a safetensors file (bad header length {n})")
    try:
        header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsafeArchiveError(f"{where}: not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise UnsafeArchiveError(f"{where}: not a safetensors file (header is not a JSON object)")
    data_bytes = file_size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise UnsafeArchiveError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")


def _pickle_references(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if path == "" and key == "config":  # model hyper-parameters, never opened as files
                continue
            yield from _pickle_references(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _pickle_references(value, f"{path}[{i}]")
    elif isinstance(obj, str) and obj.lower().rstrip().endswith(PICKLE_SUFFIXES):
        yield path, obj


def check_metadata(data: bytes, where: str) -> dict[str, Any]:
    """Parse ``metadata.json`` bytes: a JSON object that refers to no pickle file."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsafeArchiveError(f"{where}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise UnsafeArchiveError(f"{where}: must hold a JSON object, got {type(meta).__name__}")
    for key, value in _pickle_references(meta):
        raise UnsafeArchiveError(
            f"{where}: field '{key}' refers to the pickle file {value!r}; lam only loads {MODEL_FILE} "
            "(safetensors) and never unpickles"
        )
    return meta


def validate_export_dir(export_dir: str | os.PathLike) -> dict[str, Any]:
    """Check an export directory (``model.safetensors`` + ``metadata.json``); return the metadata."""
    root = Path(export_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not an exported model directory (it does not exist)")
    for name in ARCHIVE_MEMBERS:
        p = root / name
        if p.is_symlink() or not p.is_file():
            raise UnsafeArchiveError(f"{root}: an exported model needs a regular file {name}")
    meta_path, model_path = root / METADATA_FILE, root / MODEL_FILE
    if meta_path.stat().st_size > MAX_METADATA_BYTES:
        raise UnsafeArchiveError(f"{meta_path}: larger than {MAX_METADATA_BYTES} bytes")
    meta = check_metadata(meta_path.read_bytes(), str(meta_path))
    with open(model_path, "rb") as fh:
        _check_safetensors(fh, model_path.stat().st_size, str(model_path))
    return meta


def pack_model(export_dir: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Pack an export directory into a ``.lam`` file: an uncompressed zip of the two model files.

    The archive is byte-for-byte reproducible (fixed member order, timestamps and permissions), so its
    sha256 identifies the model. Other files in ``export_dir`` are not packed (a warning names them).
    """
    root = Path(export_dir)
    validate_export_dir(root)
    others = sorted(p.name for p in root.iterdir() if p.name not in ARCHIVE_MEMBERS and not p.name.startswith("."))
    if others:
        warnings.warn(f"{root}: not packing {others} (a .lam holds only {list(ARCHIVE_MEMBERS)})", stacklevel=2)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in ARCHIVE_MEMBERS:
                info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
                info.create_system = 3  # Unix, so that external_attr holds the mode bits
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_STORED
                with open(root / name, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def _check_member(name: str, kind: str, size: int, seen: set[str], archive: str, max_bytes: int) -> None:
    """Refuse any member but the two regular files, with a message that says why."""
    where = f"{archive}: member {name!r}"
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise UnsafeArchiveError(f"{where} escapes the destination directory (path traversal); refused")
    if kind != "file":
        raise UnsafeArchiveError(f"{where} is a {kind}, not a regular file; refused")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise UnsafeArchiveError(f"{where} is a pickle-format file; lam never unpickles downloaded files")
    if name not in ARCHIVE_MEMBERS:
        raise UnsafeArchiveError(f"{where} is unexpected: a .lam archive holds exactly {list(ARCHIVE_MEMBERS)}")
    if name in seen:
        raise UnsafeArchiveError(f"{where} appears twice; refused")
    cap = MAX_METADATA_BYTES if name == METADATA_FILE else max_bytes
    if size > cap:
        raise UnsafeArchiveError(f"{where} is {size} bytes, over the {cap}-byte limit")
    seen.add(name)


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.is_dir():
        return "directory"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # zip writers often store no file-type bits
        return "special file"
    if info.flag_bits & 0x1:
        return "encrypted file"
    return "file"


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.isdir():
        return "directory"
    return "file" if member.isreg() else "special file"


def _copy_capped(src: IO[bytes], dst_path: Path, cap: int, where: str) -> None:
    written = 0
    with open(dst_path, "wb") as dst:
        while chunk := src.read(CHUNK_BYTES):
            written += len(chunk)
            if written > cap:
                raise UnsafeArchiveError(f"{where}: more than {cap} bytes when extracted; refused")
            dst.write(chunk)


def unpack_model(
    file: str | os.PathLike, dest_dir: str | os.PathLike, *, max_member_bytes: int = MAX_MODEL_BYTES
) -> Path:
    """Extract a ``.lam`` archive (zip, or tar) into ``dest_dir`` after checking every member.

    Refused with :class:`UnsafeArchiveError`: members other than ``model.safetensors`` and
    ``metadata.json`` (pickles, extra files, directories), absolute or ``..`` paths, links and special
    files, duplicates, encrypted members, members larger than ``max_member_bytes``, a weights file that is
    not safetensors and a metadata file that is not a JSON object or points to a pickle. Extraction goes
    to a temporary directory that is renamed to ``dest_dir`` only when everything passed.
    """
    src = Path(file)
    archive = str(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: model archive not found")
    dest = Path(dest_dir)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest}: destination exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        seen: set[str] = set()
        if zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as zf:
                infos = zf.infolist()
                for info in infos:
                    _check_member(info.filename, _zip_kind(info), info.file_size, seen, archive, max_member_bytes)
                _check_complete(seen, archive)
                for info in infos:
                    with zf.open(info) as member:
                        _copy_capped(member, tmp / info.filename, max_member_bytes, f"{archive}: {info.filename}")
        elif _is_tar(src):
            with tarfile.open(src, "r:*") as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(m.name, _tar_kind(m), m.size, seen, archive, max_member_bytes)
                _check_complete(seen, archive)
                for m in members:
                    fh = tf.extractfile(m)
                    assert fh is not None  # regular files only, checked above
                    with fh:
                        _copy_capped(fh, tmp / m.name, max_member_bytes, f"{archive}: {m.name}")
        else:
            raise UnsafeArchiveError(f"{archive}: not a .lam archive (neither a zip nor a tar file)")
        check_metadata((tmp / METADATA_FILE).read_bytes(), f"{archive}: {METADATA_FILE}")
        with open(tmp / MODEL_FILE, "rb") as fh:
            _check_safetensors(fh, (tmp / MODEL_FILE).stat().st_size, f"{archive}: {MODEL_FILE}")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError):
        return False


def _check_complete(seen: set[str], archive: str) -> None:
    missing = [n for n in ARCHIVE_MEMBERS if n not in seen]
    if missing:
        raise UnsafeArchiveError(f"{archive}: missing {missing}; a .lam archive holds {list(ARCHIVE_MEMBERS)}")
