"""Re-train committed reference runs and compare every recorded number, bit for bit.

    python benchmarks/tools/reproduce.py results/reference/single_seed/runs/*
    python benchmarks/tools/reproduce.py results/reference/quick/runs/lbt-ring-s*

Each run folder's config.json gives its spec; runs recorded as a replica group
(`replicas` > 1) are re-trained together with the other seeds of that group that are
named, exactly as they were made. Every metric value except timing (`step_time_ms`) and
every tensor of the final generator must be equal to the last bit. Exit status 1 on any
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


def compare(group: list[tuple[Path, dict]]) -> list[str]:
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
        keep_old = old[~old["metric"].isin(TIMING)].reset_index(drop=True)
        keep_new = new[~new["metric"].isin(TIMING)].reset_index(drop=True)
        cols = ["step", "metric", "value"]
        if not keep_old[cols].equals(keep_new[cols].astype(keep_old[cols].dtypes.to_dict())):
            merged = keep_old.merge(keep_new, on=["step", "metric"], how="outer")
            diff = merged[merged["value_x"] != merged["value_y"]]
            problems.append(f"{d.name}: {len(diff)} metric values differ, e.g.\n{diff.head()}")
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
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bad = 0
    for group in _groups(args.runs):
        names = ", ".join(d.name for d, _ in group)
        problems = compare(group)
        print(("DIFFERS " if problems else "same    ") + names, flush=True)
        for p in problems:
            print("  " + p)
        bad += bool(problems)
    print(f"{bad} group(s) differ" if bad else "every run reproduced bit for bit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
