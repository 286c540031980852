"""Compare two finished demo projects (e.g. before and after a refactor, same machine): reports/demo/table2.csv,
table2.md, history_mean.csv and every run's history.csv and predictions.csv byte for byte, and metrics.json but the
run identity's code hash and the fingerprint over it (the code is what changed). Exit 1 on any difference.

    python benchmarks/compare_demo_outputs.py /tmp/demo_before /tmp/demo_after
"""
import json
import sys
from pathlib import Path

a, b = Path(sys.argv[1]), Path(sys.argv[2])
bad = 0


def strip(obj):
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in ("code", "fingerprint")}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


for rel in ["reports/demo/table2.csv", "reports/demo/table2.md", "reports/demo/history_mean.csv"]:
    same = (a / rel).read_bytes() == (b / rel).read_bytes()
    print(f"{rel}: {'identical' if same else 'DIFFERENT'}")
    bad += not same
for run in sorted((a / "results/demo").iterdir()):
    other = b / "results/demo" / run.name
    h = (run / "history.csv").read_bytes() == (other / "history.csv").read_bytes()
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (run, other))
    m = strip(ma) == strip(mb)
    p = (run / "predictions.csv").read_bytes() == (other / "predictions.csv").read_bytes()
    print(f"{run.name}: history.csv {'identical' if h else 'DIFFERENT'}, predictions.csv "
          f"{'identical' if p else 'DIFFERENT'}, metrics.json (but code hash) {'identical' if m else 'DIFFERENT'}")
    bad += (not h) + (not m) + (not p)
sys.exit(1 if bad else 0)
