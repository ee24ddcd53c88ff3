#!/usr/bin/env python3
"""N calls of SQL group_send, for counting the C call's instructions.

    python3 bench/issue11/fanout_calls.py build/chanlite.so N [--crowd]

Default: a group of 1,000 members spread over 4 process prefixes (250
`w.pK!mI` channels each, as bench/peers' fan-out), capacity high enough
that every copy is stored. --crowd: 10,000 members of one prefix with the
default capacity 100, as bench/neighbours' crowd-flood: 100 copies fit,
9,900 members are full. Count one call as the difference of two runs:

    PY=$(python3 -c 'import sys; print(sys.executable)')   # not a pyenv shim
    for n in 1 6; do valgrind --tool=callgrind --collect-atstart=no \\
      --toggle-collect=fn_group_send --callgrind-out-file=cg.$n \\
      $PY bench/issue11/fanout_calls.py build/chanlite.so $n; done
    # (Ir of cg.6 - Ir of cg.1) / 5 = instructions per call

Measured (bench/results/neighbours.md): 52.5M -> 26.0M per 1,000-member
call; 504M -> 23.6M per crowd call.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main() -> None:
    so, calls, crowd = sys.argv[1], int(sys.argv[2]), "--crowd" in sys.argv[3:]
    os.environ["CHANLITE_EXTENSION"] = os.path.abspath(so)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
    import chanlite

    prefixes, per_prefix = (1, 10_000) if crowd else (4, 250)
    with tempfile.TemporaryDirectory() as tmp:
        conn = chanlite.connect(os.path.join(tmp, "fanout.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if not crowd:
            conn.execute("SELECT chanlite_config('capacity', 1000000)")
        conn.execute("BEGIN")
        for p in range(prefixes):
            for i in range(per_prefix):
                conn.execute("SELECT group_add('g', ?)", (f"w.p{p}!m{i}",))
        conn.execute("COMMIT")
        conn.execute("SELECT group_send('g', 'warm-up')")
        expected = 0 if crowd else prefixes * per_prefix
        for _ in range(calls):
            delivered = conn.execute("SELECT group_send('g', ?)", ("x" * 100,)).fetchone()[0]
            if delivered != expected:
                raise SystemExit(f"delivered to {delivered}, expected {expected}")
        conn.close()


if __name__ == "__main__":
    main()
