"""The compliance report looked at in a real browser (headless Chromium).

A released, a blocked and an approval-blocked report are rendered to HTML and opened at
1280 px and 390 px: no element may stick out of the viewport horizontally, and the
funnel SVG must be drawn. Screenshots are written under the test's tmp folder.

Chromium is Debian's ``chromium`` (``.ci/run`` installs it). Without it the test skips,
except under CI (``CI=true``), where a missing browser is a failure.

``REPORT_SCREENSHOT=docs/images/report-first-screen.png`` (``make report-screenshot``)
also copies the released report's 1280 px first screen there, for
docs/compliance-workflow.md.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import test_report as reports  # the report fixtures of tests/test_report.py

from policies.report import render

outcomes = reports.outcomes  # the fixture, reused
_stopped_clock = reports._stopped_clock  # its data is fixed on the day test_report stops at
WIDTHS = (1280, 390)
TIMEOUT = 120
MEASURE = """
<script>
(function () {
  var width = document.documentElement.clientWidth, bad = [];
  document.querySelectorAll("body *").forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > width + 0.5 || r.left < -0.5)) {
      bad.push(el.tagName.toLowerCase() + "." + el.getAttribute("class") + " [" +
        Math.round(r.left) + ", " + Math.round(r.right) + "] " +
        (el.textContent || "").trim().slice(0, 40));
    }
  });
  var svg = document.querySelector("section[data-section=funnel] svg");
  var out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({
    width: width,
    scrollWidth: document.documentElement.scrollWidth,
    overflowing: bad.slice(0, 20),
    svgBars: svg ? svg.querySelectorAll("rect").length : 0,
    svgWidth: svg ? svg.getBoundingClientRect().width : 0
  });
  document.body.appendChild(out);
})();
</script>
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed on the CI machine (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")


def run_chromium(binary: str, tmp: Path, width: int, *args: str, height: int = 2000) -> str:
    profile = tmp / f"profile-{width}"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def framed(page: str, width: int) -> str:
    """The page in a ``width`` px wide frame: headless windows are at least 500 px wide,
    a frame is the phone-sized viewport (media queries see its width). A ``srcdoc`` frame
    shares the page's origin, so the outer page can read what was measured inside."""
    return (
        '<!DOCTYPE html><html><body style="margin:0">'
        f'<iframe id="view" style="border:0;width:{width}px;height:2000px" '
        f'srcdoc="{html.escape(page, quote=True)}"></iframe>'
        '<script>window.addEventListener("load", function () {'
        'var inner = document.getElementById("view").contentDocument.getElementById("measured");'
        'var out = document.createElement("pre"); out.id = "measured";'
        'out.textContent = inner ? inner.textContent : "null";'
        "document.body.appendChild(out);});</script></body></html>"
    )


def measure(binary: str, page: str, tmp: Path, width: int) -> dict[str, Any]:
    probe = tmp / f"probe-{width}.html"
    probe.write_text(framed(page.replace("</body>", MEASURE + "</body>"), width), encoding="utf-8")
    dom = run_chromium(binary, tmp, max(width, 500), "--dump-dom", probe.as_uri())
    found = re.findall(r'<pre id="measured">(.*?)</pre>', dom, re.DOTALL)
    assert found and found[-1] != "null", "the measuring script did not run"
    result: dict[str, Any] = json.loads(html.unescape(found[-1]))
    return result


@pytest.fixture
def three_reports(outcomes, tmp_path) -> dict[str, dict[str, Any]]:
    return {
        "released": {
            **outcomes[1].report,
            "operator": "Marketing operations (J. Doe)",
            "approval": {**reports.APPROVAL, "segment_digest": reports.SEGMENT.digest},
        },
        "blocked": reports.blocked_report(tmp_path / "blocked"),
        "approval-blocked": reports.approval_blocked_report(tmp_path),
        "jurisdictions": jurisdiction_report(tmp_path / "jurisdictions"),
    }


def jurisdiction_report(root: Path) -> dict[str, Any]:
    """A release under hipaa-marketing and the three jurisdiction packs (WA, CA, EEA and
    unknown people): the report's "By jurisdiction" table."""
    import test_jurisdictions as juris

    from audiences.core.state import connect

    conn = connect(root / ".audiences" / "state.db")
    try:
        project = {"root": root, "state_dir": root / ".audiences", "conn": conn}
        outcome = juris.run(
            project,
            juris.segment(
                "name: diabetes\ndestinations: [meta]\nwhere:\n"
                "  diagnosis_codes: {contains: E11.9}\n"
            ),
            juris._mixed_crowd(),
            ["meta"],
            config=juris.config(root),
        )
    finally:
        conn.close()
    assert outcome.report["status"] == "released", outcome.block_reasons
    return outcome.report


@pytest.mark.parametrize("which", ["released", "blocked", "approval-blocked", "jurisdictions"])
def test_report_fits_the_viewport_and_draws_the_funnel(three_reports, which, tmp_path):
    binary = chromium()
    page = render(three_reports[which], "html")
    assert ('data-section="jurisdictions"' in page) == (which == "jurisdictions")
    for width in WIDTHS:
        m = measure(binary, page, tmp_path, width)
        assert m["width"] == width, m
        assert not m["overflowing"], f"{which} at {width} px: {m['overflowing']}"
        assert m["scrollWidth"] <= width, m
        assert m["svgBars"] >= 3 and m["svgWidth"] > 200, m
        shot = tmp_path / f"{which}-{width}.png"
        shown = tmp_path / f"{which}-{width}.html"
        shown.write_text(page if width >= 500 else framed(page, width), encoding="utf-8")
        run_chromium(binary, tmp_path, max(width, 500), f"--screenshot={shot}", shown.as_uri())
        assert shot.stat().st_size > 10_000
    out = os.environ.get("REPORT_SCREENSHOT")
    if out and which == "released":
        docs_screenshot(binary, three_reports[which], tmp_path, Path(out))


def docs_screenshot(binary: str, report: dict[str, Any], tmp: Path, out: Path) -> None:
    """The first screen (1280 x 1000) for the docs, with a friendlier description than the
    fixture's hostile one."""
    old = report["segment"]["description"]
    nice = "Newsletter readers in ZIP 10001"
    segment = {**report["segment"], "description": nice}
    segment["yaml"] = segment["yaml"].replace(f"description: {old}", f"description: {nice}")
    page = tmp / "docs.html"
    page.write_text(render({**report, "segment": segment}, "html"), encoding="utf-8")
    shot = tmp / "docs.png"
    run_chromium(binary, tmp, 1280, f"--screenshot={shot}", page.as_uri(), height=1000)
    shutil.copyfile(shot, out)
