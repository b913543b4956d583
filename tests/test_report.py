"""Report tables from synthetic results with known statistics, and the report command on
a tiny real run (files written, HTML self-contained, Chromium check when available)."""

from __future__ import annotations

import json
import math
import re
import shutil
from io import StringIO

import numpy as np
import pandas as pd
import pytest
from check_report_html import check, find_chromium

from mcbench.cli import main
from mcbench.errors import McbenchError
from mcbench.report import build as report
from mcbench.run import store as res

# Final values per (method, seed): means and stds below follow from them by hand.
FINAL = {
    ("a", 0): {"modes_covered": 6.0, "intra_mode_kl": 0.5},
    ("a", 1): {"modes_covered": 7.0, "intra_mode_kl": 1.0},
    ("a", 2): {"modes_covered": 8.0, "intra_mode_kl": 1.5},
    ("b", 0): {"modes_covered": 8.0, "intra_mode_kl": 2.0},
    ("b", 1): {"modes_covered": 8.0, "intra_mode_kl": 3.0},
    ("b", 2): {"modes_covered": 8.0, "intra_mode_kl": 4.0},
}


def synthetic_rows() -> pd.DataFrame:
    """Two methods x 3 ok seeds, evaluated at steps 10 and 20 (step 10 values are decoys),
    plus one failed run of b whose values must never enter a statistic."""
    rows = []
    for (method, seed), final in FINAL.items():
        run = f"{method}-ring-s{seed}"
        for metric, value in final.items():
            for step, v in ((10, -100.0), (20, value)):
                rows.append((method, "ring", seed, step, metric, v, step / 10, run, "ok"))
        rows.append((method, "ring", seed, 20, "loss_g", 0.7, 2.0, run, "ok"))
    for metric in ("modes_covered", "intra_mode_kl"):
        rows.append(("b", "ring", 9, 10, metric, 1e6, 1.0, "b-ring-s9", "failed"))
    cols = [*report.res.COLUMNS, "run", "status"]
    return pd.DataFrame(rows, columns=cols)


def test_aggregate_means_stds_counts_and_best():
    agg = report.aggregate(synthetic_rows()).set_index(["method", "metric"])
    a, b = agg.loc[("a", "modes_covered")], agg.loc[("b", "modes_covered")]
    assert (a["mean"], a["std"], a["n"]) == (7.0, 1.0, 3)
    assert a["sem"] == pytest.approx(1 / math.sqrt(3))
    assert (b["mean"], b["std"], b["n"], b["runs"], b["failed"]) == (8.0, 0.0, 3, 4, 1)
    assert (a["runs"], a["failed"]) == (3, 0)
    kl_a, kl_b = agg.loc[("a", "intra_mode_kl")], agg.loc[("b", "intra_mode_kl")]
    assert (kl_a["mean"], kl_a["std"]) == (1.0, 0.5)
    assert (kl_b["mean"], kl_b["std"]) == (3.0, 1.0)
    # higher modes is better: b's 8, 8, 8 against a's 6, 7, 8 is not significant
    # (Welch, one-sided p = 0.113); lower KL is better: a's beats b's (p = 0.027)
    assert not bool(b["best"]) and not bool(a["best"])
    assert b["p_value"] == pytest.approx(0.1127017, abs=1e-6) and math.isnan(a["p_value"])
    assert bool(kl_a["best"]) and not bool(kl_b["best"])
    assert kl_a["p_value"] == pytest.approx(0.0273934, abs=1e-6)
    assert not agg.loc[("a", "loss_g"), "best"]
    # t-based 95% interval: mean -/+ t(0.975, n - 1) * sem
    assert a["ci95_low"] == pytest.approx(7.0 - 2.4841377, abs=1e-6)
    assert a["ci95_high"] == pytest.approx(7.0 + 2.4841377, abs=1e-6)
    assert (b["ci95_low"], b["ci95_high"]) == (8.0, 8.0)


def test_all_failed_method_still_counted():
    rows = synthetic_rows()
    extra = rows[rows["method"] == "a"].assign(method="c", run=lambda d: "c-" + d["run"])
    extra["status"] = "failed"
    agg = report.aggregate(pd.concat([rows, extra], ignore_index=True))
    c = agg[agg["method"] == "c"]
    assert list(c["n"]) == [0] and int(c["runs"].iloc[0]) == 3 and int(c["failed"].iloc[0]) == 3
    md = report.final_table(agg, "ring").markdown()
    assert "| c | 0 (3) | — | — |" in md


def test_markdown_latex_csv_numbers():
    agg = report.aggregate(synthetic_rows())
    t = report.final_table(agg, "ring", error="both")
    md = t.markdown()
    # mean ± std (standard error), error to 2 significant digits, mean to the same place
    assert "| a | 3 (0) | 7.0 ± 1.0 (0.58) | **1.00 ± 0.50 (0.29)** |" in md
    assert "| b | 3 (1) | 8 ± 0 | 3.0 ± 1.0 (0.58) |" in md  # 8 vs 7.0 ± 1.0: not significant
    assert "loss_g" not in md
    tex = t.latex()
    assert "\\begin{tabular}{lrrr}" in tex
    assert "modes\\_covered" in tex and "intra\\_mode\\_kl" in tex
    assert "a & 3 (0) & 7.0 $\\pm$ 1.0 (0.58) & \\textbf{1.00 $\\pm$ 0.50 (0.29)} \\\\" in tex
    assert "\\textbf{8 $\\pm$ 0}" not in tex
    assert tex.isascii() and "$\\uparrow$" in tex  # pdflatex-safe, arrows in the caption
    csv = pd.read_csv(StringIO(t.csv())).set_index(["method", "metric"])
    assert csv.loc[("a", "modes_covered"), "mean"] == 7.0
    assert csv.loc[("a", "modes_covered"), "std"] == 1.0
    assert csv.loc[("a", "modes_covered"), "sem"] == pytest.approx(1 / math.sqrt(3))
    assert csv.loc[("b", "intra_mode_kl"), "mean"] == 3.0
    assert csv.loc[("b", "modes_covered"), "failed"] == 1
    assert not bool(csv.loc[("b", "modes_covered"), "best"])
    assert bool(csv.loc[("a", "intra_mode_kl"), "best"])
    assert csv.loc[("a", "modes_covered"), "ci95_low"] == pytest.approx(7.0 - 2.4841377)
    assert csv.loc[("a", "intra_mode_kl"), "p_value"] == pytest.approx(0.0273934, abs=1e-6)
    sem_only = report.final_table(agg, "ring", error="sem").markdown()
    assert "| a | 3 (0) | 7.00 ± 0.58 | **1.00 ± 0.29** |" in sem_only


def test_format_rules():
    assert report.fmt_stat(999.6, 0.49, 0.22, 5, "std") == "999.60 ± 0.49"
    assert report.fmt_stat(0.19, float("nan"), float("nan"), 1) == "0.19"
    assert report.fmt_stat(float("nan"), 0, 0, 0) == "—"
    assert report.fmt_stat(12345.0, 1234.5, 1.0, 3, "std") == "12345 ± 1234"


def test_paper_layouts():
    rows = synthetic_rows()
    rows.loc[rows["metric"] == "intra_mode_kl", "metric"] = "reverse_kl"
    agg = report.aggregate(rows)
    t = report.mixture_table(agg, ["ring"], "std", {"ring": 8})
    assert t.groups == [("", 1), ("ring", 3)]
    assert t.markdown().splitlines()[0] == (
        "| method | ring: modes (of 8) | ring: % high quality | ring: reverse KL |"
    )
    assert "| a | 7.0 ± 1.0 | — | **1.00 ± 0.50** |" in t.markdown()
    assert "\\multicolumn{3}{c}{ring}" in t.latex()
    assert "LBT rule" in t.caption  # older results: our definitions, named
    # with VEEGAN/PacGAN's definitions recorded, the layout shows those and names them
    vp = rows.replace(
        {"metric": {"modes_covered": "modes_covered_any", "reverse_kl": "reverse_kl_2500"}}
    )
    t = report.mixture_table(report.aggregate(vp), ["ring"], "std", {"ring": 8})
    assert t.markdown().splitlines()[0] == (
        "| method | ring: modes (≥1 HQ, N=2,500; of 8) | ring: % high quality (N=2,500) | "
        "ring: reverse KL (N=2,500) |"
    )
    assert "| a | 7.0 ± 1.0 | — | **1.00 ± 0.50** |" in t.markdown()  # their share missing
    assert "first 2,500 evaluated samples" in t.caption and "Welch" in t.caption
    assert "$\\ge$1 HQ" in t.latex()
    # Stacked MNIST: the names metrics/stacked.py reports fill the LBT Table 1 rows
    st = synthetic_rows()
    st["dataset"] = "stacked-mnist"
    st["metric"] = st["metric"].replace({"intra_mode_kl": "reverse_kl"})
    sagg = report.aggregate(st)
    names = report.stacked_metric_names(set(sagg["metric"]))
    assert names == {"Modes": "modes_covered", "KL": "reverse_kl"}
    assert report.stacked_metric_names({"modes_covered", "kl"}) is None
    md = report.stacked_table(sagg, "stacked-mnist", names, "std").markdown()
    assert md.splitlines()[0] == "|  | a | b |"
    assert "| Modes | 7.0 ± 1.0 | 8 ± 0 |" in md  # not significant: nothing bold
    assert "| KL | **1.00 ± 0.50** | 3.0 ± 1.0 |" in md
    assert "| seeds ok (failed) | 3 (0) | 3 (1) |" in md


def test_published_numbers_name_their_source():
    """Every published number names its paper and table, a dataset of ours and a declared
    metric (published.csv is the record: nothing outside the repository is read)."""
    pub = report.published()
    assert pub["source"].str.len().min() > 0 and pub["table"].str.len().min() > 0
    assert np.isfinite(pub["value"]).all()
    assert {"ring", "grid", "ring-veegan", "grid-veegan", "stacked-mnist"} <= set(pub["dataset"])
    from mcbench.datasets import DATASETS
    from mcbench.metrics import metric_spec

    assert set(pub["dataset"]) <= set(DATASETS)  # every row names a dataset of ours
    assert all(metric_spec(m) is not None and metric_spec(m).direction for m in pub["metric"])
    # spot checks against the papers: PacGAN Table 1 (ring, GAN) and LBT Table 1
    ring = pub[(pub["dataset"] == "ring-veegan") & (pub["method"] == "GAN")]
    assert not ring.empty and set(ring["table"]) == {"Table 1"}
    assert 999.6 in set(pub.loc[pub["method"] == "LBT-GAN", "value"])
    # each number under the definition and N its source used: VEEGAN's and PacGAN's 2-D
    # counts (one high-quality sample of 2,500) never under LBT's 20% rule, and back
    mixtures = pub[pub["dataset"].isin(["ring-veegan", "grid-veegan"])]
    assert set(mixtures["metric"]) == {
        "modes_covered_any",
        "high_quality_pct_2500",
        "reverse_kl_2500",
    }
    assert set(mixtures["samples"]) == {2500}
    lbt = pub[pub["dataset"].isin(["ring", "grid"])]
    assert set(lbt["metric"]) == {"modes_covered", "high_quality_pct"}
    assert set(lbt["samples"]) == {500_000}
    for row in pub.itertuples():
        fixed = metric_spec(row.metric).samples
        assert fixed is None or fixed == row.samples, row
    assert set(pub.loc[pub["table"] == "Table 3", "samples"]) == {25_600}


def test_comparison_matches_class_and_hyperparameters():
    """PacGAN's mode counts (one high-quality sample of 2,500) sit beside our
    modes_covered_any, whose definition fixes N = 2,500, for the matching method only."""
    rows = synthetic_rows().replace({"ring": "ring-veegan"})
    rows.loc[rows["metric"] == "modes_covered", "metric"] = "modes_covered_any"
    rows["method"] = rows["method"].map({"a": "pacgan", "b": "gan"})
    rows["run"] = rows["method"] + rows["run"].str[1:]
    runs = report.runs_of(rows).assign(selector=lambda d: d["method"], dir="", family="")
    configs = {
        r: {"method_class": r.split("-")[0], "hyperparameters": {"m": 3}}
        for r in runs["run"]
        if r.startswith("pacgan")
    }
    res = report.Results(rows=rows, runs=runs, configs=configs)
    agg = report.aggregate(rows, runs)
    t = report.comparison_table(res, agg, "ring-veegan", "std")
    md = t.markdown()
    modes = "| modes (≥1 HQ, N=2,500) | 2,500 |"
    assert "| PacGAN (Lin et al. 2018), Table 1 | PacGAN3 |" in md
    line3 = next(x for x in md.splitlines() if "PacGAN3" in x and modes in x)
    assert line3.endswith("| 7.8 (10 runs) | pacgan: 7.0 ± 1.0 |")
    line2 = next(x for x in md.splitlines() if "PacGAN2" in x and modes in x)
    assert line2.endswith("| — |")  # m=3 is not PacGAN2
    gan = next(x for x in md.splitlines() if "Lin" in x and "| GAN |" in x and modes in x)
    assert gan.endswith("| gan: 8 ± 0 |")
    assert "| modes |" not in md  # no VEEGAN/PacGAN count is put beside LBT's rule
    assert "same definition and was computed on the same N" in t.caption
    assert "first 2,500 evaluated samples" in t.caption  # the definition, named
    data = pd.read_csv(StringIO(t.csv()))
    assert set(data.loc[data["ours_method"].notna(), "ours_samples"]) == {2500}
    assert {"samples", "comparable", "ours_ci95_low", "ours_ci95_high"} <= set(data.columns)


@pytest.mark.parametrize(
    "evaluated, shown",
    [
        (500_000, "lbt: 90.0 ± 2.8"),
        (100_000, "lbt: not comparable (ours on N = 100,000)"),
        (None, "lbt: not comparable (our N is not recorded)"),
    ],
)
def test_comparison_needs_the_same_n(evaluated, shown):
    """LBT's 86% high quality was counted on 500,000 samples: ours sits beside it only
    when our runs evaluated as many."""
    rows = pd.DataFrame(
        [
            ("lbt", "ring", seed, 10, "high_quality_pct", v, 1.0, f"lbt-ring-s{seed}", "ok")
            for seed, v in ((0, 88.0), (1, 92.0))
        ],
        columns=[*report.res.COLUMNS, "run", "status"],
    )
    runs = report.runs_of(rows).assign(selector="lbt", dir="", family="")
    budget = {} if evaluated is None else {"budget": {"eval_samples": evaluated}}
    configs = {r: {"method_class": "lbt", **budget} for r in runs["run"]}
    res = report.Results(rows=rows, runs=runs, configs=configs)
    t = report.comparison_table(res, report.aggregate(rows, runs), "ring", "std")
    line = next(x for x in t.markdown().splitlines() if "| 86 |" in x)
    assert "| % high quality | 500,000 | 86 |" in line and line.endswith(f"| {shown} |")


def test_unknown_folder_is_a_clean_error(tmp_path):
    with pytest.raises(McbenchError, match="no results under"):
        report.load_results([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 2


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """A 5-step real run of gan on ring, 2 seeds."""
    out = tmp_path_factory.mktemp("results")
    args = ["run", "-m", "gan", "-d", "ring", "--steps", "6", "--eval-every", "3"]
    args += ["--eval-samples", "2000", "--seeds", "0", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    return out


def test_report_command_writes_everything(tiny_results, tmp_path, capsys):
    # a second folder with a failed copy of one run: merged, counted as failed
    other = tmp_path / "other"
    src = report.res.run_dirs(tiny_results)[0]
    dst = other / "runs" / "gan-ring-s7-failedcopy"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(status="failed", failed_step=3, reason="loss g is nan at step 3", seed=7)
    cfg["checksum"] = res.config_checksum(cfg)  # a made-up run, not a tampered one
    (dst / "config.json").write_text(json.dumps(cfg))
    study = tmp_path / "unroll-study"
    study.mkdir()
    pd.DataFrame(
        {
            "method": ["lbt"] * 3 + ["unrolled-gan"] * 3,
            "K": [1, 2, 5] * 2,
            "ms_per_update": [3.0, 5.0, 11.0, 2.0, 3.0, 6.0],
            "modes_covered": [6, 7, 8, 5, 6, 6],
        }
    ).to_csv(study / "unroll.csv", index=False)
    out = tmp_path / "report"
    code = main(
        [
            "report",
            str(tiny_results),
            str(other),
            "--out",
            str(out),
            "--density-samples",
            "3000",
            "--no-pdf",
            "--unroll-study",
            str(study),
        ]
    )
    assert code == 0
    assert "| gan | 2 (1) |" in capsys.readouterr().out
    for name in (
        "report.md",
        "report.html",
        "tables/summary.csv",
        "tables/runs.csv",
        "tables/final-ring.md",
        "tables/final-ring.tex",
        "tables/final-ring.csv",
        "tables/mixture-2d.tex",
        "tables/published-ring.csv",
        "tables/failed-runs.csv",
        "figures/density.png",
        "figures/curves-mixture2d.png",
        "figures/wallclock-mixture2d.png",
        "figures/unroll-0-unroll.png",
    ):
        assert (out / name).is_file(), name
    final = pd.read_csv(out / "tables/final-ring.csv")
    assert set(final["runs"]) == {3} and set(final["failed"]) == {1}
    assert final.set_index("metric").loc["modes_covered", "n"] == 2
    md = (out / "report.md").read_text()
    assert "![Densities (LBT Figure 1)](figures/density.png)" in md
    assert "PROTOCOLS" not in md and "each with the paper and table it is quoted from" in md
    assert "LBT paper, section 5.1" in md  # the dataset's source, from dataset_info
    assert "loss g is nan at step 3" in md
    html = (out / "report.html").read_text()
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(imgs) >= 4 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "http://" not in html and "https://" not in html
    # a run folder alone is a valid input too
    single = tmp_path / "single"
    assert main(["report", str(src), "--out", str(single), "--no-figures", "-q"]) == 0
    assert (single / "tables/final-ring.md").is_file()
    summary = pd.read_csv(single / "tables/summary.csv")
    assert set(summary["runs"]) == {1}


def test_density_samples_come_from_the_saved_generator(tiny_results):
    """The density figure samples load_method(run).sample: same weights, same numbers."""
    import torch

    from mcbench.run.runner import generate, load_method

    run = report.res.run_dirs(tiny_results)[0]
    m1, m2 = load_method(run), load_method(run)
    x1 = generate(m1, 500, torch.Generator().manual_seed(3))
    x2 = generate(m2, 500, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and np.isfinite(x1.numpy()).all()


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed")
def test_html_opens_in_headless_chromium(tiny_results, tmp_path):
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                str(tiny_results),
                "--out",
                str(out),
                "--density-samples",
                "2000",
                "--no-pdf",
                "-q",
            ]
        )
        == 0
    )
    r = check(out / "report.html", tmp_path / "shot.png", height=1200)
    assert r["ok"], r
    assert r["images"] == r["loaded"] >= 3 and r["broken"] == 0
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def test_merged_budgets_are_never_averaged():
    runs = pd.DataFrame(
        {
            "run": ["r1", "r2", "r3"],
            "selector": ["gan"] * 3,
            "dataset": ["ring"] * 3,
            "steps": [300, 300, 2000],
        }
    )
    rows = pd.DataFrame({"run": ["r1", "r2", "r3"], "method": ["gan"] * 3})
    report._label_methods(rows, runs)
    assert list(runs["method"]) == ["gan (300 steps)", "gan (300 steps)", "gan (2000 steps)"]
    assert list(rows["method"]) == list(runs["method"])


def test_results_csv_alone_is_enough(tiny_results, tmp_path, capsys):
    """A folder holding only results.csv (no run folders) still gives the tables."""
    only = tmp_path / "csv-only"
    only.mkdir()
    shutil.copy(tiny_results / "results.csv", only / "results.csv")
    got = report.load_results([only])
    assert len(got.runs) == 2 and set(got.runs["dir"]) == {""}
    full = report.load_results([tiny_results])
    a = report.aggregate(got.rows, got.runs).set_index(["metric"])
    b = report.aggregate(full.rows, full.runs).set_index(["metric"])
    assert a.loc["modes_covered", "mean"] == b.loc["modes_covered", "mean"]
    capsys.readouterr()
    args = ["report", str(only), "--out", str(tmp_path / "r"), "--print", "published"]
    assert main([*args, "--no-figures"]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    shown = capsys.readouterr().out
    assert "### ring: ours beside published" in shown and "| 86 |" in shown
    assert "### ring\n" not in shown  # the final-metrics table is not printed
    assert main(["report", str(only), "--device", "bogus"]) == 2
    assert main(["report", str(only), "--density-samples", "-1"]) == 2


def test_density_image_keeps_mass_and_orientation():
    """x runs along columns and y along rows (imshow origin="lower"); smoothing keeps mass."""
    from mcbench.report import figures

    x = np.tile([[0.5, -0.5]], (1000, 1))
    img = figures._density_image(x, (-1.0, 1.0, -1.0, 1.0), sigma=2.0)
    assert img.sum() == pytest.approx(1000, rel=1e-6)
    row, col = np.unravel_index(img.argmax(), img.shape)
    bins = figures.BINS
    assert col == int(0.75 * bins) and row == int(0.25 * bins)


def test_depth_study_folder_with_its_own_plots(tmp_path):
    """The study's PNGs are copied beside the report's figures (no plot of ours then), its
    CSVs become tables and machine.json is shown; a study folder beside the results is
    found without --unroll-study."""
    import matplotlib.pyplot as plt

    from mcbench.report import figures

    study = tmp_path / "depth_study"
    study.mkdir()
    pd.DataFrame({"method": ["lbt", "lbt"], "K": [1, 5], "cpu_ms": [3.0, 9.0]}).to_csv(
        study / "cost.csv", index=False
    )
    plt.imsave(study / "cost.png", np.zeros((4, 4)))
    (study / "machine.json").write_text('{"cpu": "test"}')
    opts = report.Options(out=tmp_path / "out", pdf=False)
    tables, figs, texts = figures.unroll_study(study, tmp_path / "out" / "figures", opts)
    assert [t.name for t in tables] == ["unroll-0-cost"]
    assert "| lbt | 5 | 9 |" in tables[0].markdown()
    assert [f.png.name for f in figs] == ["unroll-cost.png"] and figs[0].png.is_file()
    assert texts == ['machine.json:\n{"cpu": "test"}']
    results = report.Results(rows=pd.DataFrame(), runs=pd.DataFrame(), sources=[tmp_path / "q"])
    assert report._find_study(results) == study


def two_methods(a: list[float], b: list[float], metric: str = "modes_covered") -> pd.DataFrame:
    """Final values of methods a and b on ring, one row per seed."""
    rows = [
        (method, "ring", seed, 10, metric, float(v), 1.0, f"{method}-ring-s{seed}", "ok")
        for method, values in (("a", a), ("b", b))
        for seed, v in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=[*report.res.COLUMNS, "run", "status"])


@pytest.mark.parametrize(
    "a, b, metric, bold",
    [
        ([8, 7, 8, 6], [7, 8, 6, 7], "modes_covered", None),  # overlapping across seeds
        ([8, 8, 7, 8], [3, 4, 2, 3], "modes_covered", "a"),  # clearly separated
        ([0.9, 1.1, 1.0], [3.0, 2.5, 3.5], "intra_mode_kl", "a"),  # lower is better
        ([0.9, 1.1, 1.0], [3.0, 2.5, 3.5], "modes_covered", "b"),
        ([8], [3, 4, 2], "modes_covered", None),  # one seed on one side: no test
        ([8, 8, 8], [8, 8, 8], "modes_covered", None),  # a tie: undefined, not rejected
        ([8, 8, 8], [6, 6, 6], "modes_covered", None),  # constant, apart: permutation p 1/20
        ([8] * 5, [6] * 5, "modes_covered", "a"),  # 5 a side: 1/252
    ],
)
def test_bold_only_where_welch_rejects(a, b, metric, bold):
    agg = report.aggregate(two_methods(a, b, metric))
    t = report.final_table(agg, "ring", "std")
    assert [r[0].text for r in t.rows if any(c.best for c in r)] == ([bold] if bold else [])
    assert "Welch's t-test" in t.caption and "one-sided" in t.caption and "0.05" in t.caption
    assert "95% confidence" in t.caption


def test_welch_p_matches_scipy_one_sided():
    from scipy.stats import ttest_ind

    x, y = np.array([8.0, 7.0, 8.0, 6.0]), np.array([7.0, 8.0, 6.0, 7.0])
    assert report.welch_p(x, y, "higher") == pytest.approx(
        ttest_ind(x, y, equal_var=False, alternative="greater").pvalue
    )
    assert report.welch_p(y, x, "lower") == report.welch_p(x, y, "higher")
    assert math.isnan(report.welch_p(x[:1], y, "higher"))


def test_count_bands_do_not_run_below_zero(tmp_path, monkeypatch):
    """A mode count's band is clipped at 0 (its declared lower bound), a share's at 100;
    an undeclared metric's band is left alone; the caption says so."""
    from mcbench.report import figures

    lo, hi = figures.clipped_band(np.array([0.5, 4.0]), np.array([1.0, 1.0]), "modes_covered")
    assert lo.tolist() == [0.0, 3.0] and hi.tolist() == [1.5, 5.0]
    _, hi = figures.clipped_band(np.array([99.5]), np.array([1.0]), "high_quality_pct")
    assert hi.tolist() == [100.0]
    lo, _ = figures.clipped_band(np.array([-1.0]), np.array([1.0]), "loss_g")
    assert lo.tolist() == [-2.0]

    rows = two_methods([0, 0, 3], [0, 0, 3])  # mean 1, std 1.7: mean - std < 0
    rows = pd.concat([rows, rows.assign(step=20, wall_time=2.0)], ignore_index=True)
    lows = []
    save = figures._save

    def spy(fig, *args, **kwargs):
        for ax in fig.axes:
            lows.extend(p.vertices[:, 1].min() for c in ax.collections for p in c.get_paths())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(figures, "_save", spy)
    palette = figures._palette(["a", "b"])
    f = figures.curves(rows, ["ring"], "mixture2d", "step", tmp_path, False, palette)
    assert lows and min(lows) >= 0
    assert "clipped to the metric's declared range" in f.caption


def test_all_nan_panel_against_time_is_drawn(tmp_path):
    """A metric undefined on every run (reverse KL with no high-quality sample) leaves an
    empty panel; against wall-clock time it once failed on the log axis."""
    from mcbench.report import figures

    rows = two_methods([math.nan, math.nan], [math.nan, math.nan], "reverse_kl")
    rows = pd.concat([rows, two_methods([1.0, 2.0], [3.0, 4.0])], ignore_index=True)
    f = figures.curves(
        rows, ["ring"], "mixture2d", "wall_time", tmp_path, False, figures._palette(["a", "b"])
    )
    assert f is not None and f.png.is_file()


def test_constant_seed_values_need_enough_seeds_to_be_bold():
    """A value shared by every seed (a replica group's step time) has no spread: the
    exact permutation p-value decides, so 3 seeds a side never reach 0.05."""
    three_a, three_b = np.full(3, 5.0), np.full(3, 7.0)
    assert report.welch_p(three_a, three_b, "lower") == pytest.approx(1 / 20)
    assert report.welch_p(three_b, three_a, "lower") == 1.0
    assert report.welch_p(np.full(5, 5.0), np.full(5, 7.0), "lower") == pytest.approx(1 / 252)
    assert math.isnan(report.welch_p(three_a, three_a.copy(), "lower"))
    assert report.welch_p(np.array([5.0, 5.0, 5.0]), np.array([7.0, 7.5, 8.0]), "lower") < 0.05
