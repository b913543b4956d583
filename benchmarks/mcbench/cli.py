"""`mcbench` command line: list, run, status, evaluate, report.

Every user mistake, and a place that cannot be written, ends in one line on stderr and
exit status 2; results already written stay where they are. `run` exits with status 1
when any run of the suite is not ok (failed, could not run, or another process's).
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
    from mcbench.plugin.method import compilable
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
                "compile": compilable(e.cls),
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
        compiles = "  --compile" if compilable(e.cls) else ""
        print(f"  {n:<14} {e.origin}{alias}{presets}{compiles}")
    print("suites:")
    width = max(map(len, data["suites"]), default=0)
    for n, desc in data["suites"].items():
        print(f"  {n:<{width}} {desc}")


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


def _number(text: str) -> float:
    """argparse type: a number (its range is checked with the run's other options)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


REGULARIZER_OPTIONS = ("instance_noise", "noise_schedule", "noise_steps", "lr_d", "lr_g")


def cmd_run(args: argparse.Namespace) -> None:
    from mcbench.report.build import load, markdown
    from mcbench.run.suite import build_suite, default_jobs, load_suite, run_specs

    budget = {"steps": args.steps, "eval_every": args.eval_every, "eval_samples": args.eval_samples}
    regularizers = {
        k: getattr(args, k) for k in REGULARIZER_OPTIONS if getattr(args, k) is not None
    }
    if args.suite:
        overrides = {
            **budget,
            "seeds": args.seeds,
            "datasets": args.dataset,
            "methods": args.method,
            "protocol": args.protocol,
            "regularizers": regularizers,
            "compile": True if args.compile else None,
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
            "protocol": args.protocol or "common",
            "regularizers": regularizers,
            "compile": args.compile,
        }
        suite = build_suite("adhoc", raw)
        out = Path(args.out or "results/adhoc")
    if out.exists() and not out.is_dir():
        raise McbenchError(f"--out {out} exists and is not a folder")
    tensorboard = args.tensorboard or suite.tensorboard
    if tensorboard:
        from mcbench.run.tensorboard import check_available

        check_available()  # before the first line of output
    regs = {s.regularizers.describe() for s in suite.specs} - {"none"}
    shown = f" with {', '.join(sorted(regs))}" if regs else ""
    print(
        f"mcbench: {len(suite.specs)} runs of suite {suite.name!r} -> {out}{shown}",
        file=sys.stderr,
    )
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
        tensorboard=tensorboard,
    )
    count = {
        s: sum(o["status"] == s and not o.get("skipped") for o in outcomes)
        for s in ("ok", "failed", "error", "busy")
    }
    skipped = sum(bool(o.get("skipped")) for o in outcomes)
    print(
        f"mcbench: {count['ok']} ok, {count['failed']} failed, {skipped} finished earlier"
        + (f", {count['busy']} being run by another process" if count["busy"] else "")
        + (f", {count['error']} could not run" if count["error"] else ""),
        file=sys.stderr,
    )
    bad = [o for o in outcomes if o["status"] in ("failed", "error", "busy")]
    for o in bad:
        when = " (earlier)" if o.get("skipped") else ""
        reason = str(o.get("reason") or "").strip().splitlines() or ["no reason recorded"]
        print(f"mcbench: {o['status']}{when}: {o['run']}: {reason[-1]}", file=sys.stderr)
        if args.verbose and o.get("traceback"):
            print(str(o["traceback"]).rstrip(), file=sys.stderr)
    with contextlib.suppress(McbenchError):  # no finished run: the lines above say why
        print(markdown(load(out)))
    if bad:
        hint = "" if args.verbose else "; --verbose prints their tracebacks"
        raise RunsFailed(
            f"{len(bad)} of {len(outcomes)} run(s) not ok (failed, could not run, or held "
            f"by another process){hint}; `mcbench status {out}` lists them"
        )


class RunsFailed(Exception):
    """Some runs are not ok (failed, a harness error, or another process's): exit 1."""


def cmd_status(args: argparse.Namespace) -> None:
    from mcbench.run.status import format_status, status

    st = status(Path(args.results_dir))
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        print(format_status(st))


SAMPLE_FILES = ".npy, .npz, .csv or .txt"


def read_samples(path: str, key: str | None = None) -> np.ndarray:
    """Samples from a .npy, .npz (its one array, or the array `key`), .csv or .txt file.

    Never a guess (an .npz of several arrays needs `key`) and never a parser's dump: each
    unreadable file is one short line saying what the file is and what was expected.
    """
    from mcbench.errors import did_you_mean

    p = Path(path)
    if p.is_dir():
        raise McbenchError(f"{path} is a folder: expected a samples file ({SAMPLE_FILES})")
    if not p.is_file():
        raise McbenchError(f"cannot read samples: {path} does not exist")
    if key is not None and p.suffix != ".npz":
        raise McbenchError(f"--key {key}: only an .npz file holds named arrays, not {path}")
    try:
        if p.suffix in (".csv", ".txt"):
            data = np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
        else:
            with p.open("rb") as f:
                head = f.read(6)
            if p.suffix == ".npz" and head[:4] != b"PK\x03\x04":
                raise McbenchError(f"{path} is not an .npz file (not a zip archive)")
            if p.suffix != ".npz" and head != b"\x93NUMPY":
                raise McbenchError(
                    f"{path} is not a .npy file (no NumPy header): expected {SAMPLE_FILES}"
                )
            if p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    names = list(z.files)
                    if not names:
                        raise McbenchError(f"{path} holds no array")
                    if key is None and len(names) > 1:
                        raise McbenchError(
                            f"{path} holds {len(names)} arrays ({', '.join(names)}): "
                            "name the samples with --key NAME"
                        )
                    key = names[0] if key is None else key
                    if key not in names:
                        raise McbenchError(
                            f"{path} has no array {key!r}{did_you_mean(key, names)}; "
                            f"arrays: {', '.join(names)}"
                        )
                    data = z[key]
            else:
                data = np.load(p, allow_pickle=False)
    except McbenchError:
        raise
    except Exception as exc:
        text = str(exc)
        if "pickle" in text.lower():
            why = "it holds Python objects (pickled), not numbers"
        elif p.suffix not in (".csv", ".txt"):
            why = f"damaged NumPy header or data ({type(exc).__name__})"
        else:  # numpy's own words name the row and column; one line, not a dump
            first = text.splitlines()[0] if text else ""
            why = f"{type(exc).__name__}: {first[:160]}"
        raise McbenchError(f"cannot read samples from {path}: {why}") from None
    if data.dtype.kind not in "biuf":
        raise McbenchError(f"{path}: samples must be numbers, got dtype {data.dtype}")
    return data


def _small_sample_warning(n: int, modes: int | None, metrics: dict[str, float]) -> str | None:
    """Why these metrics mean little on only `n` samples (None: enough samples)."""
    from mcbench.metrics.mixtures import VEEGAN_PACGAN_SAMPLES

    parts = []
    if modes and n < 10 * modes:
        parts.append(
            f"the metrics' definitions want at least 10 a mode ({10 * modes:,} for "
            f"{modes:,} modes): per-mode values are noise or NaN"
        )
    rule = [
        k for k in ("modes_covered_any", "high_quality_pct_2500", "reverse_kl_2500") if k in metrics
    ]
    if rule and n < VEEGAN_PACGAN_SAMPLES:
        parts.append(
            f"the VEEGAN/PacGAN-rule metrics ({', '.join(rule)}) need "
            f"{VEEGAN_PACGAN_SAMPLES:,} and are NaN"
        )
    from mcbench.metrics.prdc import PRDC_K, PRDC_METRICS

    prdc = [k for k in PRDC_METRICS if k in metrics]
    if prdc and n <= PRDC_K:
        parts.append(f"PRDC ({', '.join(prdc)}) needs more than {PRDC_K} samples and is NaN")
    return f"only {n:,} samples: " + "; ".join(parts) if parts else None


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Every metric the dataset's evaluation returns (on a mixture: both mode-count rules),
    with its label; NaN (a metric undefined on these samples) is null in --json."""
    from mcbench.datasets import get_dataset
    from mcbench.metrics import metric_spec

    ds = get_dataset(args.dataset)
    samples = read_samples(args.samples, args.key)
    try:  # overflow would print numpy warnings and NaN metrics: refuse instead
        with np.errstate(over="raise"):
            metrics = ds.evaluate(samples)
    except FloatingPointError:
        biggest = float(np.abs(samples.astype(np.float64)).max())
        raise McbenchError(
            f"{args.samples}: values up to {biggest:.3g} in magnitude overflow the metrics' "
            "float64 arithmetic: rescale the samples to the dataset's range"
        ) from None
    warn = _small_sample_warning(len(samples), ds.info().get("modes"), metrics)
    if warn:
        print(f"mcbench: warning: {warn}", file=sys.stderr)
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
    s.add_argument(
        "--protocol",
        help="protocol profile: common (default), or a paper's own (pacgan, lbt, ...); "
        "overrides a suite's",
    )
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
    s.add_argument(
        "--compile",
        action="store_true",
        help="run each update as the method's functional update compiled whole by "
        "torch.compile (methods `mcbench list` marks; equal to eager to rounding, a "
        "configuration of its own; compiling takes minutes the first time, untimed)",
    )
    g = s.add_argument_group(
        "regularizers",
        "harness options for every GAN-family method (recorded in each run's config and "
        "key; override a suite's [regularizers])",
    )
    g.add_argument(
        "--instance-noise",
        type=_number,
        metavar="SIGMA",
        help="std of Gaussian noise added to every critic input, real and generated "
        "(Arjovsky & Bottou 2017); annealed to 0 (see --noise-schedule); default 0: none",
    )
    g.add_argument(
        "--noise-schedule",
        choices=("linear", "constant"),
        help="linear (default): SIGMA falls linearly to 0 over --noise-steps updates; "
        "constant: SIGMA throughout",
    )
    g.add_argument(
        "--noise-steps",
        type=_positive,
        metavar="N",
        help="generator updates over which linear noise falls to 0 (default: the run's steps)",
    )
    g.add_argument(
        "--lr-d",
        type=_number,
        metavar="LR",
        help="the discriminator side's Adam rate, in place of the protocol's (TTUR, "
        "Heusel et al. 2017; e.g. --lr-d 4e-4 --lr-g 1e-4 as SAGAN)",
    )
    g.add_argument("--lr-g", type=_number, metavar="LR", help="the generator's Adam rate (TTUR)")
    s.add_argument(
        "--tensorboard",
        action="store_true",
        help="write each run's curves as TensorBoard scalars into its folder's tb/ as they "
        "are recorded (needs pip install 'mcbench[tensorboard]'; or tensorboard = true "
        "in a suite)",
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
    s.add_argument("--key", help="the array to evaluate in an .npz that holds several")
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
    except OSError as exc:
        if exc.filename is None:
            raise
        # an unwritable or missing place (read-only folder, full disk): one line, not a
        # traceback; what was written before stays (files are written atomically)
        print(f"mcbench: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
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
