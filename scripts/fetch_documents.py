#!/usr/bin/env python3
"""Long documents of the paper's four kinds, from Debian packages, reproducibly.

    python scripts/fetch_documents.py OUT_DIR [--kinds code,proofs,tex,prose] [--min-bytes 32768] [--force]

Each kind's packages are fetched with ``apt-get download`` into a temporary folder, unpacked with
``dpkg-deb -x`` (no root needed), and the files of the kind's filter at least ``--min-bytes`` long (after
decompressing ``.gz``) are copied to ``OUT_DIR/KIND/``, keeping their paths below the kind's root in the package:

    code    Go's source tree (golang-1.19-src): every .go file, tests and testdata included
    proofs  Coq: MathComp (11 libcoq-mathcomp* packages) and Coq's standard library (libcoq-stdlib), .v files
    tex     PARI/GP's manuals (pari-doc), .tex
    prose   Python's documentation, its reST sources (python3.11-doc, html/_sources/**/*.rst.txt)

``--data OUT_DIR/KIND`` then reads one kind (the project's folder source: one document per file, split
train / valid / test by a hash of each path). Beside each folder, ``OUT_DIR/KIND.json`` names the packages,
their versions and licenses, the filter, and every file with its size, package and SHA-256; ``OUT_DIR/licenses/``
holds each package's Debian copyright file. Both stay outside the kind's folder so they are not read as
documents.

Deterministic: sorted file lists, the same bytes and metadata for the same package versions (no dates).
Idempotent: a kind whose ``KIND.json`` matches the request and whose files are all present is not fetched
again; ``--force`` refetches. Standard library only; progress on stderr.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1
DEFAULT_MIN_BYTES = 32768
TEXT_PROBE = 8192  # the project's folder source skips a file with a NUL byte in its first 8 KB (data.folder_documents)

MATHCOMP = tuple(f"libcoq-mathcomp-{part}" for part in (
    "ssreflect", "fingroup", "algebra", "solvable", "field", "character",  # MathComp itself
    "finmap", "multinomials", "real-closed", "analysis", "abel"))  # libraries built on it


@dataclass(frozen=True)
class Kind:
    """What one kind takes: the files under ``root`` (a path inside each package) whose names end in one of
    ``suffixes`` (after dropping a ``.gz``), outside folders named in ``exclude_dirs`` and not ending in one of
    ``exclude_suffixes``."""

    packages: tuple[str, ...]
    root: str
    suffixes: tuple[str, ...]
    description: str
    exclude_dirs: tuple[str, ...] = ()
    exclude_suffixes: tuple[str, ...] = ()

    def filter(self, min_bytes: int) -> dict:
        return {"root": self.root, "suffixes": list(self.suffixes), "exclude_dirs": list(self.exclude_dirs),
                "exclude_suffixes": list(self.exclude_suffixes), "min_bytes": min_bytes, "decompress": ".gz",
                "text_only": f"no NUL byte in the first {TEXT_PROBE} bytes", "description": self.description}


KINDS: dict[str, Kind] = {
    # Only the whole tree reaches 400 files of 32 KB or more (403 in 1.19.8): without testdata/ 396, src/ alone
    # 392, without _test.go 322 (src/). Like a code repository, it keeps tests and generated files.
    "code": Kind(("golang-1.19-src",), "usr/share/go-1.19", (".go",),
                 "every .go file of the Go source tree (src/, test/, misc/), tests, testdata and generated files included"),
    "proofs": Kind(MATHCOMP + ("libcoq-stdlib",), "usr/lib/ocaml/coq", (".v",),
                   "the Coq sources (.v) of MathComp and its libraries (user-contrib/) and of Coq's standard library (theories/, Ltac2)"),
    "tex": Kind(("pari-doc",), "usr/share/pari/doc", (".tex",),
                "the plain-TeX sources of PARI/GP's manuals (.tex, or .tex.gz decompressed)"),
    "prose": Kind(("python3.11-doc",), "usr/share/doc/python3.11/html/_sources", (".rst.txt",),
                  "the reST sources of Python's documentation, as Sphinx ships them (_sources/**/*.rst.txt)"),
}


class FetchError(Exception):
    """A one-line reason the fetch cannot go on."""


def log(message: str) -> None:
    print(f"fetch_documents: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Selected:
    path: str  # relative to the kind's root, POSIX
    source: Path  # the unpacked file
    size: int  # bytes after decompressing
    compressed: bool


def _read(file: Path, compressed: bool) -> bytes:
    return gzip.decompress(file.read_bytes()) if compressed else file.read_bytes()


def select_files(tree: Path, kind: Kind, min_bytes: int) -> tuple[list[Selected], Counter]:
    """The files of ``kind`` in one unpacked package (``tree``: the folder ``dpkg-deb -x`` wrote), sorted by
    path, and the number of candidate files left out for each reason (``short``, ``binary``).

    Symbolic links are skipped (a package's links point at files of the package or of another one)."""
    root = tree / kind.root
    chosen, dropped = [], Counter()
    if not root.is_dir():
        return chosen, dropped
    for file in sorted(root.rglob("*")):
        if file.is_symlink() or not file.is_file():
            continue
        relative = file.relative_to(root)
        compressed = file.name.endswith(".gz")
        name = file.name[:-3] if compressed else file.name
        if not name.endswith(kind.suffixes) or name.endswith(kind.exclude_suffixes):
            continue
        if any(part in kind.exclude_dirs for part in relative.parts[:-1]):
            continue
        size = file.stat().st_size
        if not compressed and size < min_bytes:  # most files: decided without reading them
            dropped["short"] += 1
            continue
        data = _read(file, compressed)
        if len(data) < min_bytes:
            dropped["short"] += 1
        elif b"\0" in data[:TEXT_PROBE]:
            dropped["binary"] += 1
        else:
            path = relative.with_name(name).as_posix()
            chosen.append(Selected(path, file, len(data), compressed))
    chosen.sort(key=lambda s: s.path)
    return chosen, dropped


# ----------------------------------------------------------------------------- licenses
SPDX = {"expat": "MIT", "mit": "MIT", "bsd-3-clause": "BSD-3-Clause", "bsd-2-clause": "BSD-2-Clause",
        "cecill-b": "CECILL-B", "cecill-c": "CECILL-C", "lgpl-2.1": "LGPL-2.1-only", "lgpl-2.1+": "LGPL-2.1-or-later",
        "gpl-2": "GPL-2.0-only", "gpl-2+": "GPL-2.0-or-later", "gpl-3": "GPL-3.0-only", "gpl-3+": "GPL-3.0-or-later",
        "apache-2.0": "Apache-2.0", "psf-2.0": "PSF-2.0", "x11": "X11"}
# free-text copyright files: the license named first wins (Python's names the Python license, then those of
# bundled code)
FREE_TEXT = [
    ("PSF-2.0", re.compile(r"PSF LICENSE AGREEMENT|Python Software Foundation License|^Python License\s*$", re.M)),
    ("GPL-2.0-or-later", re.compile(r"GNU General Public License.{0,200}?version 2.{0,80}?any\s+later\s+version", re.S)),
    ("GPL-3.0-or-later", re.compile(r"GNU General Public License.{0,200}?version 3.{0,80}?any\s+later\s+version", re.S)),
    ("LGPL-2.1-or-later", re.compile(r"GNU Lesser General Public License.{0,200}?version 2\.1.{0,80}?any\s+later\s+version", re.S)),
    ("Apache-2.0", re.compile(r"Apache License,? Version 2\.0")),
    ("MIT", re.compile(r"Permission is hereby granted, free of charge")),
]


def _paragraphs(text: str) -> list[dict[str, str]]:
    """The paragraphs of a Debian control-style file: field name (lower case) -> value (continuation lines
    joined with newlines)."""
    paragraphs, current, name = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, name = {}, None
        elif line[0] in " \t" and name:
            current[name] += "\n" + line.strip()
        elif ":" in line and not line.startswith("#"):
            name, _, value = line.partition(":")
            name = name.strip().lower()
            current[name] = value.strip()
    return paragraphs


def _spdx(name: str, texts: dict[str, str]) -> str:
    """A Debian short license name as SPDX, where known; a name of the file's own (e.g. ``Go``) is named by its
    text."""
    known = SPDX.get(name.lower())
    if known:
        return known
    text = texts.get(name.lower(), "")
    if "Redistribution and use in source and binary forms" in text:
        return "BSD-3-Clause" if "Neither the name" in text or "names of its" in text else "BSD-2-Clause"
    return name


@dataclass
class License:
    """A package's license as its ``debian/copyright`` names it: ``name`` (SPDX where known), ``as_written`` (the
    file's own name for it) and, for a machine-readable file, its ``Files:`` paragraphs, so each file can be
    given the license of the last paragraph matching it."""

    name: str
    as_written: str
    rules: list[tuple[list[str], str]] = field(default_factory=list)

    def of(self, path: str) -> str:
        found = self.name
        for patterns, name in self.rules:
            if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns):
                found = name
        return found


def read_license(text: str) -> License:
    """The license of a Debian copyright file: the ``Files: *`` paragraph's of a machine-readable (DEP-5)
    file, else the first known license its text names, else ``unknown``."""
    paragraphs = _paragraphs(text)
    if paragraphs and "format" in paragraphs[0] and "copyright-format" in paragraphs[0]["format"]:
        texts = {}
        for paragraph in paragraphs:
            if "license" in paragraph and "files" not in paragraph:
                short, _, body = paragraph["license"].partition("\n")
                texts[short.strip().lower()] = body
        rules = []
        for paragraph in paragraphs:
            if "files" in paragraph and "license" in paragraph:
                short, _, body = paragraph["license"].partition("\n")
                texts.setdefault(short.strip().lower(), body)
                rules.append((paragraph["files"].split(), short.strip()))
        general = next((short for patterns, short in rules if "*" in patterns), None)
        if general is not None:
            rules = [(patterns, _spdx(short, texts)) for patterns, short in rules if not patterns[0].startswith("debian/")]
            return License(_spdx(general, texts), general, rules)
    hits = [(match.start(), name) for name, pattern in FREE_TEXT if (match := pattern.search(text))]
    if hits:
        name = min(hits)[1]
        return License(name, name)
    return License("unknown", "unknown")


# ----------------------------------------------------------------------------- packages
@dataclass(frozen=True)
class Package:
    """One unpacked package: its name, version, architecture, the .deb's file name and SHA-256, its copyright
    file's text and the folder it was unpacked to."""

    name: str
    version: str
    architecture: str
    deb: str
    deb_sha256: str
    copyright: str
    tree: Path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_tools() -> None:
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            raise FetchError(f"{tool} not found: this script needs a Debian-style system with {tool} (package {package}) "
                             f"on PATH")


def download(name: str, folder: Path) -> Path:
    """``apt-get download NAME`` into ``folder``; the .deb it wrote."""
    before = set(folder.glob("*.deb"))
    result = subprocess.run(["apt-get", "download", name], cwd=folder, capture_output=True, text=True)
    debs = sorted(set(folder.glob("*.deb")) - before)
    if result.returncode != 0 or len(debs) != 1:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("E:")] or \
            (result.stderr + result.stdout).strip().splitlines()[-1:]
        reason = lines[0] if lines else f"apt-get exited with {result.returncode}"
        raise FetchError(f"cannot download package {name}: {reason} -- try by hand: "
                         f"cd /tmp && apt-get download {name} (after apt-get update if the version is gone)")
    return debs[0]


def unpack(deb: Path, folder: Path) -> Package:
    """Unpacks a .deb with ``dpkg-deb -x`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                            capture_output=True, text=True)
    extract = subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], capture_output=True, text=True)
    if fields.returncode != 0 or extract.returncode != 0:
        message = " / ".join(line.strip() for line in (fields.stderr + extract.stderr).splitlines() if line.strip())
        raise FetchError(f"cannot unpack {deb.name}: {message or 'dpkg-deb failed'} -- try by hand: "
                         f"dpkg-deb -x {deb.name} DIR")
    control = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in fields.stdout.splitlines())}
    name = control.get("package", deb.name.split("_")[0])
    copyright_file = folder / "usr/share/doc" / name / "copyright"
    copyright_text = copyright_file.read_text(encoding="utf-8", errors="replace") if copyright_file.is_file() else ""
    return Package(name, control.get("version", "?"), control.get("architecture", "?"), deb.name,
                   _sha256(deb.read_bytes()), copyright_text, folder)


# ----------------------------------------------------------------------------- output
def metadata_path(out_dir: Path, kind: str) -> Path:
    return out_dir / f"{kind}.json"


def up_to_date(out_dir: Path, kind: str, min_bytes: int) -> dict | None:
    """The kind's metadata if it matches this request (packages, filter) and every file it lists is there
    with its size; else None."""
    path = metadata_path(out_dir, kind)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    spec = KINDS[kind]
    if meta.get("format") != FORMAT or meta.get("filter") != spec.filter(min_bytes) or \
            [p.get("name") for p in meta.get("packages", [])] != list(spec.packages):
        return None
    folder = out_dir / kind
    for entry in meta.get("file_list", []):
        file = folder / entry["path"]
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            return None
    return meta


def write_kind(out_dir: Path, kind: str, packages: list[Package], min_bytes: int, spec: Kind | None = None) -> dict:
    """Selects the kind's files from unpacked packages, copies them to ``OUT_DIR/KIND/`` (replacing what was
    there), the copyright files to ``OUT_DIR/licenses/PACKAGE.copyright``, and writes ``OUT_DIR/KIND.json``;
    returns that metadata.

    Raises:
        FetchError: two packages give the same path, or no file passes the filter.
    """
    spec = spec or KINDS[kind]
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".{kind}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    files, package_rows, owner = [], [], {}
    try:
        for package in packages:
            chosen, dropped = select_files(package.tree, spec, min_bytes)
            license_ = read_license(package.copyright)
            licenses = Counter()
            for item in chosen:
                if item.path in owner:
                    raise FetchError(f"{kind}: {item.path} is in both {owner[item.path]} and {package.name}")
                owner[item.path] = package.name
                target = staging / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                if item.compressed:
                    data = _read(item.source, True)
                    target.write_bytes(data)
                else:
                    shutil.copyfile(item.source, target)
                    data = target.read_bytes()
                file_license = license_.of(item.path)
                licenses[file_license] += 1
                files.append({"path": item.path, "bytes": item.size, "package": package.name, "license": file_license,
                              "sha256": _sha256(data)})
            package_rows.append({
                "name": package.name, "version": package.version, "architecture": package.architecture,
                "deb": package.deb, "deb_sha256": package.deb_sha256, "license": license_.name,
                "license_as_written": license_.as_written, "copyright": f"licenses/{package.name}.copyright",
                "files": len(chosen), "bytes": sum(item.size for item in chosen), "file_licenses": dict(sorted(licenses.items())),
                "left_out": dict(sorted(dropped.items())),
            })
            log(f"{kind}: {package.name} {package.version}: {len(chosen)} files, {sum(i.size for i in chosen) / 1e6:.1f} MB "
                f"({license_.name}; left out: {', '.join(f'{n} {why}' for why, n in sorted(dropped.items())) or 'none'})")
        if not files:
            raise FetchError(f"{kind}: no file of {min_bytes} bytes or more passes the filter ({spec.description})")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files.sort(key=lambda entry: entry["path"])
    largest = max(files, key=lambda entry: (entry["bytes"], entry["path"]))
    licenses = Counter()
    for entry in files:
        licenses[entry["license"]] += 1
    meta = {
        "format": FORMAT, "kind": kind, "folder": kind, "script": "scripts/fetch_documents.py",
        "read_with": f"--data OUT_DIR/{kind}: the project's folder source, one document per file, split 90/5/5 by a hash of each path",
        "packages": package_rows, "filter": spec.filter(min_bytes),
        "files": len(files), "bytes": sum(entry["bytes"] for entry in files),
        "at_least_32768_bytes": sum(entry["bytes"] >= 32768 for entry in files),
        "largest": {"path": largest["path"], "bytes": largest["bytes"]},
        "licenses": dict(sorted(licenses.items())),
        "file_list": files,
    }
    folder = out_dir / kind
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    licenses_dir = out_dir / "licenses"
    licenses_dir.mkdir(exist_ok=True)
    for package in packages:
        (licenses_dir / f"{package.name}.copyright").write_text(package.copyright, encoding="utf-8")
    temporary = metadata_path(out_dir, kind).with_suffix(".json.partial")
    temporary.write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")
    os.replace(temporary, metadata_path(out_dir, kind))
    return meta


def fetch_kind(out_dir: Path, kind: str, min_bytes: int, force: bool = False) -> dict:
    """One kind: kept as it is if up to date (and not ``force``), else downloaded, unpacked, selected and written."""
    if not force:
        meta = up_to_date(out_dir, kind, min_bytes)
        if meta is not None:
            log(f"{kind}: up to date ({meta['files']} files, {meta['bytes'] / 1e6:.1f} MB in {out_dir / kind}); "
                f"--force refetches")
            return meta
    check_tools()
    spec = KINDS[kind]
    with tempfile.TemporaryDirectory(prefix=f"fetch_documents-{kind}-") as temporary:
        debs, trees = Path(temporary, "debs"), Path(temporary, "trees")
        debs.mkdir()
        packages = []
        for name in spec.packages:
            log(f"{kind}: apt-get download {name}")
            deb = download(name, debs)
            packages.append(unpack(deb, trees / name))
            log(f"{kind}: unpacked {deb.name} ({deb.stat().st_size / 1e6:.1f} MB)")
        meta = write_kind(out_dir, kind, packages, min_bytes, spec)
    log(f"{kind}: {meta['files']} files, {meta['bytes'] / 1e6:.1f} MB -> {out_dir / kind} "
        f"(largest {meta['largest']['path']}, {meta['largest']['bytes']:,} bytes)")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=f"kinds: {'; '.join(f'{k}: {v.description}' for k, v in KINDS.items())}")
    parser.add_argument("out_dir", type=Path, help="the folder to write OUT_DIR/KIND/ and OUT_DIR/KIND.json into")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)} (default: all)")
    parser.add_argument("--min-bytes", type=int, default=DEFAULT_MIN_BYTES,
                        help=f"keep files at least this long, after decompressing (default {DEFAULT_MIN_BYTES})")
    parser.add_argument("--force", action="store_true", help="fetch again even where the files are present")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"unknown kind(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(KINDS)}")
    if args.min_bytes < 1:
        parser.error("--min-bytes must be at least 1")
    try:
        for kind in kinds:
            fetch_kind(args.out_dir, kind, args.min_bytes, args.force)
    except FetchError as error:
        print(f"fetch_documents: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fetch_documents: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
