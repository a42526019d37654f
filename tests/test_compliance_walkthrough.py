"""docs/compliance-workflow.md, sections 1 to 4, run as written (issue #16).

The walkthrough's fenced blocks are read from the page — never copied here — and run in
order against a sample project and the local sandbox platforms: the segment YAML is
written to ``segments/``, the ``[approvers]`` TOML replaces the template's, and every
``audiences …`` command line runs through the real CLI from the project folder. Only what
the page marks as the officer's to fill in is substituted: the key files (``~`` is a
home folder of the test's own), the public keys under ``[approvers.keys]``. Each step is
checked against the outcome the page documents (exit codes, report files, the report
naming the approver and the sync, platform audiences emptied or deleted).

The three take-down lines of section 4 are alternatives: the first two run in order; the
third (``revoke --takedown``) runs after the segment is approved and synced again with
the page's own ``approve`` and ``sync`` lines.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import AS_OF, Project, frozen_clock, meta_rows

from audiences.cli import cli

DOC = Path(__file__).parent.parent / "docs" / "compliance-workflow.md"
ROWS = 12_000


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


@dataclass(frozen=True)
class Block:
    lang: str
    text: str

    def commands(self) -> list[list[str]]:
        """The ``audiences …`` lines (``\\`` continuations joined, ``# comments`` dropped)."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
        return [argv for argv in lines if argv and argv[0] == "audiences"]


def walkthrough() -> list[Block]:
    """The fenced blocks of sections 1 to 4, in order."""
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index("\n## 1. "), text.index("\n## 5. ")
    found = re.findall(r"^```(\w*)\n(.*?)^```$", text[start:end], re.DOTALL | re.MULTILINE)
    return [Block(lang, body) for lang, body in found]


class Officer:
    """Runs the page's lines in the project folder, as the officer would."""

    def __init__(self, p: Project, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.p, self.home = p, home
        monkeypatch.chdir(p.root)
        monkeypatch.setenv("HOME", str(home))

    def run(self, argv: list[str], expect: int = 0) -> Result:
        args = [str(Path(a).expanduser()) if a.startswith("~/") else a for a in argv[1:]]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == expect, (argv, result.stdout, result.stderr)
        return result


def trust_block(block: Block, keys: dict[str, str]) -> str:
    """The page's ``[approvers]`` TOML with each officer's public key filled in."""
    doc = tomllib.loads(block.text)
    assert set(doc["approvers"]["keys"]) == set(keys), "the page's approvers changed"
    text = block.text
    for name, value in doc["approvers"]["keys"].items():
        text = text.replace(value, keys[name].strip(), 1)
    assert tomllib.loads(text)["approvers"]["keys"] == {k: v.strip() for k, v in keys.items()}
    return text


def install_approvers(p: Project, toml: str) -> None:
    """The template's ``[approvers]`` section (the last one) replaced by the page's."""
    text = p.toml.read_text(encoding="utf-8")
    head = text[: text.index("\n[approvers]")]
    p.toml.write_text(head + "\n\n" + toml, encoding="utf-8")


def meta_audience(p: Project, segment: str) -> str:
    return p.remote_id(segment, "meta")


def test_the_officers_walkthrough_runs_as_documented(
    make_project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiences.compliance.keys import generate_keypair

    blocks = walkthrough()
    p = make_project(rows=ROWS, approve=False)
    officer = Officer(p, tmp_path / "home", monkeypatch)
    (officer.home / ".audiences").mkdir(parents=True)
    segment = ""
    lines: list[list[str]] = []  # every command line, in page order
    for block in blocks:
        if block.lang == "yaml":
            segment = re.search(r"^name: (\S+)$", block.text, re.MULTILINE)[1]  # type: ignore[index]
            (p.root / "segments" / f"{segment}.yaml").write_text(block.text, encoding="utf-8")
        elif block.lang == "toml":
            # the keys alice and bob list: alice's from the page's keygen, bob's a colleague's
            (keygen,) = [c for c in lines if c[1] == "keygen"]
            printed = officer.run(keygen).stdout
            alice = re.search(r'= "([A-Za-z0-9+/=]{40,})"', printed)[1]  # type: ignore[index]
            private = Path(keygen[keygen.index("--private") + 1]).expanduser()
            assert private.stat().st_mode & 0o777 == 0o600
            assert (p.root / keygen[keygen.index("--public") + 1]).is_file()
            bob = generate_keypair(tmp_path / "bob.key", tmp_path / "bob.pub")
            pem = (tmp_path / "bob.pub").read_text(encoding="utf-8")
            install_approvers(p, trust_block(block, {"alice": alice, "bob": pem}))
            assert bob.public_base64 != alice
        elif not block.lang:
            lines += block.commands()
    assert segment == "diabetes-outreach", "the page's example segment changed"
    by = {c[1]: c for c in lines if c[1] in ("review", "approve", "sync", "report")}
    order = [c[1] for c in lines]
    assert order == ["keygen", "review", "approve", "sync", "report", "revoke", "takedown",
                     "takedown", "revoke"], order  # fmt: skip
    takedown, delete = [c for c in lines if c[1] == "takedown"]
    revoke, revoke_takedown = [c for c in lines if c[1] == "revoke"]
    assert "--delete" in delete and "--takedown" in revoke_takedown

    # 2. review → approve → sync → report
    reviewed = officer.run(by["review"], expect=0)  # 3 would mean a rule blocks it
    review_id = re.search(r"\b(v-\d{8}T\d{6}-[0-9a-f]{6})\b", reviewed.stdout + reviewed.stderr)
    assert review_id, reviewed.stdout + reviewed.stderr
    reports = p.root / ".audiences" / "reports"
    for ext in ("md", "html", "json"):
        assert (reports / f"{review_id[1]}.{ext}").is_file(), ext
    approved = officer.run(by["approve"])
    assert review_id[1] in approved.stdout + approved.stderr  # the review it is based on
    officer.run(by["sync"])
    audience = meta_audience(p, segment)
    on_meta = p.boxes.meta.members(audience)
    assert on_meta and on_meta == meta_rows(p.confirmed(segment, "meta"))
    report = officer.run(by["report"]).stdout
    key_id = p.query("SELECT key_id FROM approvals WHERE segment = ?", (segment,))[0][0]
    note = by["approve"][by["approve"].index("--note") + 1]
    for expected in ("alice", key_id, note, "verified", audience):
        assert expected in report.replace("\\", ""), expected

    # 4. revoke: syncs are blocked (exit 3); the audience stays live
    officer.run(revoke)
    officer.run(by["sync"], expect=3)
    assert p.boxes.meta.members(audience) == on_meta
    # take down: emptied, then deleted
    officer.run(takedown)
    assert p.boxes.meta.members(audience) == set()
    assert p.confirmed(segment, "meta").height == 0
    officer.run(delete)
    assert audience not in p.boxes.meta.audience_ids()
    kinds = [
        k for (k,) in p.query("SELECT kind FROM audit WHERE kind IN ('revocation', 'takedown')")
    ]
    assert kinds.count("revocation") == 1 and kinds.count("takedown") >= 2

    # revoke --takedown, after the page's approve and sync made it live again
    officer.run(by["approve"])
    officer.run(by["sync"])
    again = meta_audience(p, segment)
    assert p.boxes.meta.members(again)
    officer.run(revoke_takedown)
    assert p.boxes.meta.members(again) == set()
    officer.run(by["sync"], expect=3)  # revoked: nothing is added back
    assert p.boxes.meta.members(again) == set()
