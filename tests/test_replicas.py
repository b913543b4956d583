"""Vectorised replicas mean R separate runs: same weights, streams, losses and files."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from mcbench.methods.blocks.nets import DCGANFamily, DCGANSpec, MLPFamily
from mcbench.methods.gan import GAN
from mcbench.plugin.registry import MethodEntry, methods
from mcbench.plugin.replicas import LoopStacked, clip_grad_norm_, replica_builder, replica_state
from mcbench.run import store as res
from mcbench.run.graphs import capture_step, generators
from mcbench.run.runner import (
    RunSpec,
    build,
    build_group,
    groupable,
    load_method,
    run,
    run_group,
    train_group,
)
from mcbench.run.suite import default_jobs, group_runs

CPU = torch.device("cpu")


def specs(method="gan", seeds=(0, 1, 2), steps=50, eval_every=50, samples=1000, **params):
    return [RunSpec(method, "ring", s, steps, eval_every, samples, params) for s in seeds]


def states(seeds):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(torch.get_rng_state())
    return out


def test_stacked_mlps_are_the_plain_nets_side_by_side():
    fam = MLPFamily((2,), (16, 16), "tanh")
    nets = {}
    for name, make in [("g", lambda: fam.generator(5)), ("d", lambda: fam.critic(extra_dim=3))]:
        plain = []
        for st in states([1, 2, 3]):
            torch.set_rng_state(st)
            plain.append(make())
        stacked = replica_builder(make, states([1, 2, 3]), CPU)()
        nets[name] = (plain, stacked)
        for r, net in enumerate(plain):  # same init, and the slice loads into a plain net
            for k, v in net.state_dict().items():
                assert torch.equal(replica_state(stacked.state_dict(), r)[k], v)
    plain, stacked = nets["g"]
    z = torch.randn(3, 7, 5)
    torch.testing.assert_close(stacked(z), torch.stack([g(z[r]) for r, g in enumerate(plain)]))
    plain, stacked = nets["d"]
    x, e = torch.randn(3, 7, 2), torch.randn(3, 7, 3)
    want = torch.stack([d(x[r], e[r]) for r, d in enumerate(plain)])
    torch.testing.assert_close(stacked(x, e), want)


def test_conv_nets_with_batch_norm_stack_per_replica():
    fam = DCGANFamily((1, 8, 8), (32,), "relu", DCGANSpec(g_dense=(16,), g_channels=(4, 2)))
    plain = []
    for st in states([4, 5]):
        torch.set_rng_state(st)
        plain.append(fam.generator(6))
    stacked = replica_builder(lambda: fam.generator(6), states([4, 5]), CPU)()
    assert isinstance(stacked, LoopStacked)
    z = torch.randn(2, 10, 6)
    out = stacked(z)  # training mode: batch statistics and running-stat updates per replica
    torch.testing.assert_close(out, torch.stack([g(z[r]) for r, g in enumerate(plain)]))
    for r, g in enumerate(plain):
        got = replica_state(stacked.state_dict(), r)
        for k, v in g.state_dict().items():
            torch.testing.assert_close(got[k], v)
    stacked.eval()
    for g in plain:
        g.eval()
    torch.testing.assert_close(stacked(z), torch.stack([g(z[r]) for r, g in enumerate(plain)]))


def test_clipping_is_per_replica():
    w = torch.nn.Parameter(torch.zeros(3, 4, 2))
    b = torch.nn.Parameter(torch.zeros(3, 4))
    w.grad = torch.randn(3, 4, 2) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1)
    b.grad = torch.randn(3, 4)
    want = []
    for r in range(3):
        pw, pb = torch.nn.Parameter(w[r].detach()), torch.nn.Parameter(b[r].detach())
        pw.grad, pb.grad = w.grad[r].clone(), b.grad[r].clone()
        torch.nn.utils.clip_grad_norm_([pw, pb], 1.0)
        want.append((pw.grad, pb.grad))
    clip_grad_norm_([w, b], 1.0)
    for r in range(3):
        torch.testing.assert_close(w.grad[r], want[r][0])
        torch.testing.assert_close(b.grad[r], want[r][1])


def test_group_starts_where_each_sequential_run_starts():
    group, _, _ = build_group(specs(), CPU)
    for r, spec in enumerate(specs()):
        single, _, _ = build(spec, CPU)
        for name in ("G", "D"):
            want = getattr(single, name).state_dict()
            got = replica_state(getattr(group, name).state_dict(), r)
            assert all(torch.equal(got[k], v) for k, v in want.items())
    real = group.problem.sample_real(4)
    single, _, _ = build(specs()[1], CPU)
    assert torch.equal(real[1], single.problem.sample_real(4))


def test_replica_losses_equal_sequential_over_50_steps():
    """The issue's criterion, for the GAN (the other methods: their own test files and
    `python benchmarks/tools/replica_check.py`)."""
    group, _, _ = build_group(specs(), CPU)
    grouped = [group.step(group.problem.sample_real(512)) for _ in range(50)]
    for r, spec in enumerate(specs()):
        single, _, _ = build(spec, CPU)
        for t in range(50):
            losses = single.step(single.problem.sample_real(512))
            for k, v in losses.items():
                torch.testing.assert_close(grouped[t][k][r], v, rtol=1e-5, atol=1e-6)


def test_groupable_and_units():
    assert groupable(specs())
    assert not groupable(specs(seeds=(0,)))  # one run: nothing to group
    assert not groupable(specs(seeds=(0, 0)))
    assert not groupable([*specs(seeds=(0,)), *specs(seeds=(1,), steps=10)])
    units = group_runs([*specs(seeds=range(5)), *specs(seeds=(0, 1), steps=10)], replicas=2)
    assert [(len(u), u[0].steps) for u in units] == [(2, 50), (2, 50), (1, 50), (2, 10)]
    assert [len(u) for u in group_runs(specs(seeds=range(5)))] == [5]
    assert [len(u) for u in group_runs(specs(seeds=range(3)), replicas=1)] == [1, 1, 1]


class PlainOnly(GAN):
    name = "plain-only"
    vectorized = False


def test_methods_without_replicas_run_one_seed_at_a_time(monkeypatch):
    monkeypatch.setitem(methods(), "plain-only", MethodEntry("plain-only", PlainOnly))
    assert [len(u) for u in group_runs(specs("plain-only"))] == [1, 1, 1]
    with pytest.raises(ValueError, match="replicas"):
        train_group(specs("plain-only", steps=1, eval_every=1), CPU)


def test_default_jobs(monkeypatch):
    """One process per CPU core this process may run on (its affinity, not the machine's
    count); one on a GPU or with a Dask scheduler (its workers are the parallelism)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_jobs("cpu") == cores
    assert default_jobs(None) == (1 if torch.cuda.is_available() else cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert default_jobs("cpu") == 3
    assert default_jobs("cuda:0") == default_jobs("cuda") == 1
    assert default_jobs("cpu", scheduler="tcp://x:1") == 1


def numbers(run_dir):
    df = pd.read_csv(run_dir / "metrics.csv")
    return df[df.metric != "step_time_ms"].reset_index(drop=True)


def test_group_publishes_runs_like_sequential_ones(tmp_path):
    group = specs(steps=20, eval_every=10)
    outs = run_group(group, tmp_path / "g", CPU)
    assert [o["status"] for o in outs] == ["ok"] * 3 and all(o["replicas"] == 3 for o in outs)
    for spec in group:
        run(spec, tmp_path / "s", CPU)
        a = numbers(tmp_path / "g" / "runs" / spec.run_name())
        b = numbers(tmp_path / "s" / "runs" / spec.run_name())
        assert list(a.metric) == list(b.metric)
        loss = a.metric.str.startswith("loss_")
        torch.testing.assert_close(  # losses to float tolerance; metrics of samples
            torch.tensor(a.value[loss].values),
            torch.tensor(b.value[loss].values),
            rtol=1e-4,
            atol=0,
        )  # are drawn in other chunks, so they agree in distribution only
        m = load_method(tmp_path / "g" / "runs" / spec.run_name())  # a plain method
        assert m.problem.replicas is None
    again = run_group(group, tmp_path / "g", CPU)
    assert [o["skipped"] for o in again] == [True] * len(group)


class NaNOnReplica1(GAN):
    """Replica 1's losses turn NaN from its 3rd step; the others stay finite."""

    name = "nan-on-1"

    def __init__(self, problem, cfg) -> None:
        super().__init__(problem, cfg)
        self.calls = 0

    def step(self, real):
        self.calls += 1
        losses = super().step(real)
        if self.calls >= 3 and self.problem.replicas:
            mask = torch.zeros_like(losses["d"])
            mask[1] = float("nan")
            losses["d"] = losses["d"] + mask
        return losses


def test_one_diverging_replica_fails_alone(tmp_path, monkeypatch):
    monkeypatch.setitem(methods(), "nan-on-1", MethodEntry("nan-on-1", NaNOnReplica1))
    outs = run_group(specs("nan-on-1", steps=10, eval_every=5), tmp_path, CPU)
    assert [o["status"] for o in outs] == ["ok", "failed", "ok"]
    assert outs[1]["failed_step"] == 3
    cfgs = {res.read_config(d)["seed"]: res.read_config(d) for d in res.run_dirs(tmp_path)}
    assert cfgs[1]["status"] == "failed" and cfgs[0]["status"] == "ok"


class Killed(BaseException):
    pass


def test_killed_group_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    group = specs(steps=12, eval_every=4)
    run_group(group, tmp_path / "whole", CPU)
    original = GAN.step
    count = {"n": 0}

    def step(self, real):
        count["n"] += 1
        if count["n"] == 10:
            raise Killed
        return original(self, real)

    monkeypatch.setattr(GAN, "step", step)
    with pytest.raises(Killed):
        run_group(group, tmp_path / "resumed", CPU)
    monkeypatch.undo()
    outs = run_group(group, tmp_path / "resumed", CPU)
    assert [o["resumed_from"] for o in outs] == [[8]] * len(group)
    for spec in group:
        a = numbers(tmp_path / "whole" / "runs" / spec.run_name())
        b = numbers(tmp_path / "resumed" / "runs" / spec.run_name())
        pd.testing.assert_frame_equal(a.drop(columns="wall_time"), b.drop(columns="wall_time"))


def test_graph_capture_is_cuda_only_and_finds_every_stream():
    group, _, _ = build_group(specs(), CPU)
    assert capture_step(group, group.problem.sample_real(8)) is None
    assert generators(group) == group.problem.rng
    single, _, _ = build(specs()[0], CPU)
    assert generators(single) == [single.problem.rng]


@pytest.mark.gpu
def test_captured_steps_equal_eager_steps_on_cuda():
    dev = torch.device("cuda")
    for method in ("gan", "unrolled-gan", "lbt"):
        group = specs(method, steps=8, eval_every=8)
        eager, _ = train_group(group, dev)
        graphed, _ = train_group(group, dev, graphs=True)
        for (a, _), (b, sb) in zip(eager, graphed, strict=True):
            assert sb["execution"] == "graph", sb["execution"]
            la = [r["value"] for r in a if r["metric"].startswith("loss_")]
            lb = [r["value"] for r in b if r["metric"].startswith("loss_")]
            torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=1e-4, atol=1e-5)


def test_unrolled_adam_with_a_device_step_count_matches_the_int_one():
    """Capturable optimisers keep Adam's step count as a tensor (no host sync inside a
    CUDA graph); the differentiable Adam step computes the same update from it."""
    from mcbench.methods.blocks.unroll import AdamState, adam_step

    p = {"w": torch.randn(4, 3, dtype=torch.float64)}
    g = {"w": torch.randn(4, 3, dtype=torch.float64)}
    m = {"w": torch.randn(4, 3, dtype=torch.float64)}
    v = {"w": torch.rand(4, 3, dtype=torch.float64)}
    as_int = AdamState(7, m, v, 1e-3, (0.5, 0.999), 1e-8)
    as_tensor = AdamState(torch.tensor(7.0, dtype=torch.float64), m, v, 1e-3, (0.5, 0.999), 1e-8)
    (a, sa), (b, sb) = adam_step(p, g, as_int), adam_step(p, g, as_tensor)
    torch.testing.assert_close(a["w"], b["w"], rtol=1e-14, atol=0)
    assert sa.step == 8 and float(sb.step) == 8.0
