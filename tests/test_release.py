"""The files a released package has: LICENSE (in the wheel), CHANGELOG.md, __version__, URLs,
and an API reference that names every public module."""

from __future__ import annotations

import email.parser
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import cqrs

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
PROJECT = PYPROJECT["project"]


def test_the_license_file_is_the_declared_license():
    assert PROJECT["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text("utf-8")
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text
    assert PROJECT["license-files"] == ["LICENSE"]


def test_the_wheel_ships_the_license_and_declares_license_and_urls(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (license_path,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_path) == (ROOT / "LICENSE").read_bytes()
        (metadata_path,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_path).decode())
    assert metadata["License-Expression"] == "MIT"
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL") or [])
    assert urls == PROJECT["urls"]
    assert {"Homepage", "Documentation", "Repository", "Issues", "Changelog"} <= set(urls)


def test_version_comes_from_the_package_metadata():
    assert cqrs.__version__ == importlib.metadata.version("cqrs-es") == PROJECT["version"]


def test_version_falls_back_when_the_package_is_not_installed():
    code = (
        "import importlib.metadata as m\n"
        "def missing(name):\n"
        "    raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import cqrs\n"
        "print(cqrs.__version__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "0+unknown"


# Keep a Changelog 1.1.0: the kinds of change, and the heading of each release.
KINDS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
RELEASE = re.compile(r"^## \[(?P<version>\d+\.\d+\.\d+)\] - (?P<date>\d{4}-\d{2}-\d{2})$")


def test_the_changelog_keeps_a_changelog():
    lines = (ROOT / "CHANGELOG.md").read_text("utf-8").splitlines()
    assert lines[0] == "# Changelog"
    assert "keepachangelog.com" in "\n".join(lines[:6])
    releases = [line for line in lines if line.startswith("## ")]
    assert releases[0] == "## [Unreleased]"
    versions = []
    for heading in releases[1:]:
        match = RELEASE.match(heading)
        assert match, f"not a release heading: {heading!r}"
        versions.append(tuple(int(part) for part in match["version"].split(".")))
    assert versions == sorted(versions, reverse=True), "newest release first"
    assert tuple(int(p) for p in PROJECT["version"].split(".")) in versions
    kinds = {line[4:] for line in lines if line.startswith("### ")}
    assert kinds <= KINDS, kinds - KINDS


def referenced_modules() -> set[str]:
    pages = (ROOT / "docs" / "reference").glob("*.md")
    return {
        m for page in pages for m in re.findall(r"^::: ([\w.]+)$", page.read_text(), re.MULTILINE)
    }


def test_the_api_reference_names_every_public_module():
    # Core modules one by one; a backend by its package (its __all__ is its public surface).
    core = {
        f"cqrs.{path.stem}"
        for path in (ROOT / "cqrs").glob("*.py")
        if not path.name.startswith("_")
    }
    core |= {
        f"cqrs.{path.parent.name}"
        for path in (ROOT / "cqrs").glob("*/__init__.py")
        if not path.parent.name.startswith("_")
    }
    wheel = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    backends = {Path(package).name for package in wheel if package.startswith("backends/")}
    missing = (core | backends) - referenced_modules()
    assert not missing, f"add a '::: module' line for each to a page of docs/reference: {missing}"
