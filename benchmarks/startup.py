"""Wall time of one `m3embed search` from a fresh process: the NumPy query path against the M3Model path.

Both runs are the same CLI command on the same index (built here once from the demo's 240 XQuAD paragraphs with
--model, default minilm-m3); the peer differs only in `NumpyEncoder.load` returning None, which is what the
command did before it had the NumPy path (load M3Model through torch and transformers). The runs alternate,
each in a new interpreter; the table gives the median wall time, peak RSS and the ratio, with the load average.

    python benchmarks/startup.py --repeat 5
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

SEARCH = ("import sys\nfrom m3embed.cli import main\n{patch}sys.argv = ['m3embed', 'search', {index!r}, "
          "'who discovered oxygen, and when?', '-k', '5', '--json']\nmain()\n")
TORCH_ONLY = "import m3embed.numpy_encoder as n\nn.NumpyEncoder.load = staticmethod(lambda *args: None)\n"


def timed(code: str) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a fresh interpreter running `code` (RSS from wait4's rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"search failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-m3")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = Path(__file__).resolve().parents[1] / "src" / "m3embed" / "data" / "xquad_en_paragraphs.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        index = str(Path(tmp) / "index")
        subprocess.run([sys.executable, "-m", "m3embed", "index", "build", index, str(data), "--model", args.model],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        timed(SEARCH.format(patch="", index=index))  # warm the page cache for both
        runs: dict[str, list[tuple[float, float]]] = {"numpy": [], "torch": []}
        for _ in range(args.repeat):
            runs["numpy"].append(timed(SEARCH.format(patch="", index=index)))
            runs["torch"].append(timed(SEARCH.format(patch=TORCH_ONLY, index=index)))
    load = os.getloadavg()
    print(f"m3embed search, {args.model}, {args.repeat} runs each, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| query path | median wall | min | peak RSS |")
    print("|---|---|---|---|")
    medians = {}
    for name, rows in runs.items():
        walls = [w for w, _ in rows]
        medians[name] = statistics.median(walls)
        print(f"| {name} | {medians[name]:.2f} s | {min(walls):.2f} s | {max(r for _, r in rows):.0f} MiB |")
    print(f"ratio torch / numpy: {medians['torch'] / medians['numpy']:.2f}x")


if __name__ == "__main__":
    main()
