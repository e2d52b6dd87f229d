"""``./build.sh bench``: every benchmark, each figure with its baseline and the ratio.

Prints one table (``--json`` for machines). Baselines are measured in the same run, on the same
machine, so the ratios mean something even where absolute figures drift from machine to machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

from tests.bench.common import Figure


def _bench(module: str):
    """The ``tests.bench.<module>`` module, imported when its benchmark runs."""
    return importlib.import_module(f"tests.bench.{module}")


BENCHES = {
    "rpc": lambda image: _bench("bench_rpc").run(image),
    "sessions": lambda image: _bench("bench_sessions").run(image),
    "status": lambda image: _bench("bench_status").run(image),
    "footprint": lambda image: _bench("bench_footprint").run(image),
    "start": lambda image: _bench("bench_footprint").run_start(image),
    "tui": lambda image: _bench("bench_tui").run(),
    "recording": lambda image: _bench("bench_recording").run(image),
    "fleet": lambda image: _bench("bench_fleet").run(image),
    "load": lambda image: _bench("bench_load").run(image),
    "scale": lambda image: _bench("bench_scale").run(image),
    "move": lambda image: _bench("bench_move").run(image),
}


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "baseline", "ratio", "baseline is")]
    for f in figures:
        base = "-" if f.baseline is None else f"{f.baseline:.2f} {f.unit}"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x"
        rows.append((f.name, f"{f.value:.2f} {f.unit}", base, ratio, f.baseline_name or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./build.sh bench")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these benchmarks")
    args = parser.parse_args(argv)
    image = os.environ.get("CONVOCATE_TEST_IMAGE", "convocate:0.1.0-standin")
    figures: list[Figure] = []
    failed = []
    started = time.monotonic()
    for name in args.only or list(BENCHES):
        print(f"==> benchmark {name}", file=sys.stderr, flush=True)
        try:
            figures += BENCHES[name](image)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    if args.json:
        print(json.dumps({"figures": [f.to_json() for f in figures], "failed": failed,
                          "seconds": round(time.monotonic() - started, 1)}, indent=2))
    else:
        print(table(figures))
        print(f"\n{len(figures)} figures in {time.monotonic() - started:.0f} s"
              + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
