"""``python -m analysis.pages``: a results page's tables are what their commands print."""

from __future__ import annotations

from analysis import pages, report

PAGE = """# Page
Some text.

<!-- report: python -m analysis.report {here} -->
old table
<!-- /report -->

<!-- report: python -m analysis.report {missing} -->
kept table
<!-- /report -->

<!-- report: python -m benchmarks.sampler -->
bench table
<!-- /report -->
tail
"""


def test_report_blocks_are_regenerated_and_others_left(tmp_path, monkeypatch):
    here, missing = tmp_path / "here", tmp_path / "missing"
    here.mkdir()
    (here / "summary.json").write_text("{}")
    monkeypatch.setattr(report, "report", lambda dirs: f"TABLE of {[str(d) for d in dirs]}\n")
    page = tmp_path / "page.md"
    page.write_text(PAGE.format(here=here, missing=missing))
    pages.main([str(page)])
    text = page.read_text()
    assert f"-->\nTABLE of {[str(here)]}\n<!-- /report -->" in text
    assert "old table" not in text and "kept table" in text and "bench table" in text
    assert text.startswith("# Page\nSome text.") and text.endswith("tail\n")
    # idempotent: a second pass gives the same page
    pages.main([str(page)])
    assert page.read_text() == text
