"""Instance noise (Arjovsky and Bottou 2017) as a harness option for every method that
builds its critic through `problem.critic()`: the scheduled std reaches every critic
input, real and generated; sigma = 0 is the plain run; a resumed run and R replicas
draw exactly the noise of an uninterrupted sequential run."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch

from mcbench.errors import McbenchError
from mcbench.plugin.regularizers import NoisyCritic, Regularizers, noise_level
from mcbench.run.runner import (
    RunSpec,
    build,
    check_regularizers,
    code_identity,
    stale,
    train,
    train_group,
)
from mcbench.run.suite import build_suite

CPU = torch.device("cpu")


def spec(method: str = "gan", seed: int = 0, steps: int = 4, params=None, **regs) -> RunSpec:
    return RunSpec(
        method, "ring", seed, steps, 1, 200, params or {}, "common", Regularizers(**regs)
    )


def numbers(rows: list[dict]) -> dict[tuple[int, str], float | str]:
    """(step, metric) -> value without the timings; NaN (a metric undefined on few
    samples) as "nan", so that two runs compare equal where both have it."""
    return {
        (r["step"], r["metric"]): "nan" if math.isnan(r["value"]) else r["value"]
        for r in rows
        if r["metric"] != "step_time_ms"
    }


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_linear_schedule_falls_from_sigma0_to_zero_over_noise_steps():
    # sigma_t = sigma0 * max(0, 1 - (t - 1) / T): T = 10
    assert noise_level(0.5, "linear", 10, 1) == 0.5
    assert noise_level(0.5, "linear", 10, 6) == pytest.approx(0.25)
    assert noise_level(0.5, "linear", 10, 11) == 0.0
    assert noise_level(0.5, "linear", 10, 500) == 0.0
    assert noise_level(0.5, "constant", 10, 500) == 0.5


def test_zero_noise_is_the_plain_run_bit_for_bit_and_noise_changes_it():
    plain, zero = spec(), spec(instance_noise=0.0, noise_steps=3, noise_schedule="constant")
    assert zero.key() == plain.key() and "regularizers" not in zero.resolved()
    rows_a, m_a, _ = train(plain, CPU)
    rows_b, m_b, _ = train(zero, CPU)
    assert numbers(rows_a) == numbers(rows_b)
    assert same_state(m_a.G.state_dict(), m_b.G.state_dict())
    assert not isinstance(m_b.D, NoisyCritic)
    rows_c, _, _ = train(spec(instance_noise=0.3), CPU)  # the comparison can fail
    assert numbers(rows_c)[1, "loss_d"] != numbers(rows_a)[1, "loss_d"]


def captured(net: torch.nn.Module) -> list[tuple]:
    """The positional inputs of every call of `net`, recorded as they arrive."""
    seen: list[tuple] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(tuple(a.detach() for a in args)))
    return seen


@pytest.mark.parametrize("replicas", [False, True])
def test_the_critic_sees_noise_of_the_scheduled_std(replicas):
    s = [spec(seed=sd, instance_noise=0.5, noise_steps=4) for sd in (0, 1)]
    if replicas:
        from mcbench.run.runner import build_group

        method = build_group(s, CPU)[0]
    else:
        method = build(s[0], CPU)[0]
    inner = captured(method.D.net)
    n = 50_000  # 2n draws: the sample std's relative error is about 1 / sqrt(4 n) = 0.22%
    x = torch.zeros((2, n, 2) if replicas else (n, 2))
    for t, want in ((1, 0.5), (3, 0.25), (5, 0.0)):  # 0.5 * (1 - (t - 1) / 4)
        method.problem.begin_update(t)
        method.D(x)
        noise = inner[-1][0]
        if want == 0:
            assert torch.equal(noise, x)
            continue
        for part in noise if replicas else [noise]:
            assert part.std().item() == pytest.approx(want, rel=0.01)
            assert abs(part.mean().item()) < 0.01
    if replicas:  # each replica its own stream: the two draws are not the same numbers
        method.problem.begin_update(1)
        method.D(x)
        assert not torch.equal(inner[-1][0][0], inner[-1][0][1])


def test_every_critic_call_of_an_update_gets_that_updates_level():
    """Real and generated batches alike, D's steps and G's: noise of sigma_t, where t
    advances once per generator update, not per critic call."""
    method = build(spec(params={"d_steps": 2}, instance_noise=0.4, noise_steps=2), CPU)[0]
    outer, inner = captured(method.D), captured(method.D.net)
    for t, want in ((1, 0.4), (2, 0.2)):
        outer.clear(), inner.clear()
        method.problem.begin_update(t)
        method.step(method.problem.sample_real(method.problem.batch_size))
        assert len(outer) == len(inner) == 5  # 2 D steps x (real, fake) + G's step
        for (clean,), (noisy,) in zip(outer, inner, strict=True):
            added = noisy - clean  # 1,024 draws: the std's relative error is about 2%
            assert added.std().item() == pytest.approx(want, rel=0.1)


def test_pair_critics_get_noise_on_the_data_only_and_eval_mode_sees_clean_inputs():
    method = build(spec("ali", instance_noise=0.3), CPU)[0]
    inner = captured(method.D.net)
    x, z = torch.randn(64, 2), torch.randn(64, method.problem.latent_dim)
    method.D(x, z)
    noisy_x, same_z = inner[-1]
    assert torch.equal(same_z, z) and not torch.equal(noisy_x, x)
    before = method.D.get_extra_state()
    method.D.eval()
    method.D(x, z)
    assert torch.equal(inner[-1][0], x)
    assert torch.equal(method.D.get_extra_state(), before)  # the stream did not move


@pytest.mark.parametrize(
    "name", ["gan", "unrolled-gan", "pacgan", "ali", "veegan", "gan-si", "lbt-gan"]
)
def test_every_method_with_a_critic_trains_with_noise(name):
    method = build(spec(name, instance_noise=0.2), CPU)[0]
    assert isinstance(method.D, NoisyCritic)
    method.problem.begin_update(1)
    losses = method.step(method.problem.sample_real(method.problem.batch_size))
    assert all(torch.isfinite(v).all() for v in losses.values())


def test_a_resumed_run_draws_the_noise_of_an_uninterrupted_one():
    s = spec(params={"d_steps": 2}, instance_noise=0.3, noise_steps=3)
    plain_rows, plain, _ = train(s, CPU)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        train(s, CPU, checkpoint=path, checkpoint_every=2)  # leaves step 2's checkpoint
        rows, resumed, status = train(s, CPU, checkpoint=path)
    assert status["resumed_from"] == [2]
    # the runner advanced the level once per update: update 4 of T = 3 has none
    assert resumed.D.sigma.item() == plain.D.sigma.item() == 0.0
    assert numbers(rows) == numbers(plain_rows)
    assert same_state(resumed.D.state_dict(), plain.D.state_dict())  # streams included
    assert same_state(resumed.G.state_dict(), plain.G.state_dict())


def test_replicas_draw_each_seeds_sequential_noise():
    specs = [spec(seed=sd, instance_noise=0.3, noise_steps=3) for sd in (0, 1)]
    out, group = train_group(specs, CPU)
    for r, s in enumerate(specs):
        rows, alone, _ = train(s, CPU)
        got, want = numbers(out[r][0]), numbers(rows)
        assert got.keys() == want.keys()
        for k in (k for k in want if k[1].startswith("loss_")):
            assert isinstance(got[k], float)
            assert math.isclose(got[k], want[k], rel_tol=1e-4, abs_tol=1e-5), k
        # as many draws from the same stream: the states agree bit for bit
        assert torch.equal(group.D.get_extra_state()[r], alone.D.get_extra_state())


def test_methods_without_a_critic_are_refused_before_any_work():
    with pytest.raises(McbenchError, match="builds no critic") as err:
        check_regularizers(spec("lbt", instance_noise=0.1))
    assert "\n" not in str(err.value)
    raw = {
        "methods": ["gan", "lbt"],
        "datasets": ["ring"],
        "seeds": [0],
        "steps": 2,
        "eval_every": 1,
        "eval_samples": 100,
        "regularizers": {"instance_noise": 0.1},
    }
    with pytest.raises(McbenchError, match="'lbt' builds no critic"):
        build_suite("t", raw)
    check_regularizers(spec("lbt"))  # without noise there is nothing to refuse


@pytest.mark.parametrize(
    "bad",
    [
        {"instance_noise": -0.1},
        {"instance_noise": float("nan")},
        {"instance_noise": float("inf")},
        {"instance_noise": "loud"},
        {"noise_steps": 0},
        {"noise_steps": 2.5},
        {"noise_schedule": "cosine"},
        {"noise_level": 0.1},
    ],
)
def test_invalid_noise_options_are_one_line_errors(bad):
    with pytest.raises(McbenchError) as err:
        Regularizers.from_options(bad)
    assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


def test_noise_is_part_of_the_record_and_the_key():
    a = spec(instance_noise=0.1)
    assert a.resolved()["regularizers"] == {
        "instance_noise": 0.1,
        "noise_schedule": "linear",
        "noise_steps": a.steps,  # the default T: the run's length, recorded as a number
    }
    keys = {
        s.key()
        for s in (
            spec(),
            a,
            spec(instance_noise=0.2),
            spec(instance_noise=0.1, noise_steps=2),
            spec(instance_noise=0.1, noise_schedule="constant"),
        )
    }
    assert len(keys) == 5
    assert spec(instance_noise=0.1, noise_steps=a.steps).key() == a.key()


def test_a_change_to_the_regularizers_code_makes_only_their_runs_stale():
    assert "regularizers_source" not in code_identity("gan")  # plain runs: as before
    cfg = {
        "method": "gan",
        "params": {},
        "regularizers": {"instance_noise": 0.1},
        "code": code_identity("gan", {}, regularized=True),
    }
    assert stale(cfg) is None
    cfg["code"]["regularizers_source"] = "0" * 64  # written by other regularizers code
    assert "regularizers" in stale(cfg)
