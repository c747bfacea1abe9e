"""`fedsim compare`'s report.html as a reader sees it: rendered by headless Chromium (skipped where there is none; CI
installs Debian's `chromium`). A script injected into a copy of the report measures the page after layout and writes
what it found into the DOM, which `--dump-dom` hands back."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .test_compare import run_fake_compare

CHROMIUM = next((Path(p) for p in (shutil.which("chromium") or "", "/usr/bin/chromium") if p and Path(p).exists()),
                None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,3000"]
# After layout: images decoded, the comparison table's rows and bold cells, the warning's position, page overflow.
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const table = document.getElementById('comparison');
  const best = [...table.querySelectorAll('td.best')];
  const warning = document.getElementById('optimizer-warning');
  const found = {
    images: images.length,
    shown: images.filter(i => i.complete && i.naturalWidth > 0).length,
    headers: [...table.rows[0].cells].map(c => c.textContent),
    settings: [...table.querySelectorAll('tr.setting')].map(r => r.textContent),
    rows: table.rows.length,
    best: best.length,
    bestBold: best.filter(c => parseInt(getComputedStyle(c).fontWeight) >= 600).length,
    ties: best.filter(c => c.textContent.endsWith('≈')).length,
    warningTop: warning ? warning.getBoundingClientRect().top : null,
    warningHeight: warning ? warning.offsetHeight : 0,
    tableRight: table.getBoundingClientRect().right,
    pageWidth: document.documentElement.scrollWidth,
    viewWidth: window.innerWidth,
    setup: [...document.querySelectorAll('#setup th')].map(c => c.textContent),
  };
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});</script>"""


def render(report: Path) -> dict:
    probe = report.with_name("probe.html")
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                                 "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, result.stderr[-2000:]
    text = match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return json.loads(text)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    out = run_fake_compare(tmp_path / "cmp", ["strategy=fedavg,qffl", "seed=0,1", "num_rounds=2", "--target", "0.8"],
                           fairness=True)
    found = render(out / "report.html")
    # every plot decoded: accuracy curves, client accuracy boxes, the weights, the partition heatmap
    assert found["images"] == found["shown"] == 4
    assert found["settings"] == ["default"] and found["rows"] == 1 + 1 + 2
    assert "Δ final acc vs fedavg (paired)" in found["headers"] and "mean acc, last 2 rounds" in found["headers"]
    assert "Jain's index (client acc)" in found["headers"] and "s / round" in found["headers"]
    assert "|SPD| (test)" in found["headers"] and "|EOD| (test)" in found["headers"]  # the widest table there is
    assert found["best"] > 0 and found["bestBold"] == found["best"]
    # two seeds, and q-FFL's fake runs beat fedavg's by exactly 0.05 on both: a paired win, not a tie, in final acc
    assert found["ties"] < found["best"]
    # q-FFL's clients run plain SGD: the warning is on the first screen, above the table
    assert found["warningHeight"] > 0 and found["warningTop"] < 400
    # the table is read whole, without scrolling sideways (a cell wraps at its ± instead)
    assert found["pageWidth"] <= found["viewWidth"] and found["tableRight"] <= found["viewWidth"]
    assert {"data set", "partition", "model", "clients", "participation", "rounds", "local epochs",
            "client optimiser", "seeds"} <= set(found["setup"])
