"""Metrics and methods describe themselves, and reports read the declarations: a metric a
plugin registers reaches the tables (bold by its declared direction) and the figures with
no edit to reporting code; method order and the depth study follow the method classes."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from mcbench.datasets import DATASETS, get_dataset
from mcbench.errors import McbenchError
from mcbench.metrics import (
    MetricSpec,
    all_metrics,
    metric_spec,
    register_metric,
    unregister_metric,
)
from mcbench.report import build as report
from mcbench.report.naming import sort_methods
from mcbench.run import store

SHARPNESS = MetricSpec(
    "sharpness",
    "higher",
    "sharpness",
    "How sharp the samples are (a test metric).",
    "this test",
)
# Final values (step 20) per method and seed; step 10 rows are decoys. lbt beats gan by
# Welch's one-sided t-test at 0.05 (p = 0.0097), so its cell is bold.
FINAL = {("gan", 0): 0.2, ("gan", 1): 0.3, ("lbt", 0): 0.8, ("lbt", 1): 0.7}


@pytest.fixture
def sharpness():
    register_metric(SHARPNESS)
    yield SHARPNESS
    unregister_metric("sharpness")


def write_results(folder: Path) -> Path:
    """A results folder as `mcbench run` leaves it when only results.csv survives:
    store.COLUMNS plus run and status, one row per (run, step, metric)."""
    rows = []
    for (method, seed), value in FINAL.items():
        run = f"{method}-ring-s{seed}"
        for step in (10, 20):
            t = step / 10
            v = value if step == 20 else -1.0
            for metric, x in (("sharpness", v), ("modes_covered", 8.0), ("loss_g", 0.7)):
                rows.append((method, "ring", seed, step, metric, x, t, run, "ok"))
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=[*store.COLUMNS, "run", "status"]).to_csv(
        folder / "results.csv", index=False
    )
    return folder


def test_every_recorded_name_is_declared():
    for name in DATASETS:
        specs = get_dataset(name).metric_specs()  # raises on an undeclared key
        assert all(s.direction in ("higher", "lower", None) for s in specs)
    recorded = ["step_time_ms", "loss_g", "loss_elbo_fake", "failed_at_step"]
    recorded += ["elbo_real", "elbo_generated", "elbo_fake", "elbo_real_unrolled"]
    for name in recorded:
        assert metric_spec(name) is not None, name
    assert metric_spec("loss_elbo_fake").name == "loss_*"  # the family, not the ELBO
    assert metric_spec("elbo_real").role == "diagnostic"
    assert metric_spec("intra_mode_kl").scale == "log"
    assert metric_spec("reverse_kl").direction == "lower"
    assert metric_spec("no_such_metric") is None
    assert all(s.definition and s.source and s.label for s in all_metrics())


def test_registry_rules(sharpness):
    register_metric(SHARPNESS)  # the same declaration again: a no-op
    with pytest.raises(McbenchError, match="already declared"):
        register_metric(MetricSpec("sharpness", "lower", "s", "other", "x"))
    with pytest.raises(McbenchError, match="direction"):
        MetricSpec("m", "up", "m", "d", "s")  # type: ignore[arg-type]
    with pytest.raises(McbenchError, match="prefix"):
        MetricSpec("a*b", None, "m", "d", "s")
    register_metric(MetricSpec("loss_gp*", None, "gradient penalty", "d", "s", role="detail"))
    try:
        assert metric_spec("loss_gp_real").name == "loss_gp*"  # the longer family wins
        assert metric_spec("loss_g").name == "loss_*"
    finally:
        unregister_metric("loss_gp*")


def test_plugin_metric_reaches_tables_and_figures(sharpness, tmp_path):
    results = report.load_results([write_results(tmp_path / "results")])
    opts = report.Options(out=tmp_path / "report", density_samples=0, pdf=False)
    info = report.build_report(results, opts)

    final = next(t for t in info["tables_list"] if t.name == "final-ring")
    md = final.markdown()
    assert md.splitlines()[0] == "| method | seeds ok (failed) | modes_covered | sharpness |"
    # higher is better; equal mode counts (8 and 8) are no significant difference
    assert "| lbt | 2 (0) | 8 ± 0 | **0.750 ± 0.071 (0.050)** |" in md
    assert "| gan | 2 (0) | 8 ± 0 | 0.250 ± 0.071 (0.050) |" in md
    assert "sharpness ↑" in final.caption and "loss_g" not in md
    assert "\\textbf{0.750 $\\pm$ 0.071 (0.050)}" in final.latex()
    assert '<td class="data row1 col3 best" >0.750 ± 0.071 (0.050)</td>' in final.html()
    curves = next(f for f in info["figures_list"] if f.png.name == "curves-ring.png")
    assert "sharpness" in curves.metrics and curves.png.is_file()
    html = (opts.out / "report.html").read_text()
    assert "sharpness" in html and "declared by no loaded module" not in html

    # the direction is read from the declaration: redeclared lower-is-better, gan wins
    register_metric(dataclasses.replace(SHARPNESS, direction="lower"), replace=True)
    agg = report.aggregate(results.rows, results.runs)
    md = report.final_table(agg, "ring").markdown()
    assert "| gan | 2 (0) | 8 ± 0 | **0.250 ± 0.071 (0.050)** |" in md
    assert "sharpness ↓" in report.final_table(agg, "ring").caption


def test_undeclared_metric_is_shown_without_direction_and_noted(tmp_path):
    """A results folder from elsewhere: its metric is shown, never bolded, and noted."""
    results = report.load_results([write_results(tmp_path / "results")])
    opts = report.Options(out=tmp_path / "report", figures=False, pdf=False)
    info = report.build_report(results, opts)
    md = next(t for t in info["tables_list"] if t.name == "final-ring").markdown()
    assert "sharpness" in md and "**0.750" not in md
    assert "declared by no loaded module" in (opts.out / "report.md").read_text()


def test_method_order_comes_from_the_registry():
    """Families in registry order, each family's variants together (lbt-implicit beside
    lbt); methods the registry does not know come last, by name."""
    order = sort_methods(["zz", "lbt-implicit", "gan", "lbt", "lbt-gan", "pacgan[m=3]", "ali"])
    assert order[-1] == "zz"
    lbt = order.index("lbt")
    assert order[lbt : lbt + 3] == ["lbt", "lbt-gan", "lbt-implicit"]
    assert {"gan", "ali", "pacgan[m=3]"} <= set(order)


def test_depth_study_takes_methods_from_depth_param(monkeypatch):
    from mcbench import depth_study
    from mcbench.plugin.registry import get_method

    lbt, unrolled = get_method("lbt").cls, get_method("unrolled-gan").cls
    monkeypatch.setattr(lbt, "depth_param", "K", raising=False)
    monkeypatch.setattr(unrolled, "depth_param", "K", raising=False)
    study = depth_study.study_methods(None, ["lbt-implicit"])
    # lbt-implicit inherits lbt's depth_param but is declared the flat reference
    assert study == {"lbt": "K", "lbt-gan": "K", "unrolled-gan": "K", "lbt-implicit": None}
    assert depth_study.counterpart("lbt-implicit", study) == "lbt"
    assert depth_study.study_methods(["gan", "nope"], []) == {"gan": None}
    assert depth_study.quality_metrics("ring")[1] == ["modes_covered", "high_quality_pct"]


def test_report_modules_import_at_the_top():
    """No import inside a function in report/: such imports hid the build <-> figures
    cycle (test_architecture checks that no cycle is left)."""
    folder = Path(report.__file__).parent
    for path in folder.glob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
                assert not inner, f"{path.name}: {fn.name} imports inside the function"


def test_sample_count_and_bounds_are_declared():
    """A metric whose definition fixes N says so (reports match published numbers on it);
    bounds clip curve bands."""
    assert metric_spec("modes_covered_any").samples == 2500
    assert metric_spec("high_quality_pct_2500").samples == 2500
    assert metric_spec("modes_covered").samples is None  # every evaluated sample
    assert metric_spec("modes_covered").lower == 0 and metric_spec("intra_mode_kl").lower == 0
    assert metric_spec("high_quality_pct").upper == 100
    with pytest.raises(McbenchError, match="samples"):
        MetricSpec("m", None, "m", "d", "s", samples=0)
    with pytest.raises(McbenchError, match="lower bound"):
        MetricSpec("m", None, "m", "d", "s", lower=1.0, upper=0.0)
