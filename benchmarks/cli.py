"""`mcbench` command line: list, run, evaluate, report.

Every user mistake ends in one line on stderr and exit status 2; results already written
stay where they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from mcbench.errors import McbenchError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not a usage dump
        raise McbenchError(f"{message} (see `{self.prog} --help`)")


def cmd_list(args: argparse.Namespace) -> None:
    from mcbench.datasets import DATASETS, get_dataset
    from mcbench.registry import methods
    from mcbench.suite import load_suite, suite_names

    reg = methods()
    data = {
        "datasets": {n: get_dataset(n).info() for n in DATASETS},
        "methods": {
            n: {
                "class": e.cls.name,
                "overrides": e.overrides,
                "origin": e.origin,
                "presets": sorted(e.cls.presets),
            }
            for n, e in reg.items()
        },
        "suites": {n: load_suite(n).description for n in suite_names()},
    }
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return
    print("datasets:")
    for n, info in data["datasets"].items():
        extra = (
            f"{info.get('modes', '')} modes, std {info.get('std', '')}" if "modes" in info else ""
        )
        print(f"  {n:<14} {info['family']:<10} {extra}  ({info.get('source', '')})")
    print("methods:")
    for n, e in reg.items():
        alias = (
            f" = {e.cls.name}[{', '.join(f'{k}={v}' for k, v in e.overrides.items())}]"
            if e.overrides
            else ""
        )
        presets = f"  presets: {', '.join(sorted(e.cls.presets))}" if e.cls.presets else ""
        print(f"  {n:<14} {e.origin}{alias}{presets}")
    print("suites:")
    for n, desc in data["suites"].items():
        print(f"  {n:<14} {desc}")


def cmd_run(args: argparse.Namespace) -> None:
    from mcbench.report import load, markdown
    from mcbench.suite import load_suite, run_specs

    budget = {"steps": args.steps, "eval_every": args.eval_every, "eval_samples": args.eval_samples}
    if args.suite:
        overrides = {
            **budget,
            "seeds": args.seeds,
            "datasets": args.dataset,
            "methods": args.method,
        }
        suite = load_suite(args.suite, overrides)
        out = Path(args.out or f"results/{suite.name}")
    else:
        if not args.method or not args.dataset:
            raise McbenchError("give --suite, or at least one --method and one --dataset")
        raw = {
            "methods": args.method,
            "datasets": args.dataset,
            "seeds": args.seeds or [0],
            "steps": args.steps or 2000,
            "eval_every": args.eval_every or 500,
            "eval_samples": args.eval_samples or 100_000,
        }
        from mcbench.suite import build_suite

        suite = build_suite("adhoc", raw)
        out = Path(args.out or "results/adhoc")
    print(f"mcbench: {len(suite.specs)} runs of suite {suite.name!r} -> {out}", file=sys.stderr)
    run_specs(suite.specs, out, jobs=args.jobs, device=args.device, progress=not args.no_progress)
    print(markdown(load(out)))


def read_samples(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise McbenchError(f"cannot read samples: {path} does not exist")
    try:
        if p.suffix == ".npz":
            with np.load(p) as z:
                if not z.files:
                    raise McbenchError(f"{path} holds no array")
                return z[z.files[0]]
        if p.suffix in (".csv", ".txt"):
            return np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
        return np.load(p, allow_pickle=False)
    except McbenchError:
        raise
    except Exception as exc:
        raise McbenchError(
            f"cannot read samples from {path}: {type(exc).__name__}: {exc}"
        ) from None


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mcbench.datasets import get_dataset

    ds = get_dataset(args.dataset)
    metrics = ds.evaluate(read_samples(args.samples))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        for k, v in metrics.items():
            print(f"{k:<18} {v:.6g}")


def cmd_report(args: argparse.Namespace) -> None:
    from mcbench import report

    report.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mcbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="datasets, methods and suites")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("run", help="run a suite, or methods x datasets x seeds")
    s.add_argument("--suite", help="suite name (see `mcbench list`) or path to a .toml")
    s.add_argument(
        "--method",
        "-m",
        action="append",
        help="method selector, e.g. gan or pacgan[m=3] (repeatable)",
    )
    s.add_argument("--dataset", "-d", action="append", help="dataset name (repeatable)")
    s.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the suite's, or 0)")
    s.add_argument("--steps", type=int, help="generator updates per run")
    s.add_argument("--eval-every", type=int, help="evaluate every N generator updates")
    s.add_argument("--eval-samples", type=int, help="samples per evaluation")
    s.add_argument("--jobs", "-j", type=int, default=1, help="parallel runs (joblib)")
    s.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    s.add_argument("--out", "-o", help="results folder (default: results/<suite>)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("evaluate", help="metrics of samples (.npy/.npz/.csv) against a dataset")
    s.add_argument("dataset")
    s.add_argument("samples")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="tables and figures from a results folder")
    from mcbench import report

    report.add_arguments(s)
    s.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except McbenchError as exc:
        print(f"mcbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mcbench: interrupted; finished runs are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
