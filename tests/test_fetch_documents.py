"""scripts/fetch_documents.py on fake unpacked packages: the filter, the metadata, the licenses, reruns (no apt)."""

import gzip
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from memorizing_transformers_pytorch.data import load_documents

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_documents.py"
_spec = importlib.util.spec_from_file_location("fetch_documents", SCRIPT)
fd = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("fetch_documents", fd)  # dataclasses look their module up
_spec.loader.exec_module(fd)

MIN = 100
DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: 2009 Someone
License: Go

Files: src/debug/elf/*
Copyright: 1996 Someone else
License: Apache-2.0

Files: debian/*
Copyright: 2020 A packager
License: Go

License: Go
 Redistribution and use in source and binary forms, with or without
 modification, are permitted provided that the following conditions are met:
 .
 Neither the name of Google Inc. nor the names of its contributors may be used
"""
GPL_TEXT = """This package was debianized by someone.

PARI/GP is free software; you can redistribute it and/or modify it under the
terms of the GNU General Public License as published by the Free Software
Foundation; either version 2 of the License, or (at your option) any later
version.
"""


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _package(tmp_path: Path, name: str, files: dict[str, bytes], root: str, copyright_text: str = DEP5):
    tree = tmp_path / "trees" / name
    for relative, data in files.items():
        _write(tree / root / relative, data)
    return fd.Package(name, "1.0-1", "all", f"{name}_1.0-1_all.deb", "0" * 64, copyright_text, tree)


def test_select_files_keeps_long_text_files_of_the_kind_sorted(tmp_path):
    root = tmp_path / fd.KINDS["code"].root
    long = b"package main\n" + b"// x\n" * 40
    _write(root / "src/z/b.go", long)
    _write(root / "src/a.go", long)
    _write(root / "src/short.go", b"package short\n")
    _write(root / "src/zipped.go.gz", gzip.compress(long))
    _write(root / "src/small.go.gz", gzip.compress(b"package s\n"))
    _write(root / "src/blob.go", b"\0" * 200)  # the folder source would skip it
    _write(root / "src/notes.txt", long)
    _write(root / "src/testdata/t_test.go", long)  # code keeps testdata and tests
    (root / "src/link.go").symlink_to(root / "src/a.go")
    (root / "src/dir.go").mkdir()
    chosen, dropped = fd.select_files(tmp_path, fd.KINDS["code"], MIN)
    assert [s.path for s in chosen] == ["src/a.go", "src/testdata/t_test.go", "src/z/b.go", "src/zipped.go"]
    assert all(s.size == len(long) for s in chosen)
    assert dropped == {"short": 2, "binary": 1}
    excluding = fd.Kind(("x",), fd.KINDS["code"].root, (".go",), "test", exclude_dirs=("testdata",), exclude_suffixes=("_test.go",))
    assert [s.path for s in fd.select_files(tmp_path, excluding, MIN)[0]] == ["src/a.go", "src/z/b.go", "src/zipped.go"]
    assert fd.select_files(tmp_path / "nothing", fd.KINDS["code"], MIN) == ([], {})


def test_read_license():
    dep5 = fd.read_license(DEP5)
    assert (dep5.name, dep5.as_written) == ("BSD-3-Clause", "Go")  # named by its text
    assert dep5.of("src/debug/elf/elf.go") == "Apache-2.0" and dep5.of("src/fmt/print.go") == "BSD-3-Clause"
    assert fd.read_license(GPL_TEXT).name == "GPL-2.0-or-later"
    python = "Copyright:\n\nPython License\n==============\n\nPSF LICENSE AGREEMENT\n" + GPL_TEXT
    assert fd.read_license(python).name == "PSF-2.0"
    assert fd.read_license("no license here").name == "unknown"


def _tex_packages(tmp_path):
    root = fd.KINDS["tex"].root
    a = _package(tmp_path, "pari-doc", {"users.tex": b"\\input x\n", "usersch3.tex": b"x" * 300, "big.tex.gz": gzip.compress(b"y" * 500),
                                        "doc.pdf": b"%PDF" + b"\0" * 300}, root, GPL_TEXT)
    b = _package(tmp_path, "other-doc", {"sub/more.tex": b"z" * 150}, root)
    return [a, b]


def test_write_kind_copies_files_and_writes_metadata(tmp_path):
    out = tmp_path / "out"
    meta = fd.write_kind(out, "tex", _tex_packages(tmp_path), MIN)
    assert sorted(p.relative_to(out / "tex").as_posix() for p in (out / "tex").rglob("*") if p.is_file()) == \
        ["big.tex", "sub/more.tex", "usersch3.tex"]
    assert (out / "tex/big.tex").read_bytes() == b"y" * 500  # decompressed
    assert json.loads((out / "tex.json").read_text()) == meta
    assert [f["path"] for f in meta["file_list"]] == ["big.tex", "sub/more.tex", "usersch3.tex"]
    assert (meta["files"], meta["bytes"], meta["largest"]) == (3, 950, {"path": "big.tex", "bytes": 500})
    assert meta["file_list"][0]["sha256"] == hashlib.sha256(b"y" * 500).hexdigest()
    assert meta["filter"]["min_bytes"] == MIN and meta["filter"]["suffixes"] == [".tex"]
    pari, other = meta["packages"]
    assert (pari["name"], pari["version"], pari["license"], pari["files"], pari["bytes"]) == ("pari-doc", "1.0-1", "GPL-2.0-or-later", 2, 800)
    assert pari["left_out"] == {"short": 1} and other["license"] == "BSD-3-Clause"
    assert meta["licenses"] == {"BSD-3-Clause": 1, "GPL-2.0-or-later": 2}
    assert (out / "licenses/pari-doc.copyright").read_text() == GPL_TEXT
    assert not list(out.glob(".*partial*")) and not list(out.glob("*.partial"))
    # the metadata stays outside the folder: the project's folder source reads exactly the selected files
    assert sum(len(d) for d in load_documents(str(out / "tex"), "all", progress=False)) == 950


def test_output_is_deterministic(tmp_path):
    packages = _tex_packages(tmp_path)
    fd.write_kind(tmp_path / "one", "tex", packages, MIN)
    fd.write_kind(tmp_path / "two", "tex", packages, MIN)
    assert (tmp_path / "one/tex.json").read_bytes() == (tmp_path / "two/tex.json").read_bytes()


def test_same_path_in_two_packages_is_an_error(tmp_path):
    root = fd.KINDS["tex"].root
    one = _package(tmp_path, "one", {"a.tex": b"a" * 200}, root)
    two = _package(tmp_path, "two", {"a.tex": b"b" * 200}, root)
    with pytest.raises(fd.FetchError, match="a.tex is in both one and two"):
        fd.write_kind(tmp_path / "out", "tex", [one, two], MIN)
    assert not (tmp_path / "out/tex").exists() and not (tmp_path / "out/.tex.partial").exists()


def test_rerun_does_not_refetch_unless_needed(tmp_path, monkeypatch):
    out = tmp_path / "out"
    spec = fd.KINDS["tex"]
    monkeypatch.setitem(fd.KINDS, "tex", fd.Kind(("pari-doc", "other-doc"), spec.root, spec.suffixes, spec.description))
    meta = fd.write_kind(out, "tex", _tex_packages(tmp_path), MIN)

    def no_apt(*args, **kwargs):
        raise AssertionError("apt was called")

    monkeypatch.setattr(fd, "download", no_apt)
    assert fd.fetch_kind(out, "tex", MIN) == meta  # files present: kept
    assert fd.up_to_date(out, "tex", MIN + 1) is None  # another filter
    (out / "tex/sub/more.tex").write_bytes(b"changed")
    assert fd.up_to_date(out, "tex", MIN) is None  # a file changed size
    monkeypatch.setattr(fd, "check_tools", lambda: None)
    with pytest.raises(AssertionError, match="apt was called"):
        fd.fetch_kind(out, "tex", MIN)
    shutil.copyfile(tmp_path / "trees/other-doc" / spec.root / "sub/more.tex", out / "tex/sub/more.tex")
    with pytest.raises(AssertionError, match="apt was called"):
        fd.fetch_kind(out, "tex", MIN, force=True)


def test_missing_apt_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fd.shutil, "which", lambda name: None)
    assert fd.main([str(tmp_path / "out"), "--kinds", "tex"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "apt-get not found" in error
    with pytest.raises(SystemExit):
        fd.main([str(tmp_path / "out"), "--kinds", "tex,poetry"])
