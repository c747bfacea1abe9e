"""Import cost of the ClientApp: wall time and peak RSS of `import fedsim.client` beside torch and Flower alone.

In deployment Flower starts one `flwr-clientapp` process per message and each imports `fedsim.client`, so what that
import loads beyond `import torch; from flwr.clientapp import ClientApp` (which no ClientApp can avoid) is paid on
every message. Each measurement is a fresh `python -c` process; its wall time (interpreter start included, the same
for both rows) is taken around the process and its peak RSS from `os.wait4`, which reports that child's own
resource use. The two statements alternate, `--repeats` times after one untimed warm-up of each (disk cache), and
the table shows medians and the difference. The processes run in `--checkout` (default: this repo), so `python -c`
imports that tree's fedsim first: point it at another clone to compare before and after a change.

    python bench/import_cost.py --repeats 5
    python bench/import_cost.py --checkout /tmp/fedsim-before
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE = "import torch; from flwr.clientapp import ClientApp"
CLIENT = "import fedsim.client"
# ru_maxrss is in KiB on Linux and in bytes on macOS
RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def measure(statement: str, checkout: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh interpreter running `statement` in `checkout`."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", statement], stdout=subprocess.DEVNULL, stderr=stderr,
                                   cwd=checkout)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(f"{statement!r} failed ({process.returncode}):\n{stderr.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss * RSS_UNIT / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkout", type=Path, default=REPO, help="the source tree whose fedsim is imported")
    args = parser.parse_args()
    statements: dict[str, list[tuple[float, float]]] = {BASELINE: [], CLIENT: []}
    for statement in statements:
        measure(statement, args.checkout)
    for _ in range(args.repeats):  # interleaved, so that load from elsewhere falls on both alike
        for statement, runs in statements.items():
            runs.append(measure(statement, args.checkout))
    medians = {statement: (statistics.median(s for s, _ in runs), statistics.median(m for _, m in runs))
               for statement, runs in statements.items()}
    print(f"median of {args.repeats} fresh processes; fedsim from {args.checkout}")
    print("| import | wall s | peak RSS MiB |\n|---|---:|---:|")
    for statement, (seconds, mib) in medians.items():
        print(f"| `{statement}` | {seconds:.2f} | {mib:.0f} |")
    (base_s, base_mib), (client_s, client_mib) = medians[BASELINE], medians[CLIENT]
    print(f"| difference | {client_s - base_s:+.2f} | {client_mib - base_mib:+.0f} |")


if __name__ == "__main__":
    main()
