"""The report in a real browser: headless Chromium (Debian's `chromium` package) loads
report.html; every image decodes and has a size, the headline is rendered and visible, and the
Markdown's relative image links point at PNG files that decode. Skipped without Chromium."""

import base64
import io
import re
import shutil
import subprocess

import matplotlib.image as mpimg
import pytest

from e2mc.report import write_report
from tests.report.test_report import _comparison, _run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

# appended to a copy of the report: the browser writes what it saw into <body data-*> for --dump-dom
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const h = document.getElementById('headline');
  const r = h ? h.getBoundingClientRect() : null;
  document.body.dataset.images = imgs.length;
  document.body.dataset.broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.dataset.headline = h && r.height > 0 && getComputedStyle(h).visibility !== 'hidden'
    ? h.innerText.slice(0, 60) : 'MISSING';
});</script>"""


def _dump_dom(path):
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=5000",
        "--dump-dom",
        path.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on PATH (Debian: apt-get install chromium)")
def test_report_in_headless_chromium(tmp_path):
    runs = [_run(tmp_path, "run_a", 0.5), _run(tmp_path, "run_b", 0.7)]
    paths = write_report(tmp_path / "out", _comparison(), runs=runs)
    probe = paths["html"].with_name("probe.html")
    probe.write_text(paths["html"].read_text().replace("</body>", PROBE + "</body>"))
    dom = _dump_dom(probe)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-images="4"' in body and 'data-broken="0"' in body, body
    assert 'data-headline="Headline (knn/top1_k20' in body, body
    # every image in the rendered DOM decodes to the PNG written next to the report
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', dom)
    assert len(srcs) == 4
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100
    # report.md's relative links: each names a PNG beside it that decodes
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", paths["markdown"].read_text())
    assert sorted(links) == sorted(p.name for k, p in paths.items() if p.suffix == ".png")
    for link in links:
        assert mpimg.imread(paths["markdown"].parent / link).shape[0] > 100
