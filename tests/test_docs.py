"""README.md and docs/ against the code: the two commands first, every `audiences <command>`
the README shows exists, every command exists in it, the Python API it shows imports, its
links resolve; every command example of README.md, docs/*.md and each command's --help
runs (see "examples run" below)."""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import click
import pytest
from click.testing import CliRunner

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


# ------------------------------------------------------------------------ examples run
# Every `audiences ...` line of a shell block in README.md and docs/*.md runs, in document
# order, in a scratch folder (one per document), and must exit 0 or 3 (3: blocked by policy,
# a documented outcome). What the test does for the reader's hands:
#
# * after `init`, the project's destinations point at the test's own sandboxes on
#   127.0.0.1 (what `audiences sandbox &` would serve); the sample data is capped at
#   SAMPLE_ROWS rows;
# * after `keygen --name NAME`, the printed line goes under [approvers] keys (the step the
#   example's comment asks for);
# * the placeholders BUILD_ID, BASE64 and SEQ:HASH become the newest build id, a fresh
#   public key and the audit head; `~` is a scratch home (with the messy CRM export of
#   tests/test_init_from.py in ~/exports) and absolute paths live under a scratch root.
#
# Comments the test understands (invisible in the rendered page):
#
# * `<!-- docs-test: skip COMMAND — reason -->`: the document's lines of that command do not
#   run (`sandbox`: it serves until Ctrl-C; the test serves its own sandboxes);
# * `<!-- docs-test: segment NAME -->`: the scratch project gets segment NAME (a copy of
#   flu-shot-reminder) for the document's examples;
# * `<!-- docs-test: run audiences ... -->`: a step the prose implies, run at that point
#   (e.g. a sync before a takedown);
# * `<!-- docs-test: each -->`: the lines of the next block are alternatives: each runs on
#   its own copy of the project.
SAMPLE_ROWS = 20000
MARKER = re.compile(r"<!--\s*docs-test:\s*(skip|segment|run|each)\b\s*(.*?)\s*(?:—[^>]*)?-->")
SHELL_LANGS = ("", "console", "sh", "shell", "bash")


class Doc(NamedTuple):
    steps: list[tuple[int, str, bool]]  # (line, command, an alternative of its block)
    skip: set[str]
    segments: list[str]


def doc_examples(path: Path) -> Doc:
    """Every example of ``path`` in order, with what its markers say."""
    text = path.read_text(encoding="utf-8")
    markers = list(MARKER.finditer(text))
    skip = {m.group(2).split()[0] for m in markers if m.group(1) == "skip"}
    segments = [m.group(2) for m in markers if m.group(1) == "segment"]
    found: list[tuple[int, int, str, bool]] = []  # (offset, line, command, alternative)
    for m in markers:
        if m.group(1) == "run":
            found.append((m.start(), text[: m.start()].count("\n") + 1, m.group(2), False))
    each = [m.end() for m in markers if m.group(1) == "each"]
    for block in FENCE.finditer(text):
        if block.group(1) not in SHELL_LANGS:
            continue
        alternative = any(
            end <= block.start() and text[end : block.start()].strip() == "" for end in each
        )
        first = text[: block.start()].count("\n") + 2
        for line, command in _commands(block.group(2), first):
            found.append((block.start(), line, command, alternative))
    steps = [(line, command, alt) for _, line, command, alt in sorted(found)]
    return Doc(steps, skip, segments)


def _commands(body: str, first: int) -> list[tuple[int, str]]:
    out, pending, start = [], "", 0
    for number, raw in enumerate(body.splitlines(), first):
        line = raw.strip().removeprefix("$ ")
        if not pending:
            if not re.match(r"audiences\s", line):
                continue
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


EXAMPLE_DOCS = [
    page for page in [README, *sorted((ROOT / "docs").glob("*.md"))] if doc_examples(page).steps
]


@pytest.fixture(scope="module")
def scratch(sandboxes: object, sandbox_tokens: dict[str, str]) -> Iterator[object]:
    """The sandboxes, with their tokens in the environment (as `audiences sandbox` sets)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in sandbox_tokens.items():
            mp.setenv(key, value)
        yield sandboxes


class Scenario:
    """Runs one document's examples in order, in its own scratch folder."""

    def __init__(self, folder: Path, boxes: object, extra: list[str]):
        self.cwd = folder
        # its own home (`~`) and root (absolute paths) inside the scratch folder
        self.paths = {"base": folder, "home": folder / "home", "root": folder / "root"}
        self.paths["home"].mkdir(exist_ok=True)
        self.exports()
        self.boxes = boxes
        self.extra = extra
        self.checkpoint_only: set[str] = set()

    def exports(self) -> None:
        """The user's CRM exports in ~/exports (the messy HubSpot/Epic-style fixture)."""
        from test_init_from import messy_events, write_events
        from test_messy_crm import messy_rows, write_csv

        write_csv(self.paths["home"] / "exports" / "contacts.csv", messy_rows())
        write_events(self.paths["home"] / "exports" / "events.csv", messy_events())

    def project(self) -> Path:
        return self.cwd

    def alternative(self, n: int, line: int, command: str) -> None:
        """Run ``command`` on a copy of the project; the scenario goes on from the original."""
        import shutil

        here = self.cwd
        self.cwd = self.paths["base"] / f"alternative-{id(self)}-{n}"
        shutil.copytree(here, self.cwd, symlinks=True)
        try:
            self.run(line, command)
        finally:
            self.cwd = here

    def run(self, line: int, command: str) -> None:
        for part in command.split(" && "):
            words = shlex.split(part, comments=True)
            if words[0] == "cd":
                self.cwd = (self.cwd / words[1]).resolve()
                continue
            out = None
            if ">" in words:
                at = words.index(">")
                out, words = self.cwd / words[at + 1], words[:at]
            words = [self.concrete(w) for w in words[1:] if w != "&"]
            self.invoke(line, command, words, out)

    def concrete(self, word: str) -> str:
        if word.startswith("~/"):
            return str(self.paths["home"] / word[2:])
        if word.startswith("/") and not word.startswith(str(self.paths["base"])):
            target = self.paths["root"] / word.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            return str(target)
        if word == "BUILD_ID":
            return self.query("SELECT build_id FROM builds ORDER BY started_at DESC LIMIT 1")
        if word == "BASE64":
            from audiences.compliance.keys import generate_keypair

            folder = self.paths["base"] / "other-keys"
            folder.mkdir(exist_ok=True)
            n = len(list(folder.iterdir()))
            pair = generate_keypair(folder / f"k{n}.key", folder / f"k{n}.pub")
            return pair.public_base64
        if word == "SEQ:HASH":
            seq, digest = self.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC")
            return f"{seq}:{digest}"
        return word

    def query_row(self, sql: str) -> tuple[object, ...]:
        import sqlite3

        conn = sqlite3.connect(self.project() / ".audiences" / "state.db")
        try:
            row = conn.execute(sql).fetchone()
        finally:
            conn.close()
        assert row is not None, sql
        return tuple(row)

    def query(self, sql: str) -> str:
        return str(self.query_row(sql)[0])

    def invoke(self, line: int, shown: str, words: list[str], out: Path | None) -> None:
        if words[0] == "sample-data" and "--rows" in words:
            words[words.index("--rows") + 1] = str(SAMPLE_ROWS)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(self.cwd)
            mp.setenv("HOME", str(self.paths["home"]))
            result = CliRunner().invoke(cli, words)
        where = f"line {line}: {shown}"
        assert result.exit_code in (0, 3), f"{where}\n{result.stderr}{result.stdout}"
        errors = [e for e in result.stderr.splitlines() if e.startswith("Error: ")]
        assert errors == [], f"{where}\n{result.stderr}"  # 3 is a policy block, not an error
        if out is not None:
            out.write_text(result.stdout, encoding="utf-8")
        if words[0] == "init" and "--from" not in words:
            self.after_init(self.cwd / words[1])
        # the documented paste of the printed line (not for a key the page then adds as a
        # checkpoint-only key: the page says not to list it)
        named = words[words.index("--name") + 1] if "--name" in words else None
        if words[0] == "keygen" and named not in self.checkpoint_only:
            toml = self.project() / "audiences.toml"
            pasted = result.stdout.strip()
            toml.write_text(
                toml.read_text().replace("[approvers]", f"[approvers]\nkeys = {{ {pasted} }}")
            )

    def after_init(self, root: Path) -> None:
        import shutil

        from conftest import _point_at_sandboxes

        toml = root / "audiences.toml"
        toml.write_text(_point_at_sandboxes(toml.read_text(), self.boxes))
        ca = root / ".audiences" / "sandbox"
        ca.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.boxes.ca_file, ca / "ca.pem")  # type: ignore[attr-defined]
        shutil.copyfile(
            self.boxes.data_manager_ca_file,  # type: ignore[attr-defined]
            ca / "data-manager-ca.pem",
        )
        for name in self.extra:
            seg = (root / "segments" / "flu-shot-reminder.yaml").read_text()
            (root / "segments" / f"{name}.yaml").write_text(
                seg.replace("name: flu-shot-reminder", f"name: {name}")
            )


@pytest.mark.parametrize("doc", EXAMPLE_DOCS, ids=lambda p: p.name)
def test_documented_examples_run(doc: Path, scratch: object, tmp_path: Path) -> None:
    shown = doc_examples(doc)
    scenario = Scenario(tmp_path, scratch, shown.segments)
    scenario.checkpoint_only = {
        shlex.split(command)[3]
        for _, command, _ in shown.steps
        if command.startswith("audiences approvers add ") and "--checkpoints-only" in command
    }
    if not re.match(r"audiences init\s", shown.steps[0][1]):
        scenario.run(0, "audiences init clinic && cd clinic")
        scenario.run(0, f"audiences sample-data --rows {SAMPLE_ROWS}")
    for n, (line, command, alternative) in enumerate(shown.steps):
        if command.split()[1] in shown.skip:
            continue
        if alternative:
            scenario.alternative(n, line, command)
        else:
            scenario.run(line, command)


# ------------------------------------------------------------------- --help examples
def help_examples() -> list[tuple[str, str]]:
    """(command, example) of every command's --help epilog, in the order of
    audiences/cli/examples.py (each line works after the ones before it)."""
    from audiences.cli.examples import EXAMPLES

    known = commands()
    out = []
    for path in EXAMPLES:
        epilog = known[path].epilog or ""
        out += [(path, line.strip()) for line in epilog.splitlines() if "audiences " in line]
    return out


def test_every_command_shows_an_example_and_every_option_has_help() -> None:
    shown = {path for path, _ in help_examples()}
    for path, command in commands().items():
        if isinstance(command, click.Group):
            continue
        assert path in shown, f"`audiences {path} --help` shows no example"
        bare = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert bare == [], f"`audiences {path}`: options without help text: {bare}"
        text = CliRunner().invoke(cli, [*path.split(), "--help"]).stdout
        assert "Examples:" in text and f"audiences {path}" in text, path


def test_help_examples_run(scratch: object, tmp_path: Path) -> None:
    scenario = Scenario(tmp_path, scratch, [])
    for path, example in help_examples():
        if "until Ctrl-C" in example:
            continue  # a server: the test serves its own sandboxes
        if path != "init" and scenario.cwd == tmp_path:
            scenario.run(0, "cd clinic")
        scenario.run(0, example)


def test_an_example_that_fails_fails_the_suite(scratch: object, tmp_path: Path) -> None:
    scenario = Scenario(tmp_path, scratch, [])
    with pytest.raises(AssertionError, match="line 7: audiences schema --no-such-option"):
        scenario.run(7, "audiences schema --no-such-option")
    with pytest.raises(AssertionError, match=r"Error: no audiences\.toml"):
        scenario.run(8, "audiences validate")


def test_markers_and_continuations_are_read(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- docs-test: segment diabetes-outreach — a name the page uses -->\n"
        "<!-- docs-test: skip sandbox — serves until Ctrl-C -->\n"
        "```console\n$ audiences sandbox &\n$ audiences approve x --by a \\\n"
        '    --note "two lines"\n```\n'
        "<!-- docs-test: run audiences sync x -->\n<!-- docs-test: each -->\n"
        "```\naudiences takedown x --by a   # one\naudiences revoke x --by a\n```\n"
        "```yaml\naudiences: not a command\n```\n"
    )
    doc = doc_examples(page)
    assert doc.skip == {"sandbox"} and doc.segments == ["diabetes-outreach"]
    assert doc.steps == [
        (4, "audiences sandbox &", False),
        (5, 'audiences approve x --by a  --note "two lines"', False),
        (8, "audiences sync x", False),
        (11, "audiences takedown x --by a   # one", True),
        (12, "audiences revoke x --by a", True),
    ]


# ------------------------------------------------------------- commands named in errors
def named_in_code() -> list[tuple[str, str]]:
    """(file, `audiences ...`) of every command an error, hint or docstring names."""
    found = []
    for folder in ("audiences", "policies", "connectors"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            text = re.sub(r'"\s*\n\s*f?"', "", text)  # implicit string concatenation
            found += [(path.name, m) for m in re.findall(r"`(audiences [^`]+)`", text)]
    return found


def test_commands_named_by_the_code_exist_with_their_options() -> None:
    """An error that points at a command points at one that exists, with options it has."""
    known = commands()
    group_options = {o for p in cli.params for o in getattr(p, "opts", [])}
    checked = 0
    for where, text in named_in_code():
        words = re.sub(r"[\[\]|]", " ", text.split(" | ")[0]).split()[1:]
        words = [w for w in words if w not in group_options and w != "-p"]
        if not words or words[0].startswith("-"):
            continue
        first, rest = words[0], words[1:]
        for name in first.split("/"):
            path = name
            if isinstance(known.get(name), click.Group) and rest and not rest[0].startswith("-"):
                path = f"{name} {rest[0].split('/')[0]}"
            assert path in known, f"{where}: `{text}` names no command"
            options = {o for p in known[path].params for o in getattr(p, "opts", [])}
            for option in (w for w in rest if w.startswith("--")):
                assert option in options, f"{where}: `{text}`: {path} has no {option}"
            checked += 1
    assert checked >= 40, checked
