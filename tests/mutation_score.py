"""The mutation score from mutmut's result files: ``python -m tests.mutation_score mutants``.

Score = killed / (killed + survived + no tests): a mutant no test reaches counts against
the score. Timeouts count as killed (the mutant hung a test that has a bound). Survivors
are listed grouped by module and function, for ``mutmut show NAME``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255, 37}
SURVIVED = {0}
UNREACHED = {5, 33}


def main(root: str) -> int:
    counts: Counter[str] = Counter()
    survivors: dict[str, list[str]] = defaultdict(list)
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for meta in sorted(Path(root).rglob("*.py.meta")):
        module = str(meta.relative_to(root))[: -len(".meta")]
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code in KILLED:
                status = "killed"
            elif code in SURVIVED:
                status = "survived"
                survivors[module].append(name)
            elif code in UNREACHED:
                status = "no tests"
                survivors[module].append(name + "  (no test reaches it)")
            elif code is None:
                status = "not checked"
            else:
                status = f"other ({code})"
            counts[status] += 1
            by_module[module][status] += 1
    considered = counts["killed"] + counts["survived"] + counts["no tests"]
    for module, c in sorted(by_module.items()):
        total = c["killed"] + c["survived"] + c["no tests"]
        share = 100 * c["killed"] / max(total, 1)
        print(f"{module:45} {c['killed']:5} killed / {total:5}  ({share:.1f}%)")
    print(f"\n{dict(counts)}")
    score = 100 * counts["killed"] / max(considered, 1)
    print(f"score: {counts['killed']} / {considered} = {score:.1f}%")
    for module, names in sorted(survivors.items()):
        print(f"\n{module}:")
        for name in names:
            print("  ", name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "mutants"))
