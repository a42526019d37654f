"""The package map: docs/internals.md names every package and module, the packages'
docstrings name their parts, and the 0.1 module paths still import."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("audiences", "policies", "connectors")


def layout_section() -> str:
    text = (ROOT / "docs" / "internals.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)^## ", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/internals.md has no '## Layout' section"
    return match.group(1)


def packages() -> list[Path]:
    return sorted(
        p.parent.relative_to(ROOT)
        for top in PACKAGES
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    )


@pytest.mark.parametrize("package", packages(), ids=str)
def test_every_package_is_in_the_module_map(package: Path) -> None:
    text = layout_section()
    assert f"{package.as_posix()}/" in text or f"`{package.name}/`" in text, (
        f"docs/internals.md does not show the package {package}"
    )


def modules() -> list[Path]:
    """Modules the map lists one by one (a connector's or the CLI's own files are its
    folder's business)."""
    skip = ("connectors/file", "connectors/meta", "connectors/google", "connectors/sandbox")
    out = []
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if path.name in ("__init__.py", "__main__.py") or rel.startswith(skip):
                continue
            if rel.startswith("audiences/cli/") or "__pycache__" in rel:
                continue
            out.append(path.relative_to(ROOT))
    return sorted(out)


@pytest.mark.parametrize("module", modules(), ids=str)
def test_every_module_is_in_the_module_map(module: Path) -> None:
    assert f"`{module.name}`" in layout_section(), f"docs/internals.md does not list {module}"


@pytest.mark.parametrize("package", ["audiences", "policies", "connectors"])
def test_top_packages_open_with_a_map(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__doc__ and len(module.__doc__.splitlines()) > 5
    assert module.__all__


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("audiences.config", "audiences.core.config"),
        ("audiences.build", "audiences.pipeline.build"),
        ("audiences.sync", "audiences.pipeline.sync"),
        ("audiences.insights", "audiences.pipeline.insights"),
        ("audiences.identifiers", "audiences.crm.identifiers"),
        ("policies.dp", "policies.privacy.dp"),
    ],
)
def test_module_paths_of_version_0_1_are_aliases(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(new).__spec__.name == new


def test_no_comment_cites_files_outside_the_repository() -> None:
    outside = re.compile(r"\b(PRIVACY|PLATFORMS|ARCHITECTURE|STYLE)\.md\b")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in (*PACKAGES, "tests", "benchmarks", "docs")
        for path in (ROOT / top).rglob("*")
        if path.suffix in (".py", ".md", ".yaml") and path.name != "test_layout.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert not found, f"cite docs/… instead: {found}"
