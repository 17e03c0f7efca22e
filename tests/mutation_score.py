"""The mutation score from mutmut's result files: ``python -m tests.mutation_score mutants``.

Score = killed / (killed + survived + no tests), where mutants listed in
``tests/mutants_equivalent.txt`` are left out: each of those changes nothing a caller can
observe, and the file says why, one line each. A mutant no test reaches counts against the
score. Timeouts count as killed (the mutant hung a test that has a bound) and are shown
apart. Survivors are listed grouped by module, for ``mutmut show NAME``. A listed
equivalent that a test fails on (not a timeout: a slow run is not a failing test), or that
no longer exists (its function changed), is reported, so the list stays true.
Exit status 1 when the score is under ``--fail-under`` (default 0).

Several result directories combine: ``python -m tests.mutation_score full/mutants
partial/mutants``. The mutants are those of the last directory (mutmut writes every mutant
of the code it ran on, checked or not); each takes its result from the last directory
that checked it, so a run over a few functions of newer code adds to a complete older one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 152, 255, 37}
TIMEOUT = {24, -24, 36, 152, 255}  # mutmut's time limits (counted as killed, shown apart)
SURVIVED = {0}
UNREACHED = {5, 33}
EQUIVALENT_FILE = Path(__file__).with_name("mutants_equivalent.txt")


def equivalents(path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """``{mutant name: why it is equivalent}`` from the list (``name  reason`` per line)."""
    found: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, why = line.partition(" ")
            found[name] = why.strip()
    return found


def status(code: object, name: str, equivalent: dict[str, str]) -> str:
    if name in equivalent:
        return "equivalent"
    if code in KILLED:
        return "killed"
    if code in SURVIVED:
        return "survived"
    if code in UNREACHED:
        return "no tests"
    return "not checked" if code is None else f"other ({code})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=["mutants"], metavar="root")
    parser.add_argument("--fail-under", type=float, default=0.0)
    args = parser.parse_args(argv)
    equivalent = equivalents()
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    wrongly_listed: list[str] = []
    results: dict[str, tuple[str, object]] = {}  # name -> (module, exit code)
    for root in args.roots:
        found: dict[str, tuple[str, object]] = {}
        for meta in sorted(Path(root).rglob("*.py.meta")):
            module = str(meta.relative_to(root))[: -len(".meta")]
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                earlier = results.get(name, (module, None))[1]
                found[name] = (module, earlier if code is None else code)
        results = found  # the last directory's mutants; a later check wins
    for name, (module, code) in sorted(results.items()):
        seen.add(name)
        state = status(code, name, equivalent)
        if code in TIMEOUT and state == "killed":
            counts["of which timeouts"] += 1
        if state == "equivalent" and code in KILLED - TIMEOUT:
            wrongly_listed.append(name)
        if state == "survived":
            survivors[module].append(name)
        elif state == "no tests":
            survivors[module].append(name + "  (no test reaches it)")
        counts[state] += 1
        by_module[module][state] += 1
    for module, c in sorted(by_module.items()):
        total = c["killed"] + c["survived"] + c["no tests"]
        share = 100 * c["killed"] / max(total, 1)
        print(
            f"{module:45} {c['killed']:5} killed / {total:5}  ({share:.1f}%)"
            f"  equivalent {c['equivalent']}, not checked {c['not checked']}"
        )
    considered = counts["killed"] + counts["survived"] + counts["no tests"]
    score = 100 * counts["killed"] / max(considered, 1)
    print(f"\n{dict(counts)}")
    print(f"score: {counts['killed']} / {considered} = {score:.1f}% (equivalent mutants left out)")
    for module, names in sorted(survivors.items()):
        print(f"\n{module}:")
        for name in names:
            print("  ", name)
    stale = sorted(set(equivalent) - seen)
    for title, names in (
        ("listed as equivalent but killed by a test (remove from the list)", wrongly_listed),
        ("listed as equivalent but not a mutant any more (its function changed)", stale),
    ):
        if names:
            print(f"\n{title}:")
            for name in names:
                print("  ", name)
    return 1 if score < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
