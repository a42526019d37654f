"""Compliance reports: the gate's report document as JSON, Markdown or a self-contained
HTML page, rendered from jinja2 templates (``policies/report/templates/``).

* HTML is autoescaped: every value from the report document (segment descriptions,
  rule details, names) is escaped by jinja2, never by hand. The page has inline CSS and
  an inline SVG funnel only (no scripts, no external resources), so it can be archived,
  printed (A4 or US Letter, see the ``@page`` rules) and filed as is.
* Markdown escapes Markdown-special characters in every value it prints (the ``md``
  finalizer); code blocks get a fence longer than any backtick run inside them.
* An organisation can point ``[report] templates`` in audiences.toml at a folder with its
  own ``report.html.j2`` / ``report.md.j2`` (the built-in partials stay available to
  ``{% include %}``). Whatever the template, the output must contain every required
  section marker (:data:`REQUIRED_SECTIONS`); a template that drops one is refused.

Figures are exact: the page says so and that it is confidential.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jinja2
import markupsafe

from audiences.core.errors import ConfigError, UsageError
from policies.report.view import build_view

Format = Literal["json", "md", "html"]
FORMATS: tuple[str, ...] = ("json", "md", "html")
TEMPLATES = Path(__file__).parent / "templates"
#: Sections every rendered report must contain, in any template.
REQUIRED_SECTIONS: tuple[str, ...] = (
    "notice",
    "summary",
    "funnel",
    "definition",
    "evidence",
    "releases",
    "sign-off",
)
_MARKERS: dict[str, Callable[[str], str]] = {
    "html": lambda name: f'data-section="{name}"',
    "md": lambda name: f"<!-- section: {name} -->",
}


def render(report: dict[str, Any], fmt: str, templates: str | Path | None = None) -> str:
    """The report in ``fmt``. ``templates``: a folder of custom templates; by default
    the one the report document names (``report_templates``, from ``[report] templates``)
    or the built-in ones."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    if fmt not in _MARKERS:
        raise UsageError(f"unknown report format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    folder = templates if templates is not None else report.get("report_templates")
    name = f"report.{fmt}.j2"
    try:
        text = _environment(fmt, folder).get_template(name).render(v=build_view(report))
    except jinja2.TemplateError as exc:
        where = f"{folder}/{name}" if folder else f"built-in {name}"
        raise ConfigError(
            f"report template {where} failed: {exc}",
            "fix the template, or remove [report] templates to use the built-in one",
        ) from None
    check_sections(text, fmt, folder)
    return text


def check_sections(text: str, fmt: str, folder: str | Path | None = None) -> None:
    """Refuse a rendered report that lacks a required section marker."""
    missing = [s for s in REQUIRED_SECTIONS if _MARKERS[fmt](s) not in text]
    if missing:
        where = f"{folder}/report.{fmt}.j2" if folder else f"built-in report.{fmt}.j2"
        raise ConfigError(
            f"report template {where} lacks required section(s): {', '.join(missing)}",
            "keep every section of the built-in template, each marked with "
            + _MARKERS[fmt]("NAME")
            + " (see docs/compliance-workflow.md, 'The compliance report')",
        )


def _environment(fmt: str, folder: str | Path | None) -> jinja2.Environment:
    """The environment of ``fmt`` over ``folder`` and the built-in templates: one per
    process, which keeps its compiled templates (compiling them is most of a report's
    cost, 0.1 s, paid once by ``build --all``), recompiled when a file changes: jinja2
    checks each template's modification time when it is asked for. Across processes
    the compiled templates are kept in jinja2's bytecode cache (:class:`_BytecodeCache`):
    a build's two reports took 0.059 s to render in a new process, 0.004–0.006 s with it."""
    if folder:
        path = Path(folder)
        if not path.is_dir():
            raise ConfigError(
                f"[report] templates folder {path} does not exist",
                "create it with report.html.j2 / report.md.j2, or remove the setting",
            )
    return _cached_environment(fmt, str(folder) if folder else None)


@functools.lru_cache(maxsize=16)
def _cached_environment(fmt: str, folder: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if folder:
        loaders.append(jinja2.FileSystemLoader(folder))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
    common: dict[str, Any] = {
        "loader": jinja2.ChoiceLoader(loaders),
        "bytecode_cache": _bytecode_cache(),
        "undefined": jinja2.StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
        "keep_trailing_newline": True,
    }
    if fmt == "html":
        env = jinja2.Environment(autoescape=True, **common)
        env.filters["css_string"] = css_string
    else:
        env = jinja2.Environment(autoescape=False, finalize=_md_finalize, **common)
        env.filters["md"] = md_escape
        env.filters["fence"] = fence
    env.filters["num"] = _num
    return env


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """jinja2's cache of compiled templates in ``$TMPDIR/_jinja2-cache-UID`` (a folder
    jinja2 makes 0700 and uses only if this user owns it and nobody else can enter it).
    An entry is keyed by the template's file name and used only for the same source text
    (its SHA-1): an edited template is compiled again. A cache that cannot be read or
    written is no cache: the report is rendered all the same."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, ValueError):
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    """The cross-process template cache, or none where jinja2 finds no safe folder for
    it (a ``_jinja2-cache-UID`` another user made, or one others can enter)."""
    try:
        return _BytecodeCache()
    except (OSError, RuntimeError):
        return None


# ---------------------------------------------------------------------------------------
# Markdown escaping

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|!~])")


class MdText(str):
    """Text already fit for Markdown: the finalizer prints it as is."""

    __slots__ = ()


def md_escape(value: Any) -> MdText:
    """Escape Markdown-special characters; newlines become spaces (one table cell, one
    list item). ``{{ }}`` and other text stay literal."""
    if isinstance(value, MdText):
        return value
    text = "" if value is None else str(value)
    return MdText(_MD_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " "))


def _md_finalize(value: Any) -> Any:
    return value if isinstance(value, MdText) else md_escape(value)


def fence(text: str, lang: str = "") -> MdText:
    """A fenced code block longer than any backtick run in ``text``."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    marks = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") else text + "\n"
    return MdText(f"{marks}{lang}\n{body}{marks}")


def css_string(value: Any) -> markupsafe.Markup:
    """A quoted CSS string (for ``@page`` headers): anything but letters, digits and a
    few safe marks is a CSS hex escape, so no value can end the string or the style."""
    safe = " .-_·…:"
    body = "".join(c if c.isalnum() or c in safe else f"\\{ord(c):x} " for c in str(value))
    return markupsafe.Markup(f'"{body}"')


def _num(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


__all__ = ["FORMATS", "REQUIRED_SECTIONS", "check_sections", "md_escape", "render"]
