"""Run every benchmark and print its rows (``make bench``). Not part of ``make test``.

Each script prints lines ``ROW {json}``; this runner echoes them with the machine description.
Quiet the machine first: on a 2-core box other processes make 2-thread timings meaningless.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from common import machine

# --quick: smaller runs of the long benchmarks, so the whole set takes minutes on 2 cores.
# The full bench_train adds no --mixedprec/--compile either: run those by hand (RESULTS.md).
QUICK_ARGS = {"bench_memory.py": ["--sizes", "58000", "116000"],
              "bench_train.py": ["--batch", "8", "--steps", "2", "--repeats", "1"],
              "bench_convert.py": ["--files", "200"]}

SCRIPTS = ["bench_cap_scoring.py", "bench_extract.py", "bench_input_pipeline.py",
           "bench_train.py", "bench_memory.py", "bench_convert.py", "bench_synth.py"]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    here = os.path.dirname(os.path.abspath(__file__))
    print("machine:", json.dumps(machine()), flush=True)
    failed = []
    for script in SCRIPTS:
        path = os.path.join(here, script)
        if not os.path.exists(path):
            continue
        extra = QUICK_ARGS.get(script, []) if quick else []
        print(f"== {script} {' '.join(extra)}".rstrip(), flush=True)
        if subprocess.run([sys.executable, path, *extra], cwd=here).returncode != 0:
            failed.append(script)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
