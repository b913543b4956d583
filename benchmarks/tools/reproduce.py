"""Re-train committed reference runs and compare every recorded number, bit for bit.

    python benchmarks/tools/reproduce.py results/reference/single_seed/runs/*
    python benchmarks/tools/reproduce.py results/reference/quick/runs/lbt-ring-s*

Each run folder's config.json gives its spec; runs recorded as a replica group
(`replicas` > 1) are re-trained together with the other seeds of that group that are
named, exactly as they were made. Every tensor of the final generator and every value
recorded in both runs (losses, diagnostics, metrics; timing `step_time_ms` aside) must
be equal to the last bit. Metrics the reference lacks (added since) are listed, not
compared. A metric whose definition was changed on purpose can be exempted with
`--changed NAME` (its differences are printed, not counted). Exit status 1 on any other
difference. A refactor that claims "behaviour unchanged" runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from mcbench.run import store as res
from mcbench.run.runner import spec_of, train_group

TIMING = {"step_time_ms"}


def _groups(dirs: list[Path]) -> list[list[tuple[Path, dict]]]:
    """Named runs grouped as they were trained (one group per configuration and R)."""
    groups: dict[tuple, list[tuple[Path, dict]]] = {}
    for d in dirs:
        cfg = res.read_config(d)
        spec = spec_of(cfg)
        r = int(cfg.get("replicas", 1) or 1)
        ident = (spec.method, spec.dataset, spec.steps, str(spec.params), r)
        if r == 1:
            ident = (*ident, spec.seed)
        groups.setdefault(ident, []).append((d, cfg))
    return [sorted(g, key=lambda x: x[1]["seed"]) for g in groups.values()]


def compare(group: list[tuple[Path, dict]], changed: frozenset[str] = frozenset()) -> list[str]:
    """Differences between a re-training of `group` and its recorded files ([] if none)."""
    specs = [spec_of(cfg) for _, cfg in group]
    r = int(group[0][1].get("replicas", 1) or 1)
    if r != len(specs):
        return [f"{group[0][0].name}: recorded as {r} replicas, {len(specs)} named"]
    out, method = train_group(specs, torch.device("cpu"))
    state = method.generator_module().state_dict()
    problems = []
    for i, ((d, _), (rows, _status)) in enumerate(zip(group, out, strict=True)):
        old = pd.read_csv(d / "metrics.csv")
        new = pd.DataFrame(rows, columns=res.COLUMNS)
        added = sorted(set(new["metric"]) - set(old["metric"]))
        if added:
            print(f"  {d.name}: not in the reference (added since): {', '.join(added)}")
        shared = set(old["metric"]) & set(new["metric"]) - TIMING
        merged = old[old["metric"].isin(shared)].merge(
            new[new["metric"].isin(shared)], on=["step", "metric"], how="outer"
        )
        diff = merged[merged["value_x"].astype(float) != merged["value_y"].astype(float)]
        diff = diff[~(diff["value_x"].isna() & diff["value_y"].isna())]
        exempt = diff[diff["metric"].isin(changed)]
        if len(exempt):
            rel = ((exempt["value_x"] - exempt["value_y"]).abs() / exempt["value_x"].abs()).max()
            print(f"  {d.name}: {len(exempt)} values of changed metrics differ (max rel {rel:.2g})")
        diff = diff[~diff["metric"].isin(changed)]
        if len(diff):
            shown = diff[["step", "metric", "value_x", "value_y"]].head()
            problems.append(f"{d.name}: {len(diff)} recorded values differ, e.g.\n{shown}")
        gen = torch.load(d / "generator.pt")
        mine = state if len(specs) == 1 else {k: v[i] for k, v in state.items()}
        mine = {k.replace("stacked.", ""): v for k, v in mine.items()}
        for k, v in gen.items():
            if k not in mine or not torch.equal(v, mine[k]):
                problems.append(f"{d.name}: generator tensor {k} differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/tools/reproduce.py", description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path, help="published run folders")
    ap.add_argument("--changed", action="append", default=[], help="a metric redefined on purpose")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bad = 0
    for group in _groups(args.runs):
        names = ", ".join(d.name for d, _ in group)
        problems = compare(group, frozenset(args.changed))
        print(("DIFFERS " if problems else "same    ") + names, flush=True)
        for p in problems:
            print("  " + p)
        bad += bool(problems)
    exempt = f" (redefined metrics aside: {', '.join(args.changed)})" if args.changed else ""
    print(f"{bad} group(s) differ" if bad else f"every run reproduced bit for bit{exempt}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
