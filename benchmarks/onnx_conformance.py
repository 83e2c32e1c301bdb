"""ONNX backend conformance through edgefleet's compile path, per operator and per family.

    python benchmarks/onnx_conformance.py --out after.json             # edgefleet (rewrites + checks)
    python benchmarks/onnx_conformance.py --plain --out before.json    # TVM's importer as it ships
    python benchmarks/onnx_conformance.py --compare before.json after.json

Each case is imported, optimized, built and exported for x86_64 and run on this CPU; results
JSON is compiler/conformance.py's format 1. The full suite (~2,000 cases) takes ~15 min on one
worker.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

from edgefleet.compiler import conformance as c


def family_of(r: c.CaseResult) -> str:
    return c.family(r.operator) if c.vision_case(r.name, r.operator) else "(not vision)"


def report(results: list[c.CaseResult], title: str) -> str:
    vision = [r for r in results if c.vision_case(r.name, r.operator)]
    lines = [f"== {title}", c.format_table(c.summarize(results, family_of))]
    for label, subset in (("vision subset", vision), ("all runnable", results)):
        n = Counter(r.outcome for r in subset)
        total = max(1, len(subset))
        lines.append(f"{label}: {n['passed']}/{len(subset)} passed ({100 * n['passed'] / total:.1f}%), {n['wrong']} wrong, {n['unsupported']} unsupported, {n['error']} errors")
    return "\n".join(lines)


def compare(before: list[c.CaseResult], after: list[c.CaseResult]) -> str:
    fam_b = c.summarize(before, family_of)
    fam_a = c.summarize(after, family_of)
    lines = [f"{'family':16} {'cases':>5}  {'passed before':>13} {'after':>5}  {'wrong before':>12} {'after':>5}"]
    for fam in sorted(set(fam_b) | set(fam_a)):
        b, a = fam_b.get(fam, Counter()), fam_a.get(fam, Counter())
        lines.append(f"{fam:16} {sum(a.values()):5}  {b['passed']:13} {a['passed']:5}  {b['wrong']:12} {a['wrong']:5}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plain", action="store_true", help="TVM's importer without edgefleet's rewrites and checks")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--only", help="regex on case names")
    ap.add_argument("--vision", action="store_true", help="only the vision subset")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--per-operator", action="store_true")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()

    if args.compare:
        before, after = (c.load_results(p) for p in args.compare)
        print(report(before, f"before: {args.compare[0]}"))
        print(report(after, f"after: {args.compare[1]}"))
        print(compare(before, after))
        return 0

    cases = c.list_cases()
    names = sorted(n for n in cases if not args.only or re.search(args.only, n))
    if args.vision:
        names = [n for n in names if c.vision_case(n, c.case_operator(n, cases[n].model or c._load_dir_case(cases[n].model_dir)[0]))]
    start = time.perf_counter()
    done = Counter()

    def progress(r: c.CaseResult) -> None:
        done[r.outcome] += 1
        if sum(done.values()) % 50 == 0:
            print(f"  {sum(done.values())}/{len(names)} {dict(done)} {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    results = c.run_suite(names, workers=args.workers, plain=args.plain, on_result=progress)
    elapsed = time.perf_counter() - start
    if args.out:
        c.save_results(args.out, results, plain=args.plain, seconds=round(elapsed))
    if args.per_operator:
        print(c.format_table(c.summarize(results)))
    print(report(results, f"{'plain TVM' if args.plain else 'edgefleet'}: {len(results)} cases in {elapsed:.0f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
