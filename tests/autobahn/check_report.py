#!/usr/bin/env python3
"""Reads a kosoku (Autobahn TestSuite format) report and judges it.

    check_report.py REPORT_DIR --label NAME [--min-cases N]

A case passes when its `behavior` is OK, NON-STRICT or INFORMATIONAL (UNIMPLEMENTED only
for the compression cases 12.x and 13.x, since roomcast does not negotiate
permessage-deflate) and its `behaviorClose` is OK or INFORMATIONAL. Prints every other
case with the report's explanation, one summary line, and writes `counts.txt`
("passed failed skipped") next to the report for scripts/test.sh. Exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}
COMPRESSION = ("12.", "13.")


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in case_id.split("."))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--label", required=True)
    ap.add_argument("--min-cases", type=int, default=1)
    args = ap.parse_args()

    index_path = args.report_dir / "index.json"
    if not index_path.is_file():
        print(f"{args.label}: no report at {index_path}", file=sys.stderr)
        return 1
    index = json.loads(index_path.read_text())
    if len(index) != 1:
        print(f"{args.label}: expected one agent in the report, got {list(index)}", file=sys.stderr)
    passed = failed = unimplemented = 0
    verdicts: Counter[str] = Counter()
    failures = []
    for agent, cases in index.items():
        for case_id in sorted(cases, key=case_key):
            c = cases[case_id]
            b, bc = c["behavior"], c["behaviorClose"]
            verdicts[b] += 1
            if b == "UNIMPLEMENTED" and case_id.startswith(COMPRESSION) and bc in GOOD_CLOSE:
                unimplemented += 1
            elif b in GOOD and bc in GOOD_CLOSE:
                passed += 1
            else:
                failed += 1
                detail = ""
                rf = args.report_dir / c.get("reportfile", "")
                if rf.is_file():
                    d = json.loads(rf.read_text())
                    detail = f" — {d.get('result', '')} / {d.get('resultClose', '')}"
                failures.append(
                    f"  {case_id}: behavior={b} behaviorClose={bc} "
                    f"remoteCloseCode={c.get('remoteCloseCode')}{detail}"
                )
    total = passed + failed + unimplemented
    print(
        f"{args.label}: {total} cases by agent {', '.join(index) or '?'}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items()))
    )
    if failures:
        print(f"{args.label}: FAILED cases:")
        print("\n".join(failures))
    if total < args.min_cases:
        print(f"{args.label}: only {total} cases in the report, expected at least {args.min_cases}")
        failed += max(1, args.min_cases - total) if failed == 0 else 0
    (args.report_dir / "counts.txt").write_text(f"{passed} {failed} {unimplemented}\n")
    print(f"{args.label}: {passed} passed, {failed} failed, {unimplemented} unimplemented (compression)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
