"""`triage evaluate --report DIR`: the HTML report, its charts, and customer text kept inert."""

from __future__ import annotations

import csv
from pathlib import Path

from click.testing import CliRunner
from matplotlib.image import imread

from classifiers.model import Classifier
from tests.conftest import tiny_text
from triage.cli import cli

HOSTILE = '<script>alert("x")</script> & terrible service'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def labelled_file(path: Path) -> Path:
    """A few rows the tiny model gets right, and some labelled so that it gets them wrong."""
    rows = []
    for kind in ("complaint", "feedback", "question"):
        for area in ("billing", "delivery"):
            rows.append((" ".join(tiny_text(kind, area)), kind, area, "normal"))
    wrong = " ".join(tiny_text("complaint", "delivery"))
    rows.append((f"{HOSTILE}. {wrong}", "feedback", "delivery", "normal"))
    rows.append((wrong, "feedback", "delivery", "normal"))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "kind", "area", "urgency"])
        writer.writerows(rows)
    return path


def test_report_writes_tables_charts_and_escaped_examples(
    tmp_path: Path, tiny_model: tuple[Classifier, Path]
) -> None:
    data = labelled_file(tmp_path / "held-out.csv")
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(tiny_model[1]), "--data", str(data)]
    args += ["--text-column", "text", "--label", "kind", "--label", "area", "--label", "urgency"]
    result = CliRunner().invoke(cli, [*args, "--report", str(out)])
    assert result.exit_code == 0, result.output

    page = (out / "index.html").read_text(encoding="utf-8")
    for axis in ("kind", "area", "urgency"):
        for chart in ("confusion", "calibration"):
            png = out / f"{chart}-{axis}.png"
            assert png.read_bytes().startswith(PNG_SIGNATURE)
            image = imread(png)
            assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
            assert f'src="{png.name}"' in page
        assert f"<h2>{axis}</h2>" in page
    assert "<th>precision</th><th>recall</th><th>F1</th>" in page
    assert "<td>complaint</td>" in page
    # The mislabelled rows are the most confused pair, their texts shown as examples, escaped.
    assert "<b>feedback</b> taken for <b>complaint</b>: 2 time(s)" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; terrible service" in page
