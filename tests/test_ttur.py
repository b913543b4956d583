"""TTUR (Heusel et al. 2017) as a harness option: a run's own discriminator and generator
learning rates reach the optimisers of any method built through the Problem, are
recorded in config.json and make another run key; runs without them keep their keys."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mcbench.cli import main
from mcbench.errors import McbenchError
from mcbench.plugin.protocol import MIXTURE2D
from mcbench.plugin.regularizers import Regularizers
from mcbench.run.runner import RunSpec, build, build_group, run, spec_of
from mcbench.run.suite import load_suite

CPU = torch.device("cpu")
LR_D, LR_G = 3e-4, 2e-5  # neither the protocol's 2-D rates (1e-4, 1e-3) nor each other


def spec(method: str = "gan", seed: int = 0, **regs) -> RunSpec:
    return RunSpec(method, "ring", seed, 2, 2, 100, {}, "common", Regularizers(**regs))


def rates(opt: torch.optim.Optimizer) -> set[float]:
    return {g["lr"] for g in opt.param_groups}


# name -> (the optimisers of the discriminator side, those of the generator side)
SIDES = {
    "gan": (["opt_d"], ["opt_g"]),
    "unrolled-gan": (["opt_d"], ["opt_g"]),
    "pacgan": (["opt_d"], ["opt_g"]),
    "ali": (["opt_d"], ["opt_ge"]),
    "veegan": (["opt_d"], ["opt_g", "opt_f"]),
    "lbt-gan": (["opt_d"], ["opt_g"]),
}


@pytest.mark.parametrize("name", list(SIDES))
def test_the_optimisers_get_the_runs_rates(name):
    d_side, g_side = SIDES[name]
    plain = build(spec(name), CPU)[0]
    assert all(rates(getattr(plain, o)) == {MIXTURE2D.lr_d} for o in d_side)
    assert all(rates(getattr(plain, o)) == {MIXTURE2D.lr_g} for o in g_side)
    tuned = build(spec(name, lr_d=LR_D, lr_g=LR_G), CPU)[0]
    assert all(rates(getattr(tuned, o)) == {LR_D} for o in d_side)
    assert all(rates(getattr(tuned, o)) == {LR_G} for o in g_side)
    assert tuned.problem.lr_d == LR_D and tuned.problem.lr_g == LR_G


def test_replicas_and_one_sided_overrides():
    group = build_group([spec(seed=s, lr_d=LR_D) for s in (0, 1)], CPU)[0]
    assert rates(group.opt_d) == {LR_D} and rates(group.opt_g) == {MIXTURE2D.lr_g}


def test_config_json_records_the_rates_and_reads_back_to_the_same_run(tmp_path):
    s = spec(lr_d=LR_D, lr_g=LR_G)
    cfg = run(s, tmp_path, CPU)
    assert cfg["status"] == "ok"
    saved = json.loads((tmp_path / "runs" / s.run_name() / "config.json").read_text())
    assert saved["regularizers"] == {"lr_d": LR_D, "lr_g": LR_G}
    assert saved["key"] == s.key() == spec_of(saved).key()
    assert "tensorboard" not in saved and not (tmp_path / "runs" / s.run_name() / "tb").exists()


def test_the_run_key_changes_with_the_rates_and_only_with_them():
    plain = spec()
    keys = {plain.key(), spec(lr_d=LR_D).key(), spec(lr_g=LR_G).key()}
    keys.add(spec(lr_d=LR_D, lr_g=LR_G).key())
    assert len(keys) == 4
    # the protocol's own rate is the plain run: its key and record
    same = spec(lr_d=MIXTURE2D.lr_d, lr_g=MIXTURE2D.lr_g)
    assert same.key() == plain.key() and "regularizers" not in same.resolved()


def test_runs_without_regularizers_keep_the_keys_they_had():
    s = spec()
    config = s.resolved()
    config["protocol"] = MIXTURE2D.key_dict()
    assert "regularizers" not in config  # the key's blob from before regularizers existed
    blob = json.dumps(config, sort_keys=True, default=str)
    assert s.key() == hashlib.sha256(blob.encode()).hexdigest()[:10]


@pytest.mark.parametrize("bad", [0, -1e-4, float("nan"), float("inf"), "fast", True])
@pytest.mark.parametrize("name", ["lr_d", "lr_g"])
def test_invalid_rates_are_one_line_errors(name, bad):
    with pytest.raises(McbenchError) as err:
        Regularizers.from_options({name: bad})
    assert "\n" not in str(err.value) and name in str(err.value)


def test_the_command_line_refuses_invalid_rates_in_one_line(tmp_path, capsys):
    argv = ["run", "-m", "gan", "-d", "ring", "--steps", "2", "--out", str(tmp_path)]
    for option in ("--lr-d=0", "--lr-g=nan", "--lr-d=-3e-4"):
        assert main([*argv, "--no-progress", option]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and option[2:6].replace("-", "_") in err
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_a_suite_sets_them_in_a_table_that_the_command_line_overrides(tmp_path):
    path = tmp_path / "ttur.toml"
    path.write_text(
        'methods = ["gan"]\ndatasets = ["ring"]\nseeds = [0, 1]\nsteps = 2\n'
        "eval_every = 1\neval_samples = 100\n\n[regularizers]\nlr_d = 4e-4\nlr_g = 1e-4\n"
    )
    suite = load_suite(str(path))
    assert {s.regularizers for s in suite.specs} == {Regularizers(lr_d=4e-4, lr_g=1e-4)}
    merged = load_suite(str(path), {"regularizers": {"lr_g": 2e-4, "instance_noise": 0.1}})
    want = Regularizers(lr_d=4e-4, lr_g=2e-4, instance_noise=0.1)
    assert {s.regularizers for s in merged.specs} == {want}
    path.write_text(path.read_text() + "lr_e = 1e-4\n")
    with pytest.raises(McbenchError, match="unknown option 'lr_e'"):
        load_suite(str(path))


def test_report_keeps_regularized_runs_apart_and_off_published_rows(tmp_path):
    """A gan run with its own rates is labelled with them, not averaged with plain gan,
    and never set beside a paper's number."""
    from mcbench.report.build import load_results, method_identity

    out = tmp_path / "res"
    for extra in ([], ["--lr-d", "4e-4"]):
        argv = ["run", "-m", "gan", "-d", "ring", "--steps", "2", "--eval-every", "2"]
        argv += ["--eval-samples", "500", "--no-progress", "--out", str(out), *extra]
        assert main(argv) == 0
    res = load_results([out])
    assert sorted(res.runs["method"]) == ["gan", "gan [lr_d 0.0004]"]
    assert [k[0] for k in method_identity(res)] == ["gan"]
