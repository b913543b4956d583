"""`mcbench` command line: list, run, status, evaluate, report.

Every user mistake ends in one line on stderr and exit status 2; results already written
stay where they are.
"""

from __future__ import annotations

import argparse
import contextlib
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
    from mcbench.plugin.registry import methods
    from mcbench.run.suite import suite_description, suite_names

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
        "suites": {n: suite_description(n) for n in suite_names()},
    }
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return
    print("datasets:")
    width = max(map(len, data["datasets"])) + 1
    for n, info in data["datasets"].items():
        facts = [f"{info['modes']} modes"] if "modes" in info else []
        facts += [f"std {info['std']}"] if "std" in info else []
        facts.append(f"source: {info.get('source', '')}")
        print(f"  {n:<{width}} {info['family']:<{width}} {', '.join(facts)}")
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


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (checked before anything is imported or run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {value}")
    return value


def cmd_run(args: argparse.Namespace) -> None:
    from mcbench.report.build import load, markdown
    from mcbench.run.suite import build_suite, default_jobs, load_suite, run_specs

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
            "eval_every": args.eval_every or min(500, args.steps or 2000),
            "eval_samples": args.eval_samples or 100_000,
        }
        suite = build_suite("adhoc", raw)
        out = Path(args.out or "results/adhoc")
    if out.exists() and not out.is_dir():
        raise McbenchError(f"--out {out} exists and is not a folder")
    print(f"mcbench: {len(suite.specs)} runs of suite {suite.name!r} -> {out}", file=sys.stderr)
    outcomes = run_specs(
        suite.specs,
        out,
        jobs=args.jobs or default_jobs(args.device, args.scheduler),
        device=args.device,
        progress=not args.no_progress,
        scheduler=args.scheduler,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every or suite.checkpoint_every,
        retry_failed=args.retry_failed,
        verbose=args.verbose,
        replicas=args.replicas or suite.replicas,
        graphs=args.graphs,
    )
    count = {
        s: sum(o["status"] == s and not o.get("skipped") for o in outcomes)
        for s in ("ok", "failed", "error", "busy")
    }
    skipped = sum(bool(o.get("skipped")) and o["status"] != "busy" for o in outcomes)
    print(
        f"mcbench: {count['ok']} ok, {count['failed']} failed, {skipped} finished earlier"
        + (f", {count['busy']} being run by another process" if count["busy"] else "")
        + (f", {count['error']} could not run" if count["error"] else ""),
        file=sys.stderr,
    )
    for o in outcomes:
        if o["status"] in ("failed", "error") and not o.get("skipped"):
            print(f"mcbench: {o['status']}: {o['run']}: {o.get('reason')}", file=sys.stderr)
    with contextlib.suppress(McbenchError):  # no finished run: the lines above say why
        print(markdown(load(out)))
    if count["error"]:
        raise RunsFailed(f"{count['error']} run(s) could not run; re-run to retry them")


class RunsFailed(Exception):
    """Some runs hit a harness error (not a method failure): exit status 1."""


def cmd_status(args: argparse.Namespace) -> None:
    from mcbench.run.status import format_status, status

    st = status(Path(args.results_dir))
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        print(format_status(st))


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
    """Every metric the dataset's evaluation returns (on a mixture: both mode-count rules),
    with its label; NaN (a metric undefined on these samples) is null in --json."""
    from mcbench.datasets import get_dataset
    from mcbench.metrics import metric_spec

    ds = get_dataset(args.dataset)
    metrics = ds.evaluate(read_samples(args.samples))
    if args.json:
        clean = {k: (v if np.isfinite(v) else None) for k, v in metrics.items()}
        print(json.dumps(clean, indent=2))
    else:
        width = max(map(len, metrics), default=0)
        for k, v in metrics.items():
            spec = metric_spec(k)
            print(f"{k:<{width}}  {v:<12.6g}  {spec.label if spec else ''}".rstrip())


def cmd_report(args: argparse.Namespace) -> None:
    from mcbench.report import build as report

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
    s.add_argument("--seeds", type=_seed, nargs="+", help="seeds (default: the suite's, or 0)")
    s.add_argument("--steps", type=_positive, help="generator updates per run")
    s.add_argument("--eval-every", type=_positive, help="evaluate every N generator updates")
    s.add_argument("--eval-samples", type=_positive, help="samples per evaluation")
    s.add_argument(
        "--checkpoint-every",
        type=_positive,
        help="checkpoint every N steps (default: the suite's, else at each evaluation)",
    )
    s.add_argument(
        "--jobs",
        "-j",
        type=_positive,
        help="parallel worker processes (default: one per CPU core on a CPU, 1 on a GPU)",
    )
    s.add_argument(
        "--replicas",
        type=_positive,
        help="most seeds of one configuration trained together as vectorised replicas "
        "(default: the suite's, else all its seeds; 1: one seed at a time)",
    )
    s.add_argument(
        "--scheduler",
        help="Dask scheduler address (tcp://host:8786): runs go to its workers; "
        "--out must be on a filesystem they share",
    )
    s.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="torch threads per run (default 1: runs in parallel, stable timings)",
    )
    s.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    s.add_argument(
        "--graphs",
        action="store_true",
        help="on a CUDA device, replay each update as a captured CUDA graph (after a few "
        "eager updates; eager where capture fails; no effect on a CPU)",
    )
    s.add_argument("--out", "-o", help="results folder (default: results/<suite>)")
    s.add_argument(
        "--retry-failed", action="store_true", help="train failed runs again (default: kept)"
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--verbose", "-v", action="store_true", help="a line per run at each evaluation")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="finished, failed and running runs of a results folder")
    s.add_argument("results_dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("evaluate", help="metrics of samples (.npy/.npz/.csv) against a dataset")
    s.add_argument("dataset")
    s.add_argument("samples")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="tables and figures from a results folder")
    from mcbench.report import options as report_options  # light: no matplotlib

    report_options.add_arguments(s)
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("study", help="unroll-depth study: time, memory and ring quality against K")
    from mcbench import depth_study

    depth_study.add_arguments(s)
    s.set_defaults(func=depth_study.run)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except McbenchError as exc:
        print(f"mcbench: error: {exc}", file=sys.stderr)
        return 2
    except RunsFailed as exc:
        print(f"mcbench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "mcbench: interrupted; finished runs and checkpoints are kept: run the same "
            "command again to continue",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
