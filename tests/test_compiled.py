"""`--compile`: a method's functional update is its `step` (to rounding), the harness
writes its results back into the live nets, optimisers and streams, and refuses what it
cannot compile. torch.compile itself is exercised with the "eager" backend (dynamo's
trace of the whole function, fullgraph, without TorchInductor's minutes of C++ codegen);
`benchmarks/tools/perf.py --compile` times the real thing."""

from __future__ import annotations

import pytest
import torch

from mcbench.errors import McbenchError
from mcbench.plugin.method import compilable
from mcbench.plugin.registry import methods
from mcbench.run import compiled
from mcbench.run.compiled import CompiledStep
from mcbench.run.runner import RunSpec, build, build_group, check_compiled, train
from mcbench.run.seeds import generators

CPU = torch.device("cpu")
SELECTORS = [
    "gan",
    "gan[d_steps=2]",
    "lbt",
    "lbt[preset=authors-code]",
    "lbt[clip_norm=0]",
    "unrolled-gan",
    "unrolled-gan[g_loss=nonsaturating,second_moment_grad=false,K=2]",
    "lbt-gan",
    "lbt-gan[preset=authors-code,d_steps=2]",
    "lbt-gan[fresh_samples=true,d_steps=2,K=2,M=3]",
]


def _state(m) -> list[torch.Tensor]:
    out = [p.detach() for net in m.modules().values() for p in net.parameters()]
    for opt in m.optimizers().values():
        for st in opt.state.values():
            out += [st["exp_avg"], st["exp_avg_sq"], st["step"].double().reshape(1)]
    return out


def _two(selector: str, seeds: list[int]):
    specs = [RunSpec(selector, "ring", s, 1, 1, 1) for s in seeds]
    make = (lambda: build(specs[0], CPU)) if len(seeds) == 1 else (lambda: build_group(specs, CPU))
    return make(), make()


CASES = [(s, [0]) for s in SELECTORS] + [
    ("gan", [0, 1]),
    ("lbt[preset=authors-code]", [0, 1]),
    ("lbt-gan[K=2,M=2]", [0, 1]),
]


@pytest.mark.parametrize(("selector", "seeds"), CASES, ids=[f"{s}-{len(r)}" for s, r in CASES])
def test_functional_update_is_step(selector, seeds, float64):
    """In float64, so Adam's normalisation of near-zero gradients cannot magnify the
    rounding of two orderings of the same arithmetic into a visible difference."""
    (eager, ds, rng_a), (func, _, _) = _two(selector, seeds)
    step = CompiledStep(func, backend="none")
    n = eager.problem.batch_size
    for _ in range(2):
        if len(seeds) == 1:
            real = ds.sample(n, rng_a, CPU)
        else:
            real = torch.stack([ds.sample(n, g, CPU) for g in rng_a])
        want = eager.step(real)
        got = step(real)
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12)
    for a, b in zip(_state(func), _state(eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for a, b in zip(generators(func), generators(eager), strict=True):  # same draws
        assert torch.equal(a.get_state(), b.get_state())


def test_compiles_whole_and_writes_back():
    """dynamo traces the whole LBT update in one graph (fullgraph: a graph break would
    raise), the first call compiles on copies, and the update changes the live nets."""
    m, ds, rng = build(RunSpec("lbt[K=2,M=2]", "ring", 0, 1, 1, 1), CPU)  # small, quick trace
    step = CompiledStep(m, backend="eager")
    real = ds.sample(m.problem.batch_size, rng, CPU)
    before = [t.clone() for t in _state(m)]
    streams = [g.get_state() for g in generators(m)]
    step.prepare(real)
    assert all(torch.equal(a, b) for a, b in zip(_state(m), before, strict=True))
    assert all(torch.equal(g.get_state(), s) for g, s in zip(generators(m), streams, strict=True))
    losses = step(real)
    assert set(losses) == {"elbo_fake", "elbo_real_unrolled"}
    assert not torch.equal(next(m.G.parameters()).detach(), before[0])
    assert int(m.opt_e.state[next(m.E.parameters())]["step"]) == m.cfg.M


def test_guards_are_skipped_only_for_the_shapes_compiled_for(float64):
    """The compiled GAN update runs without dynamo's guards on the batch and noise shapes
    it was compiled for; a batch of another size is checked, recompiled and right."""
    (ref, ds, rng), (m, _, _) = _two("gan", [0])
    step = CompiledStep(m, backend="eager")
    n = m.problem.batch_size
    for size in (n, n, n // 2):
        real = ds.sample(size, rng, CPU)
        if step._compiled_for is None:
            step.prepare(real)
            assert step._compiled_for[0] == (real.shape, real.dtype, real.device)
        want, got = ref.step(real), step(real)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12)
    for a, b in zip(_state(m), _state(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_compiled_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "none")  # the write-back and streams, fast
    spec = RunSpec("gan", "ring", 0, 6, 3, 500, compiled=True)
    whole, _, _ = train(spec, CPU)
    ck = tmp_path / "ck"
    train(RunSpec("gan", "ring", 0, 3, 3, 500, compiled=True), CPU, checkpoint=ck)
    resumed, _, status = train(spec, CPU, checkpoint=ck)
    assert status["execution"].startswith("compiled")

    def numbers(rows):
        return [(r["step"], r["metric"], r["value"]) for r in rows if r["metric"] != "step_time_ms"]

    assert numbers(resumed) == numbers(whole)
    assert any(m == "modes_covered" for _, m, _ in numbers(whole))


def test_configuration_of_its_own():
    eager, comp = (
        RunSpec("gan", "ring", 0, 5, 5, 5),
        RunSpec("gan", "ring", 0, 5, 5, 5, compiled=True),
    )
    assert "compiled" not in eager.resolved()  # eager runs keep their keys
    assert comp.resolved()["compiled"] is True
    assert comp.key() != eager.key()


def test_refusals():
    names = {n for n, e in methods().items() if compilable(e.cls)}
    assert names == {"gan", "lbt", "lbt-gan", "unrolled-gan"}
    assert not compilable(methods()["lbt-implicit"].cls)  # LBT's function unrolls; it solves
    with pytest.raises(McbenchError, match="no functional update"):
        check_compiled(RunSpec("pacgan", "ring", 0, 5, 5, 5, compiled=True))
    with pytest.raises(McbenchError, match="warmup"):
        check_compiled(RunSpec("lbt-gan[warmup=3]", "ring", 0, 5, 5, 5, compiled=True))
    with pytest.raises(McbenchError, match="alternating"):
        check_compiled(RunSpec("gan[simultaneous=true]", "ring", 0, 5, 5, 5, compiled=True))
    m, _, _ = build(RunSpec("veegan", "ring", 0, 5, 5, 5), CPU)
    with pytest.raises(McbenchError, match="no functional update"):
        CompiledStep(m)


def test_a_finished_compiled_run_is_found_again(tmp_path, monkeypatch):
    """The published config.json reads back as the compiled spec (same key), so a rerun
    skips it, while the eager run of the same configuration is a different run."""
    from mcbench.run.runner import run, spec_of
    from mcbench.run.store import read_config

    monkeypatch.setattr(compiled, "BACKEND", "none")
    spec = RunSpec("gan", "ring", 0, 2, 2, 500, compiled=True)
    run(spec, tmp_path)
    config = read_config(tmp_path / "runs" / spec.run_name())
    assert config["compiled"] is True and config["execution"].startswith("compiled")
    assert spec_of(config) == spec


def test_cli_refuses_what_it_cannot_compile_in_one_line(tmp_path, capsys):
    from mcbench.cli import main

    out = tmp_path / "out"
    argv = ["run", "-m", "gan", "-m", "pacgan", "-d", "ring", "--steps", "2", "--compile"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mcbench: error: method 'pacgan' has no functional update, so it cannot run with "
        "--compile (`mcbench list` marks the methods that can)"
    ]
    assert not out.exists()  # refused before any work


def test_a_report_never_averages_compiled_with_eager_runs(tmp_path):
    """The committed compiled quick runs beside the eager ones: two labelled rows."""
    import shutil
    from pathlib import Path

    from mcbench.report.build import load_results

    ref = Path(__file__).resolve().parents[1] / "results" / "reference"
    mixed = tmp_path / "mixed" / "runs"
    mixed.mkdir(parents=True)
    for sub in ("quick", "quick_compiled"):
        for d in (ref / sub / "runs").iterdir():
            if d.name.startswith(("gan-ring", "lbt-ring")):
                shutil.copytree(d, mixed / d.name)
    runs = load_results([tmp_path / "mixed"]).runs
    counts = runs.groupby("method").size().to_dict()
    assert counts == {"gan": 3, "gan [compiled]": 3, "lbt": 3, "lbt [compiled]": 3}
    alone = load_results([ref / "quick_compiled"]).runs  # nothing to tell apart
    assert set(alone["method"]) == {"gan", "lbt"}


def test_a_failed_compile_fails_the_run_with_one_line(monkeypatch):
    """Where torch.compile cannot work (no C++ compiler, say), the run fails with a
    one-line reason naming the way out, and nothing is trained."""

    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(details)")

    monkeypatch.setattr(CompiledStep, "prepare", broken)
    rows, _, status = train(RunSpec("gan", "ring", 0, 4, 2, 500, compiled=True), CPU)
    assert status["status"] == "failed"
    assert "compiling the update failed" in status["reason"]
    assert "\n" not in status["reason"] and "without --compile" in status["reason"]
    assert not [r for r in rows if r["metric"] == "modes_covered"]  # never evaluated


def test_compiled_code_is_kept_outside_tmp(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # so that teardown restores it
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ours = str(tmp_path / "mcbench" / "torchinductor")
    assert compiled.keep_compiled_code() == ours
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # set by its import
    assert compiled.keep_compiled_code() == ours
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")  # the user's wins
    assert compiled.keep_compiled_code() == "/somewhere/else"
