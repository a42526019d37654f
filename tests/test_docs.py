"""README.md against the code: the two commands first, every `audiences <command>` it shows
exists, every command exists in it, the Python API it shows imports, its links resolve."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import click
import pytest

from audiences.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
# `audiences [-p DIR | --project DIR | --debug]... COMMAND [SUBCOMMAND]`
INVOCATION = re.compile(
    r"(?:^|[\s/$=])audiences(?:\s+(?:-p|--project)\s+\S+|\s+--debug)*\s+([a-z][a-z-]*)"
    r"(?:[ \t]+([a-z][a-z-]*))?",
    re.MULTILINE,
)


def readme() -> str:
    return README.read_text(encoding="utf-8")


def shell_text(text: str) -> str:
    """Fenced blocks that are not Python, plus inline code spans (commands live there)."""
    blocks = [body for lang, body in FENCE.findall(text) if lang not in ("python", "yaml", "toml")]
    prose = FENCE.sub("", text)
    return "\n".join([*blocks, *INLINE.findall(prose)])


def commands() -> dict[str, click.Command]:
    """Every command path in the click group: ``build``, ``audit verify``, ..."""
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None
            found[f"{prefix}{name}"] = command
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")

    walk(cli, "")
    return found


def mentioned() -> list[str]:
    """Command paths as the README shows them (a group's subcommand when one follows)."""
    known = commands()
    out = []
    for first, second in INVOCATION.findall(shell_text(readme())):
        if isinstance(known.get(first), click.Group) and second:
            out.append(f"{first} {second}")
        else:
            out.append(first)
    return out


def test_readme_opens_with_make_demo_and_make_test() -> None:
    text = readme()
    first_block = FENCE.search(text)
    assert first_block is not None
    first_heading = re.search(r"^## ", text, re.MULTILINE)
    assert first_heading is None or first_block.start() < first_heading.start()
    lines = [line.split("#")[0].strip() for line in first_block.group(2).splitlines()]
    assert [line for line in lines if line] == ["make demo", "make test"]
    # nothing but the title comes before them
    assert [line for line in text[: first_block.start()].splitlines() if line.strip()] == [
        "# audiences"
    ]


def test_readme_sections_in_order() -> None:
    headings = re.findall(r"^## (.+)$", readme(), re.MULTILINE)
    order = [h for h in headings if h.startswith(("Five-minute tour", "Python API", "Config"))]
    assert [h.split()[0] for h in order] == ["Five-minute", "Python", "Configuration"]


def test_every_command_in_the_readme_exists() -> None:
    shown = mentioned()
    assert len(shown) >= 10, shown
    unknown = sorted(set(shown) - set(commands()))
    assert unknown == [], f"README shows commands the CLI lacks: {unknown}"


def test_every_command_is_in_the_readme() -> None:
    shown = set(mentioned())
    groups = {name for name, command in commands().items() if isinstance(command, click.Group)}
    missing = sorted(set(commands()) - shown - groups)
    assert missing == [], f"commands missing from README.md: {missing}"


@pytest.mark.parametrize(
    "line",
    [
        line.strip()
        for lang, body in FENCE.findall(README.read_text(encoding="utf-8"))
        if lang == "python"
        for line in body.splitlines()
        if line.startswith("from ")
    ],
)
def test_python_api_imports(line: str) -> None:
    match = re.fullmatch(r"from ([\w.]+) import ([\w, ]+)", line)
    assert match, line
    module = importlib.import_module(match.group(1))
    for name in match.group(2).split(","):
        assert hasattr(module, name.strip()), f"{match.group(1)} has no {name.strip()}"


def test_named_lower_level_api_exists() -> None:
    names = {
        span
        for span in INLINE.findall(readme())
        if re.fullmatch(r"(audiences|policies|connectors)(\.\w+)+", span)
        and span.rsplit(".", 1)[1] not in ("toml", "md", "yaml", "json", "db")  # files
    }
    assert len(names) >= 5, names
    for dotted in sorted(names):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), dotted
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"README names {dotted}, which does not import")


def test_relative_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#:]+)\)", readme())
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == []
