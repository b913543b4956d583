"""The training loop's parts (mcbench.run.runner.train_group), each checked on its own:
divergence watch, evaluator, checkpointer, stepper (graph capture) and ledger."""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mcbench.run.checkpoint import Checkpointer
from mcbench.run.divergence import DivergenceWatch
from mcbench.run.evaluation import Evaluator, per_replica
from mcbench.run.graphs import Stepper
from mcbench.run.ledger import Ledger, Progress
from mcbench.run.runner import RunSpec, build, build_group

CPU = torch.device("cpu")
NAN, INF = float("nan"), float("inf")


def specs(seeds=(0, 1, 2), method="gan", steps=6, eval_every=3, samples=200):
    return [RunSpec(method, "ring", s, steps, eval_every, samples) for s in seeds]


class ValueReads(TorchDispatchMode):
    """Counts ops that read a tensor's value on the host (.item(), float(t), bool(t))."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


# -- divergence watch -------------------------------------------------------------------


def test_divergence_watch_keeps_each_replicas_first_bad_step_without_host_reads():
    watch = DivergenceWatch(3, CPU)
    steps = {
        1: {"d": torch.tensor([1.0, 2.0, 3.0]), "g": torch.tensor([0.0, 0.0, 0.0])},
        2: {"d": torch.tensor([1.0, NAN, 3.0]), "g": torch.tensor([0.0, 0.0, 0.0])},
        3: {"d": torch.tensor([1.0, 1.0, 3.0]), "g": torch.tensor([0.0, 0.0, -INF])},
        4: {"d": torch.tensor([NAN, NAN, NAN]), "g": torch.tensor([0.0, 0.0, 0.0])},
    }
    with ValueReads() as reads:
        for step, losses in steps.items():
            assert watch.observe(step, losses) is None
    assert reads.count == 0  # nothing is read on the host while training
    # replica 1 recovered at step 3, but its first bad step stays 2
    assert watch.first_bad() == {0: 4, 1: 2, 2: 3}


def test_one_seed_losses_are_the_r_equals_1_case():
    watch = DivergenceWatch(1, CPU)
    watch.observe(1, {"d": torch.tensor(0.5), "g": 1.0})  # () tensors and plain floats
    assert watch.first_bad() == {}
    watch.observe(2, {"d": torch.tensor(INF), "g": 1.0})
    watch.observe(3, {"d": torch.tensor(NAN), "g": 1.0})
    assert watch.first_bad() == {0: 2}
    assert per_replica(torch.tensor(0.1), 1) == [float(torch.tensor(0.1))]
    assert per_replica(0.1, 1) == [0.1]  # a float stays exactly itself (no float32 trip)


# -- ledger -----------------------------------------------------------------------------


def test_ledger_fails_a_replica_once_and_reports_each_on_its_own():
    prog = Progress()
    ledger = Ledger(specs(), prog)
    ledger.record(0, 3, "kl", 0.5)
    ledger.record(2, 3, "kl", 0.7)
    ledger.fail(1, 2, "first")
    ledger.fail(1, 3, "second")  # already failed: the first failure stands
    assert ledger.alive == [0, 2] and prog.failed == {1: {"failed_step": 2, "reason": "first"}}
    (rows0, st0), (rows1, st1), _ = ledger.outcomes("eager")
    assert [r["value"] for r in rows0] == [0.5] and rows1 == []
    assert st0["status"] == "ok" and st1["status"] == "failed" and st1["failed_step"] == 2
    assert st0["replicas"] == 3 and st0["execution"] == "eager"
    again = Ledger(specs(), prog)  # as on resume: the failed replica stays failed
    assert again.alive == [0, 2] and again.latest[0] == {"kl": 0.5}


def test_step_time_is_per_update_and_per_replica_since_the_last_call():
    prog = Progress()
    for seconds in (0.1, 0.3):
        prog.timed(seconds)
    assert prog.take_step_time_ms(2) == pytest.approx(100.0)
    prog.timed(0.5)
    assert prog.take_step_time_ms(1) == pytest.approx(500.0)
    assert prog.train_time == pytest.approx(0.9)


# -- evaluator --------------------------------------------------------------------------


class FakeReplicas:
    """Two replicas; replica 1's generator outputs NaN."""

    def __init__(self) -> None:
        self.problem = SimpleNamespace(replicas=2)

    def sample(self, n, rng):
        assert isinstance(rng, list) and len(rng) == 2
        x = torch.stack([torch.randn(n, 2, generator=g) for g in rng])
        x[1, 0, 0] = NAN
        return x

    def diagnostics(self):
        return {"elbo": torch.tensor([-1.5, -2.5])}


class MeanMetric:
    def evaluate(self, x):
        assert x.shape == (50, 2)
        return {"mean": float(x.mean())}


def test_evaluator_records_rows_per_replica_and_fails_one_with_nan_samples():
    prog = Progress()
    prog.timed(0.2)
    ledger = Ledger(specs(seeds=(0, 1)), prog)
    evaluate = Evaluator(FakeReplicas(), MeanMetric(), 50, CPU)
    evaluate(3, {"d": torch.tensor([0.25, 0.5])}, ledger)
    assert ledger.alive == [0]
    assert prog.failed[1]["failed_step"] == 3 and "NaN" in prog.failed[1]["reason"]
    (rows0, _), (rows1, _) = ledger.outcomes("eager")
    assert [r["metric"] for r in rows0] == ["loss_d", "step_time_ms", "mean", "elbo"]
    assert rows0[0]["value"] == 0.25 and rows0[1]["value"] == pytest.approx(100.0)
    assert rows0[3]["value"] == -1.5 and all(r["step"] == 3 for r in rows0)
    assert [r["metric"] for r in rows1] == ["loss_d", "step_time_ms"]  # losses, no metrics
    assert ledger.final_samples[0].shape == (50, 2) and ledger.final_samples[1] is None
    # a fresh evaluation stream per step and replica: samples of the same step are equal
    assert torch.equal(evaluate.samples(3, [0, 1])[0], evaluate.samples(3, [0, 1])[0])
    assert not torch.equal(evaluate.samples(3, [0, 1])[0], evaluate.samples(6, [0, 1])[0])


def test_evaluator_views_a_plain_method_as_one_replica():
    method, ds, _ = build(specs(seeds=(4,))[0], CPU)
    ledger = Ledger(specs(seeds=(4,)), Progress(interval_steps=1, interval_time=0.01))
    Evaluator(method, ds, 200, CPU)(3, {"d": torch.tensor(0.5)}, ledger)
    metrics = [r["metric"] for r in ledger.outcomes("eager")[0][0]]
    assert metrics[:2] == ["loss_d", "step_time_ms"] and len(metrics) > 2
    assert ledger.final_samples[0].shape == (200, 2)


# -- checkpointer -----------------------------------------------------------------------


def states_of(method, data_rng):
    return copy.deepcopy(
        (
            method.state_dict(),
            method.extra_state(),
            [g.get_state() for g in method.problem.rng],
            [g.get_state() for g in data_rng],
        )
    )


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def test_checkpointer_round_trips_progress_streams_and_method_state(tmp_path):
    group = specs(seeds=(0, 1), method="unrolled-gan")
    method, _, data_rng = build_group(group, CPU)
    for _ in range(2):
        method.step(method.problem.sample_real(32))
    saver = Checkpointer(tmp_path / "ck.pt", "key-a", every=2, device=CPU)
    assert saver.due(2, 6) and not saver.due(3, 6) and not saver.due(6, 6)
    prog = Progress(rows=[{"seed": 0, "step": 2, "metric": "kl", "value": 0.5}])
    prog.failed[1] = {"failed_step": 1, "reason": "test"}
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    saver.save(2, method, data_rng, prog)
    saved = states_of(method, data_rng)
    host = (torch.rand(3), np.random.rand(), random.random())  # what comes next
    following = method.step(method.problem.sample_real(32))

    fresh, _, fresh_data = build_group(group, CPU)  # other weights, streams and globals
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    back = saver.restore(fresh, fresh_data)
    assert back == prog and back.step == 2
    assert_same(states_of(fresh, fresh_data), saved)
    assert_same((torch.rand(3), np.random.rand(), random.random()), host)
    assert_same(fresh.step(fresh.problem.sample_real(32)), following)


def test_checkpointer_refuses_another_configuration_and_a_missing_file(tmp_path):
    method, _, data_rng = build(specs(seeds=(0,))[0], CPU)
    assert Checkpointer(tmp_path / "none.pt", "k", 2, CPU).restore(method, data_rng) is None
    assert Checkpointer(None, "k", 2, CPU).restore(method, data_rng) is None
    assert not Checkpointer(None, "k", 2, CPU).due(2, 6)
    Checkpointer(tmp_path / "ck.pt", "key-a", 2, CPU).save(2, method, data_rng, Progress())
    with pytest.raises(ValueError, match="another configuration"):
        Checkpointer(tmp_path / "ck.pt", "key-b", 2, CPU).restore(method, data_rng)


# -- stepper (graph capture) ------------------------------------------------------------


class Counting:
    """A method whose update counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def step(self, real):
        self.calls += 1
        return {"d": real.sum()}


def test_stepper_is_eager_and_timed_without_graphs():
    method = Counting()
    update = Stepper(method, CPU)
    losses, seconds = update(torch.ones(3))
    assert float(losses["d"]) == 3.0 and seconds >= 0 and method.calls == 1
    assert update.execution == "eager"


def test_graph_capture_after_warmup_replays_the_captured_step():
    method, replays, captured_on = Counting(), [], []

    def capture(m, real):
        captured_on.append(m.calls)  # after the warm-up updates
        return lambda batch: replays.append(batch) or {"d": batch.sum()}

    update = Stepper(method, CPU, True, warmup=2, capture=capture, warm=lambda m: m.step)
    for _ in range(4):
        update(torch.ones(2))
    assert captured_on == [2] and method.calls == 2 and len(replays) == 2
    assert update.execution == "graph"


def test_failed_capture_falls_back_to_eager_and_says_why(capsys):
    method = Counting()

    def capture(m, real):
        raise RuntimeError("operation not permitted when stream is capturing")

    update = Stepper(
        method, CPU, True, warmup=1, capture=capture, warm=lambda m: m.step, name="run-x"
    )
    for _ in range(3):
        losses, _ = update(torch.ones(2))
    assert method.calls == 3 and float(losses["d"]) == 2.0
    assert update.execution == (
        "eager (capture failed: RuntimeError: operation not permitted when stream is capturing)"
    )
    assert "run-x: CUDA graph capture failed" in capsys.readouterr().err
