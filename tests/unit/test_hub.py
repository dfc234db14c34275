"""Tests of lam.hub: registry, verified resumable downloads from a local HTTP server, safe archives, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import lam.hub as hub
from lam.hub import __main__ as cli
from lam.hub.registry import split_registry_paths

TIMEOUT = 10.0  # seconds, for every client request against the local server


# ------------------------------------------------------------------------------------------ fixtures


class _State:
    """What the test server serves and what it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, int] = {}  # path -> number of next responses cut off after half the body
        self.ignore_range = False
        self.delay = 0.0
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, _ in self.requests if p == path)


class _Handler(BaseHTTPRequestHandler):
    """GET with byte-range support, 404s, and a mode that drops the connection halfway through the body."""

    protocol_version = "HTTP/1.0"  # one request per connection: closing it ends the body

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        state: _State = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            drop = state.drops.get(self.path, 0) > 0
            if drop:
                state.drops[self.path] -= 1
        if state.delay:
            time.sleep(state.delay)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 with an ephemeral port; yields (base URL, state)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache ($LAM_CACHE) and no user registry."""
    monkeypatch.setenv("LAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LAM_REGISTRY", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything calls pickle or torch.load."""
    import torch

    # import what subclasses pickle's classes at import time (torch._dynamo, via torch_geometric) before the
    # patch, so that the test also passes when it is the first to import lam.models
    import lam.models  # noqa: F401

    def forbidden(*args, **kwargs):
        raise AssertionError("lam.hub must never unpickle downloaded data")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


def make_export(root: Path, heads=("pbe", "wb97x"), type_map=("H", "C", "O"), seed: int = 0) -> Path:
    """A small but well-formed export directory: safetensors weights + JSON metadata."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {
        "descriptor.type_embedding.weight": rng.normal(size=(len(type_map), 8)).astype(np.float32),
        **{f"heads.{h}.out.weight": rng.normal(size=(1, 16)).astype(np.float32) for h in heads},
    }
    save_file(tensors, str(root / "model.safetensors"))
    meta = {
        "format_version": 1,
        "config": {"descriptor": {"name": "se_e2_a", "rcut": 6.0}},
        "type_map": list(type_map),
        "heads": list(heads),
        "element_references": {h: [-13.6, -1029.0, -2041.0][: len(type_map)] for h in heads},
        "versions": {"lam": "0.1.0"},
    }
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def good_members(tmp_path: Path) -> dict[str, bytes]:
    export = make_export(tmp_path / "good_export")
    return {n: (export / n).read_bytes() for n in ("metadata.json", "model.safetensors")}


def write_registry(path: Path, models: dict[str, dict]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"format_version": 1, "models": models}))
    return path


# ------------------------------------------------------------------------------------------ download


def test_download_verifies_caches_and_makes_no_second_request(server, isolated_env):
    base, state = server
    payload = os.urandom(3 * (1 << 20) + 123)  # several 1 MiB chunks
    state.files["/m.lam"] = payload
    path = hub.download(f"{base}/m.lam", sha(payload), progress=False, timeout=TIMEOUT)
    assert path == isolated_env / "downloads" / sha(payload)
    assert path.read_bytes() == payload
    assert state.count("/m.lam") == 1
    assert hub.download(f"{base}/m.lam", sha(payload).upper(), progress=False, timeout=TIMEOUT) == path
    assert state.count("/m.lam") == 1, "a cached file must not be requested again"
    assert not list(path.parent.glob("*.part"))


def test_truncated_download_resumes_with_range(server, isolated_env):
    base, state = server
    payload = os.urandom(1_000_003)
    state.files["/m.lam"] = payload
    state.drops["/m.lam"] = 1
    url = f"{base}/m.lam"
    with pytest.raises(hub.IncompleteDownloadError, match=r"after 500001 of 1000003 bytes.*call again"):
        hub.download(url, sha(payload), progress=False, timeout=TIMEOUT, retries=0)
    part = isolated_env / "downloads" / f"{sha(payload)}.part"
    assert part.stat().st_size == 500_001
    path = hub.download(url, sha(payload), progress=False, timeout=TIMEOUT, retries=0)
    assert path.read_bytes() == payload and not part.exists()
    assert state.requests == [("/m.lam", None), ("/m.lam", "bytes=500001-")]


def test_interrupted_download_resumes_within_one_call(server):
    base, state = server
    payload = os.urandom(400_000)
    state.files["/m.lam"] = payload
    state.drops["/m.lam"] = 2
    path = hub.download(f"{base}/m.lam", sha(payload), progress=False, timeout=TIMEOUT, retries=3)
    assert path.read_bytes() == payload
    assert [r for _, r in state.requests] == [None, "bytes=200000-", "bytes=300000-"]


def test_server_without_range_support_restarts_cleanly(server):
    base, state = server
    payload = os.urandom(300_001)
    state.files["/m.lam"] = payload
    state.drops["/m.lam"] = 1
    state.ignore_range = True  # answers 200 with the whole file to a Range request
    path = hub.download(f"{base}/m.lam", sha(payload), progress=False, timeout=TIMEOUT, retries=1)
    assert path.read_bytes() == payload
    assert [r for _, r in state.requests] == [None, "bytes=150000-"]


def test_wrong_sha256_raises_and_leaves_nothing(server, isolated_env):
    base, state = server
    payload = b"model bytes" * 1000
    state.files["/m.lam"] = payload
    wrong = "0" * 64
    with pytest.raises(hub.ChecksumError) as info:
        hub.download(f"{base}/m.lam", wrong, progress=False, timeout=TIMEOUT)
    msg = str(info.value)
    assert f"{base}/m.lam" in msg and wrong in msg and sha(payload) in msg
    left = [p.name for p in (isolated_env / "downloads").iterdir() if not p.name.endswith(".lock")]
    assert left == []


def test_http_404_is_a_clear_error(server, isolated_env):
    base, state = server
    with pytest.raises(hub.DownloadError, match=rf"HTTP 404 .*{re.escape(base)}/missing.lam"):
        hub.download(f"{base}/missing.lam", "a" * 64, progress=False, timeout=TIMEOUT)
    assert state.count("/missing.lam") == 1
    assert not [p for p in (isolated_env / "downloads").iterdir() if not p.name.endswith(".lock")]


def test_connection_refused_is_a_clear_error():
    with socket.socket() as s:  # find a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(hub.DownloadError, match=rf"could not connect to http://127.0.0.1:{port}/m.lam"):
        hub.download(f"http://127.0.0.1:{port}/m.lam", "a" * 64, progress=False, timeout=TIMEOUT)


def test_longer_than_announced_size_aborts(server, isolated_env):
    base, state = server
    payload = os.urandom(5000)
    state.files["/m.lam"] = payload
    with pytest.raises(hub.DownloadError, match="4000"):
        hub.download(f"{base}/m.lam", sha(payload), progress=False, timeout=TIMEOUT, size=4000)
    assert not list((isolated_env / "downloads").glob("*.part"))


def test_damaged_cache_entry_is_downloaded_again(server):
    base, state = server
    payload = os.urandom(10_000)
    state.files["/m.lam"] = payload
    path = hub.download(f"{base}/m.lam", sha(payload), progress=False, timeout=TIMEOUT)
    path.write_bytes(b"bit rot")
    with pytest.warns(UserWarning, match="damaged"):
        again = hub.download(f"{base}/m.lam", sha(payload), progress=False, timeout=TIMEOUT)
    assert again.read_bytes() == payload and state.count("/m.lam") == 2


def test_concurrent_downloads_of_one_file_share_the_lock(server):
    base, state = server
    payload = os.urandom(200_000)
    state.files["/m.lam"] = payload
    state.delay = 0.2
    results, errors = [], []

    def worker():
        try:
            results.append(hub.download(f"{base}/m.lam", sha(payload), progress=False, timeout=TIMEOUT))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert results[0].read_bytes() == payload
    assert state.count("/m.lam") == 1, "the lock must make the other downloaders reuse the first file"


def test_file_url_and_local_path_download(tmp_path, isolated_env):
    payload = os.urandom(70_000)
    src = tmp_path / "model file.lam"
    src.write_bytes(payload)
    via_url = hub.download(src.as_uri(), sha(payload), progress=False)
    assert via_url.read_bytes() == payload
    (via_url).unlink()
    via_path = hub.download(str(src), sha(payload), progress=False)
    assert via_path == isolated_env / "downloads" / sha(payload) and via_path.read_bytes() == payload


def test_cache_location_from_environment(monkeypatch, tmp_path):
    assert hub.cache_dir() == tmp_path / "cache"
    assert hub.cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("LAM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "lam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "lam"


# ------------------------------------------------------------------------------------------ archives


def test_pack_is_reproducible_and_round_trips(tmp_path):
    export = make_export(tmp_path / "export")
    (export / "notes.txt").write_text("not packed")
    with pytest.warns(UserWarning, match="notes.txt"):
        a = hub.pack_model(export, tmp_path / "a.lam")
    later = time.time() + 3600  # a different mtime must not change the archive bytes
    os.utime(export / "model.safetensors", (later, later))
    with pytest.warns(UserWarning):
        b = hub.pack_model(export, tmp_path / "b.lam")
    assert hub.sha256_file(a) == hub.sha256_file(b)
    with zipfile.ZipFile(a) as zf:
        assert sorted(zf.namelist()) == ["metadata.json", "model.safetensors"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    out = hub.unpack_model(a, tmp_path / "unpacked")
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.safetensors"]
    original, restored = load_file(str(export / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert original.keys() == restored.keys()
    assert all(np.array_equal(original[k], restored[k]) for k in original)


def test_tar_archive_is_accepted(tmp_path):
    export = make_export(tmp_path / "export")
    archive = tmp_path / "m.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("metadata.json", "model.safetensors"):
            tf.add(export / name, arcname=name)
    folder = hub.resolve_source(archive)
    assert (folder / "metadata.json").read_bytes() == (export / "metadata.json").read_bytes()


def test_pickle_payloads_are_refused_without_unpickling(tmp_path, no_unpickling, server):
    members = good_members(tmp_path)
    payload = b"\x80\x04\x95" + b"cos\nsystem\n" + b"\x00" * 40  # bytes of a pickle; never loaded
    # 1. a pickle member next to the model files
    with pytest.raises(hub.UnsafeArchiveError, match=r"'data.pkl' is a pickle-format file"):
        hub.resolve_source(write_zip(tmp_path / "a.lam", {**members, "data.pkl": payload}))
    # 2. the weights file is a pickle in disguise
    with pytest.raises(hub.UnsafeArchiveError, match="model.safetensors: not a safetensors file"):
        hub.resolve_source(write_zip(tmp_path / "b.lam", {**members, "model.safetensors": payload}))
    # 3. metadata that points the loader to a .pt file
    meta = json.loads(members["metadata.json"])
    meta["weights"] = "model.pt"
    bad_meta = {**members, "metadata.json": json.dumps(meta).encode()}
    with pytest.raises(hub.UnsafeArchiveError, match=r"'weights' refers to the pickle file 'model.pt'"):
        hub.resolve_source(write_zip(tmp_path / "c.lam", bad_meta))
    # 4. a torch.save-style zip (archive/data.pkl) downloaded by URL is refused after verification
    base, state = server
    torch_like = tmp_path / "d.lam"
    write_zip(torch_like, {"archive/data.pkl": payload, "archive/version": b"3"})
    state.files["/d.lam"] = torch_like.read_bytes()
    with pytest.raises(hub.UnsafeArchiveError, match="pickle"):
        hub.resolve_source(f"{base}/d.lam#sha256={sha(state.files['/d.lam'])}", progress=False)
    # 5. a local pickle checkpoint is refused by name
    (tmp_path / "model.pt").write_bytes(payload)
    with pytest.raises(hub.UnsafeArchiveError, match="pickle checkpoints are not loaded"):
        hub.resolve_source(tmp_path / "model.pt")
    assert not list((tmp_path / "cache" / "models").glob("*/model.safetensors"))


@pytest.mark.parametrize(
    "name, message",
    [
        ("../metadata.json", "path traversal"),
        ("/etc/evil.json", "path traversal"),
        ("sub/../../evil.json", "path traversal"),
        ("README.md", "unexpected"),
        ("weights/", "directory"),
    ],
)
def test_unsafe_zip_members_are_refused(tmp_path, name, message):
    archive = write_zip(tmp_path / "m.lam", {**good_members(tmp_path), name: b"{}"})
    with pytest.raises(hub.UnsafeArchiveError, match=message):
        hub.unpack_model(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.json").exists() and not (tmp_path.parent / "evil.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # temp dir removed


def test_tar_links_duplicates_and_oversize_are_refused(tmp_path):
    members = good_members(tmp_path)

    def tar_with(path: Path, extra: list[tarfile.TarInfo]) -> Path:
        with tarfile.open(path, "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for info in extra:
                tf.addfile(info)
        return path

    link = tarfile.TarInfo("model.safetensors")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(hub.UnsafeArchiveError, match="symbolic link"):
        hub.unpack_model(tar_with(tmp_path / "a.tar", [link]), tmp_path / "out")
    with pytest.raises(hub.UnsafeArchiveError, match="appears twice"):
        hub.unpack_model(tar_with(tmp_path / "b.tar", [tarfile.TarInfo("metadata.json")]), tmp_path / "out")
    with pytest.raises(hub.UnsafeArchiveError, match="over the 100-byte limit"):
        hub.unpack_model(tar_with(tmp_path / "c.tar", []), tmp_path / "out", max_member_bytes=100)
    with pytest.raises(hub.UnsafeArchiveError, match=r"missing \['model.safetensors'\]"):
        hub.unpack_model(write_zip(tmp_path / "d.lam", {"metadata.json": members["metadata.json"]}), tmp_path / "o")
    (tmp_path / "e.lam").write_bytes(b"plain text, not an archive")
    with pytest.raises(hub.UnsafeArchiveError, match="neither a zip nor a tar"):
        hub.unpack_model(tmp_path / "e.lam", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "m.lam"
    members = good_members(tmp_path)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.json", members["metadata.json"])
        info = zipfile.ZipInfo("model.safetensors")
        info.create_system = 3
        info.external_attr = (0o120777) << 16  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(hub.UnsafeArchiveError, match="symbolic link"):
        hub.unpack_model(archive, tmp_path / "out")


# ------------------------------------------------------------------------------------------ registry


def test_registry_lookup_download_and_unknown_name(tmp_path, server, isolated_env, no_unpickling):
    base, state = server
    export = make_export(tmp_path / "export", heads=("pbe",), type_map=("H", "O"))
    archive = hub.pack_model(export, tmp_path / "water.lam")
    state.files["/water.lam"] = archive.read_bytes()
    entry = {"url": f"{base}/water.lam", "sha256": hub.sha256_file(archive), "size": archive.stat().st_size,
             "heads": ["pbe"], "elements": ["H", "O"], "description": "water demo", "license": "CC-BY-4.0"}
    reg = write_registry(tmp_path / "reg.yaml", {"water-se-s": entry})
    assert [e.name for e in hub.list_models(reg)] == ["water-se-s"]
    got = hub.get_entry("water-se-s", reg)
    assert got.type_map == ("H", "O") and got.size == archive.stat().st_size and got.source == str(reg)

    folder = hub.resolve_source("water-se-s", registry=reg, progress=False)
    assert folder == isolated_env / "models" / entry["sha256"]
    assert json.loads((folder / "metadata.json").read_text())["type_map"] == ["H", "O"]
    assert hub.resolve_source("water-se-s", registry=reg, progress=False) == folder
    assert state.count("/water.lam") == 1
    # the bare URL finds its sha256 in the registry; a URL with neither is refused
    assert hub.resolve_source(f"{base}/water.lam", registry=reg, progress=False) == folder
    with pytest.raises(ValueError, match="needs its sha256"):
        hub.resolve_source(f"{base}/other.lam", registry=reg)
    with pytest.raises(hub.UnknownModelError) as info:
        hub.resolve_source("water-se-m", registry=reg)
    assert "Did you mean 'water-se-s'" in str(info.value) and "Known models: water-se-s" in str(info.value)
    assert str(reg) in str(info.value)


def test_registry_entry_contradicting_metadata_is_refused(tmp_path, server):
    base, state = server
    archive = hub.pack_model(make_export(tmp_path / "export", heads=("pbe",)), tmp_path / "m.lam")
    state.files["/m.lam"] = archive.read_bytes()
    reg = write_registry(tmp_path / "reg.yaml", {
        "m": {"url": f"{base}/m.lam", "sha256": hub.sha256_file(archive), "heads": ["pbe", "r2scan"]}})
    with pytest.raises(hub.ModelMismatchError, match=r"heads \['pbe', 'r2scan'\] but its metadata.json has \['pbe'\]"):
        hub.resolve_source("m", registry=reg, progress=False)


def test_user_registries_from_environment_and_url(tmp_path, server, monkeypatch):
    base, state = server
    a = write_registry(tmp_path / "a.yaml", {"alpha": {"url": "https://example.org/a.lam", "sha256": "a" * 64}})
    b_text = "models:\n  beta: {url: 'https://example.org/b.lam', sha256: '" + "b" * 64 + "'}\n"
    state.files["/b.yaml"] = b_text.encode()
    monkeypatch.setenv("LAM_REGISTRY", os.pathsep.join([str(a), f"{base}/b.yaml"]))
    assert [e.name for e in hub.list_models()] == ["alpha", "beta"]
    # the argument comes last and overrides an entry of the same name
    c = write_registry(tmp_path / "c.yaml", {"alpha": {"url": "https://example.org/a2.lam", "sha256": "c" * 64}})
    assert hub.get_entry("alpha", c).url == "https://example.org/a2.lam"
    if os.pathsep == ":":  # URLs survive splitting on the POSIX separator
        assert split_registry_paths("https://h:8/r.yaml:/x/y.yaml::file:///z.yaml") == [
            "https://h:8/r.yaml", "/x/y.yaml", "file:///z.yaml"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"url": "https://e.org/m.lam", "sha256": "xyz"}, "sha256 must be 64 hexadecimal digits"),
        ({"sha256": "a" * 64}, "missing required string field 'url'"),
        ({"url": "ftp://e.org/m.lam", "sha256": "a" * 64}, "must start with one of"),
        ({"url": "https://e.org/m.lam", "sha256": "a" * 64, "size": -1}, "size must be a non-negative"),
        ({"url": "https://e.org/m.lam", "sha256": "a" * 64, "heads": "pbe"}, "'heads' must be a list"),
    ],
)
def test_bad_registry_entries_name_file_and_model(tmp_path, entry, message):
    reg = write_registry(tmp_path / "bad.yaml", {"my-model": entry})
    with pytest.raises(hub.RegistryError, match=re.escape(str(reg)) + r": model 'my-model': .*" + message):
        hub.list_models(reg)


def test_missing_registry_file_and_builtin_registry_parse(tmp_path):
    with pytest.raises(hub.RegistryError, match="does not exist"):
        hub.list_models(tmp_path / "nope.yaml")
    builtin = hub.load_registry(use_env=False)
    assert builtin.sources == ["builtin:lam/hub/registry.yaml"]
    for entry in builtin.entries():  # every shipped entry is complete and downloadable by URL
        assert entry.url.startswith("https://") and len(entry.sha256) == 64


def test_url_with_hash_fragment_and_local_sources(tmp_path, server, isolated_env):
    base, state = server
    export = make_export(tmp_path / "export")
    archive = hub.pack_model(export, tmp_path / "m.lam")
    digest = hub.sha256_file(archive)
    state.files["/m.lam"] = archive.read_bytes()
    from_url = hub.resolve_source(f"{base}/m.lam#sha256={digest}", progress=False)
    assert from_url == isolated_env / "models" / digest
    assert hub.resolve_source(archive) == from_url  # same archive bytes → same cache entry
    assert hub.resolve_source(str(export)) == export.resolve()
    with pytest.raises(hub.ChecksumError):
        hub.resolve_source(f"{base}/m.lam#sha256={'1' * 64}", progress=False)
    with pytest.raises(ValueError, match="must be '#sha256="):
        hub.resolve_source(f"{base}/m.lam#md5=abc")
    with pytest.raises(FileNotFoundError, match="no such file"):
        hub.resolve_source(str(tmp_path / "absent.lam"))
    # a damaged unpacked cache entry is rebuilt from the archive
    (from_url / "model.safetensors").write_bytes(b"xx")
    again = hub.resolve_source(archive)
    assert (again / "model.safetensors").read_bytes() == (export / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------ CLI


def test_cli_pack_list_info_download(tmp_path, server, capsys):
    base, state = server
    export = make_export(tmp_path / "export", heads=("pbe",))
    out = tmp_path / "demo.lam"
    assert cli.main(["pack", str(export), str(out), "--name", "demo", "--url", f"{base}/demo.lam"]) == 0
    printed = capsys.readouterr().out
    digest = hub.sha256_file(out)
    assert f"sha256 {digest}" in printed
    import yaml

    snippet = yaml.safe_load(printed.split("license):\n", 1)[1])
    state.files["/demo.lam"] = out.read_bytes()
    reg = write_registry(tmp_path / "reg.yaml", snippet["models"])
    cache = tmp_path / "cli-cache"
    common = ["--registry", str(reg), "--cache-dir", str(cache)]
    assert cli.main([*common, "list"]) == 0
    assert re.search(r"^demo\s+.*heads=pbe", capsys.readouterr().out, re.M)
    assert cli.main([*common, "download", "demo", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "models" / digest)
    assert cli.main([*common, "info", "demo"]) == 0
    info = yaml.safe_load(capsys.readouterr().out)
    assert info["sha256"] == digest and info["cached"] == str(cache / "models" / digest)
    assert cli.main([*common, "info", str(out)]) == 0
    info = yaml.safe_load(capsys.readouterr().out)
    assert info["archive_sha256"] == digest and info["heads"] == ["pbe"]
    assert cli.main([*common, "download", "demo-x"]) == 1
    assert "unknown model 'demo-x'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real model


def test_load_real_model_by_name(tmp_path, server, no_unpickling):
    """Export a trained-looking Potential, publish it on the test server, load it by name, same numbers."""
    import torch
    from ase.build import molecule

    from lam.checkpoint import export_model
    from lam.models.builder import build_model
    from lam.testing.model_tests import evaluate

    base, state = server
    model = build_model("student", type_map=["H", "O"], heads=["pbe", "wb97x"], dtype=torch.float64, seed=7)
    with torch.no_grad():  # weights unlike a fresh build with the same seed: they must come from the file
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    archive = hub.pack_model(export_model(model, tmp_path / "export"), tmp_path / "water.lam")
    state.files["/water.lam"] = archive.read_bytes()
    reg = write_registry(tmp_path / "reg.yaml", {"water-student": {
        "url": f"{base}/water.lam", "sha256": hub.sha256_file(archive), "heads": ["pbe", "wb97x"],
        "type_map": ["H", "O"]}})

    loaded = hub.load("water-student", registry=reg, progress=False)
    assert loaded.head_names == ["pbe", "wb97x"] and list(loaded.type_map) == ["H", "O"]
    water = molecule("H2O")
    water.rattle(0.05, seed=1)
    for head in (0, 1):
        ref, got = evaluate(model, [water], head), evaluate(loaded, [water], head)
        np.testing.assert_allclose(got["energy"], ref["energy"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["forces"], ref["forces"], rtol=1e-10, atol=1e-12)
    fresh = build_model("student", type_map=["H", "O"], heads=["pbe", "wb97x"], dtype=torch.float64, seed=7)
    assert not np.allclose(evaluate(fresh, [water])["energy"], evaluate(model, [water])["energy"])
    assert state.count("/water.lam") == 1
