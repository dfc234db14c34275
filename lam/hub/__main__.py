"""Command line of the checkpoint hub.

    python -m lam.hub list
    python -m lam.hub download NAME_OR_URL
    python -m lam.hub info NAME_OR_PATH
    python -m lam.hub pack EXPORT_DIR OUT.lam

Options ``--registry FILE_OR_URL`` (repeatable) and ``--cache-dir DIR`` go before the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from lam.hub import (
    ModelEntry,
    cache_dir,
    load_registry,
    pack_model,
    resolve_source,
    sha256_file,
)
from lam.hub.download import METADATA_FILE, MODEL_FILE


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _cmd_list(args: argparse.Namespace) -> int:
    reg = load_registry(args.registry)
    if not len(reg):
        print(f"no models registered (registries: {', '.join(reg.sources)}); add one with --registry or $LAM_REGISTRY")
        return 0
    width = max(len(n) for n in reg.names())
    for e in reg.entries():
        heads = ",".join(e.heads) or "-"
        print(f"{e.name:<{width}}  {_human(e.size):>10}  heads={heads}  {e.description}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    folder = resolve_source(args.source, args.registry, cache=args.cache_dir, progress=not args.quiet)
    print(folder)
    return 0


def _summarise_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    keep = ("format_version", "type_map", "heads", "versions")
    return {k: meta[k] for k in keep if k in meta}


def _cmd_info(args: argparse.Namespace) -> int:
    source = args.source
    reg = load_registry(args.registry)
    out: dict[str, Any] = {}
    if not Path(source).exists() and source in reg:
        entry: ModelEntry = reg.get(source)
        cached = cache_dir(args.cache_dir) / "models" / entry.sha256
        out = {"name": entry.name, **entry.to_dict(), "registry": entry.source,
               "cached": str(cached) if cached.is_dir() else None}
    else:
        folder = resolve_source(source, reg, cache=args.cache_dir, progress=False)
        meta = json.loads((folder / METADATA_FILE).read_text())
        out = {"path": str(folder), "weights_bytes": (folder / MODEL_FILE).stat().st_size,
               **_summarise_metadata(meta)}
        if Path(source).is_file():
            out["archive_sha256"] = sha256_file(source)
    print(yaml.safe_dump(out, sort_keys=False, default_flow_style=None).rstrip())
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    out = pack_model(args.export_dir, args.out)
    sha, size = sha256_file(out), os.path.getsize(out)
    name = args.name or out.stem
    meta = json.loads((Path(args.export_dir) / METADATA_FILE).read_text())
    url = args.url or f"<URL of {out.name} once uploaded>"
    entry: dict[str, Any] = {"url": url, "sha256": sha, "size": size}
    for key in ("heads", "type_map"):
        value = meta.get(key)
        if isinstance(value, dict):
            value = list(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            entry[key] = value
    print(f"wrote {out} ({_human(size)})\nsha256 {sha}\n\nregistry entry (edit url, description, license):")
    print(yaml.safe_dump({"models": {name: entry}}, sort_keys=False, default_flow_style=None).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m lam.hub`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m lam.hub", description="lam checkpoint hub")
    parser.add_argument("--registry", action="append", default=None, metavar="FILE_OR_URL",
                        help="extra registry YAML (repeatable; added after $LAM_REGISTRY)")
    parser.add_argument("--cache-dir", default=None, help="cache root (default $LAM_CACHE, ~/.cache/lam)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registered models").set_defaults(func=_cmd_list)
    p = sub.add_parser("download", help="download, verify and unpack a model; prints its directory")
    p.add_argument("source", metavar="NAME_OR_URL")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)
    p = sub.add_parser("info", help="show a registry entry or the metadata of a local model")
    p.add_argument("source", metavar="NAME_OR_PATH")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("pack", help="pack an export directory into a .lam file and print its registry entry")
    p.add_argument("export_dir", metavar="EXPORT_DIR")
    p.add_argument("out", metavar="OUT.lam")
    p.add_argument("--name", default=None, help="model name for the printed registry entry")
    p.add_argument("--url", default=None, help="URL where the .lam file will be published")
    p.set_defaults(func=_cmd_pack)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors are printed in one line and give exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError, LookupError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
