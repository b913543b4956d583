"""Protocol profiles: each paper's nets, optimiser and data as its code sets them, selected
by name (`--protocol`, a suite's `protocol`), recorded in config.json and in the run key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from mcbench.cli import main
from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.methods.blocks.nets import Maxout
from mcbench.plugin.protocol import (
    MIXTURE2D,
    PROFILE_FIELDS,
    PROFILES,
    get_protocol,
    make_problem,
)
from mcbench.plugin.registry import distinct_methods
from mcbench.report.build import _label_methods
from mcbench.run.runner import RunSpec, build, build_group
from mcbench.run.suite import build_suite, load_suite

CPU = torch.device("cpu")


def linears(net: nn.Module) -> list[nn.Linear]:
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def problem_of(profile: str, dataset: str = "ring-veegan", pack: int = 1, train_size=None):
    ds = get_dataset(dataset)
    proto = get_protocol(ds.family, profile, dataset)
    if train_size is not None:
        proto = dataclasses.replace(proto, train_size=train_size)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    d = torch.Generator().manual_seed(2)
    return make_problem(ds, proto, CPU, g, d, pack=pack)


# -- pacgan: fjxmlzn/PacGAN synthetic_data_experiments (config.py, pacgan_task.py) ----------


def test_pacgan_generator_is_4x400_relu_batchnorm_on_a_2d_latent():
    p = problem_of("pacgan")
    assert p.latent_dim == 2
    G = p.generator(p.latent_dim)
    lins = linears(G)
    assert [(m.in_features, m.out_features) for m in lins] == [
        (2, 400),
        (400, 400),
        (400, 400),
        (400, 400),
        (400, 2),
    ]
    assert [m.bias is not None for m in lins] == [False] * 4 + [True]  # BN's shift is the bias
    bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 4 and all(b.momentum == 0.05 for b in bns)
    assert sum(isinstance(m, nn.ReLU) for m in G.modules()) == 4
    assert not any(isinstance(m, (nn.Tanh, Maxout)) for m in G.modules())


@pytest.mark.parametrize("m", [1, 2, 4])
def test_pacgan_critic_is_3_maxout_layers_of_200_units_5_pieces(m):
    p = problem_of("pacgan")
    D = p.critic(in_shape=(2 * m,))
    maxouts = [x for x in D.modules() if isinstance(x, Maxout)]
    assert [(x.linear.in_features, x.out_dim, x.pieces) for x in maxouts] == [
        (2 * m, 200, 5),
        (200, 200, 5),
        (200, 200, 5),
    ]
    assert all(x.linear.out_features == 1000 for x in maxouts)
    assert (linears(D)[-1].in_features, linears(D)[-1].out_features) == (200, 1)
    assert D(torch.randn(7, 2 * m)).shape == (7, 1)


def test_maxout_takes_the_max_over_pieces():
    layer = Maxout(3, 4, 5)
    x = torch.randn(6, 3)
    h = layer.linear(x).reshape(6, 4, 5)
    assert torch.equal(layer(x), h.max(-1).values)


def test_pacgan_init_is_normal_002_with_zero_biases():
    p = problem_of("pacgan")
    for net in (p.generator(2), p.critic(in_shape=(4,))):
        for lin in linears(net):
            if lin.bias is not None:
                assert torch.count_nonzero(lin.bias) == 0
        w = torch.cat([lin.weight.flatten() for lin in linears(net)])
        assert abs(w.mean().item()) < 1e-3
        assert w.std().item() == pytest.approx(0.02, rel=0.02)
    bn = next(m for m in p.generator(2).modules() if isinstance(m, nn.BatchNorm1d))
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_pacgan_optimiser_batch_budget_and_evaluation():
    p = problem_of("pacgan")
    assert (p.lr_g, p.lr_d, p.betas) == (1e-4, 1e-4, (0.8, 0.999))
    opt = p.adam(nn.Linear(2, 2).parameters(), p.lr_g)
    assert opt.defaults["betas"] == (0.8, 0.999) and opt.defaults["lr"] == 1e-4
    proto = get_protocol("mixture2d", "pacgan")
    assert proto.batch_size == 100 and proto.batch_in_packs
    assert proto.train_size == 100_000
    assert proto.steps == 400 * 100_000 // 100  # 400 epochs
    assert proto.eval_samples == 2_500
    # a batch is 100 packs: 100 samples for the GAN, 100 * m for PacGAN-m
    assert problem_of("pacgan").batch_size == 100
    assert problem_of("pacgan", pack=3).batch_size == 300
    assert problem_of("common", "ring", pack=3).batch_size == 512  # common: samples
    assert (
        build(RunSpec("pacgan3", "ring-veegan", 0, 1, 1, 1, {}, "pacgan"), CPU)[
            0
        ].problem.batch_size
        == 300
    )


def test_fixed_training_set_is_drawn_once_and_batches_come_from_it():
    p = problem_of("pacgan", train_size=50)
    seen = torch.cat([p.sample_real(100) for _ in range(20)])
    assert len(torch.unique(seen, dim=0)) <= 50
    fresh = problem_of("common", "ring-veegan")
    assert len(torch.unique(torch.cat([fresh.sample_real(100) for _ in range(2)]), dim=0)) == 200
    # the same stream seed gives the same set (a resumed run rebuilds it)
    a = problem_of("pacgan", train_size=50).sample_real(10)
    b = problem_of("pacgan", train_size=50).sample_real(10)
    assert torch.equal(a, b)


def test_pack_counts_the_training_set_in_packs():
    p = problem_of("pacgan", pack=2, train_size=30)
    seen = torch.cat([p.sample_real(200) for _ in range(10)])
    assert 30 < len(torch.unique(seen, dim=0)) <= 60


# -- lbt: taufikxu/Learning-By-Teaching 2-D code --------------------------------------------


def test_lbt_nets_are_2x128_tanh_glorot_uniform_zero_bias():
    p = problem_of("lbt", "ring")
    assert p.latent_dim == 256
    nets = {
        "G": p.generator(p.latent_dim),
        "D": p.critic(),
        "E": p.encoder(out_dim=32),
        "mlp": p.mlp(2, 64),
    }
    for name, net in nets.items():
        lins = linears(net)
        assert [m.out_features for m in lins[:-1]] == [128, 128], name
        assert sum(isinstance(m, nn.Tanh) for m in net.modules()) == 2, name
        for lin in lins:
            bound = math.sqrt(6 / (lin.in_features + lin.out_features))
            w = lin.weight
            assert w.abs().max().item() <= bound, name
            if w.numel() >= 1000:  # uniform on [-bound, bound]: max near it, var bound^2/3
                assert w.abs().max().item() > 0.95 * bound, name
                assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.1), name
            assert torch.count_nonzero(lin.bias) == 0, name


def test_lbt_optimiser_and_per_dataset_batch_and_budget():
    ring = get_protocol("mixture2d", "lbt", "ring")
    grid = get_protocol("mixture2d", "lbt", "grid")
    assert (ring.lr_g, ring.lr_d, ring.betas, ring.batch_size) == (1e-3, 1e-4, (0.5, 0.999), 512)
    assert (ring.steps, ring.eval_samples) == (900_000, 500_000)
    assert (grid.batch_size, grid.steps) == (2048, 2_000_000)
    assert ring.init == grid.init == "glorot"


def test_unrolled_profile_is_the_demo_orthogonal_gain_14():
    p = problem_of("unrolled", "ring-veegan")
    proto = get_protocol("mixture2d", "unrolled")
    assert (proto.steps, proto.batch_size, proto.latent_dim) == (25_000, 512, 256)
    lin = linears(p.critic())[1]  # 128 x 128
    eye = lin.weight @ lin.weight.T
    assert torch.allclose(eye, 1.4**2 * torch.eye(128), atol=1e-4)
    assert torch.count_nonzero(lin.bias) == 0


def test_common_profile_is_unchanged():
    p = problem_of("common", "ring")
    assert get_protocol("mixture2d") is MIXTURE2D
    assert MIXTURE2D.name == "common" and MIXTURE2D.init == "torch"
    G = p.generator(p.latent_dim)
    assert not any(isinstance(m, (nn.BatchNorm1d, Maxout)) for m in G.modules())
    assert [m.out_features for m in linears(G)] == [128, 128, 2]


# -- selection, config.json and run key ------------------------------------------------------


def test_common_runs_keep_their_keys_and_other_profiles_make_other_keys():
    spec = RunSpec("gan", "ring", 0, 10, 5, 100)
    legacy = spec.resolved()
    legacy["protocol"] = {
        k: v for k, v in MIXTURE2D.as_dict().items() if k not in PROFILE_FIELDS
    }  # the protocol dict from before profiles existed
    blob = json.dumps(legacy, sort_keys=True, default=str)
    assert spec.key() == hashlib.sha256(blob.encode()).hexdigest()[:10]
    keys = {RunSpec("gan", "ring", 0, 10, 5, 100, {}, p).key() for p in PROFILES}
    assert len(keys) == len(PROFILES)
    assert spec.resolved()["protocol"]["name"] == "common"


def test_unknown_profile_is_a_one_line_error(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["run", "-m", "gan", "-d", "ring", "--protocol", "nosuch", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0] == (f"mcbench: error: unknown protocol 'nosuch'; choices: {', '.join(PROFILES)}")
    assert not out.exists()


def test_lbt_profile_on_stacked_mnist_is_common_nets_with_glorot_init():
    """LBT-GAN_smnist.py's DCGAN (the common Stacked MNIST nets) under TensorFlow's
    default initialisation: every conv / dense weight Glorot-uniform, biases zero."""
    common = get_protocol("stacked-mnist")
    lbt = get_protocol("stacked-mnist", "lbt")
    assert dataclasses.replace(lbt, name="common", init="torch", source=common.source) == common
    assert get_protocol("stacked-mnist-d0.25", "lbt").d_ratio == 0.25
    p = problem_of("lbt", "stacked-mnist")
    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    for name, net in {"G": p.generator(p.latent_dim), "D": p.critic(), "mlp": p.mlp(8, 4)}.items():
        for m in (m for m in net.modules() if isinstance(m, layers)):
            w = m.weight
            field = w[0][0].numel()
            fan_in, fan_out = w.shape[1] * field, w.shape[0] * field
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert w.abs().max().item() <= bound * (1 + 1e-6), name
            if w.numel() >= 2000:
                assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.1), name
            assert m.bias is None or torch.count_nonzero(m.bias) == 0, name


@pytest.mark.parametrize("suite", ["stacked", "stacked-quick", "lbt-table1"])
def test_stacked_suites_run_lbt_gan_as_the_authors_code(suite):
    (spec,) = {s.method: s for s in load_suite(suite).specs if s.method == "lbt-gan"}.values()
    assert spec.params["preset"] == "authors-code"


def test_profile_without_the_family_is_an_error():
    with pytest.raises(McbenchError, match="no 'pacgan' protocol for dataset family"):
        get_protocol("stacked-mnist", "pacgan")


def test_protocol_is_recorded_in_config_json(tmp_path):
    out = tmp_path / "out"
    argv = ["run", "-m", "gan", "-d", "ring-veegan", "--protocol", "pacgan", "--steps", "2"]
    argv += ["--eval-every", "2", "--eval-samples", "200", "--jobs", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    (config,) = [json.loads(p.read_text()) for p in out.glob("runs/*/config.json")]
    proto = get_protocol("mixture2d", "pacgan")
    assert config["protocol"]["name"] == "pacgan"
    assert config["protocol"] == json.loads(json.dumps(proto.as_dict()))
    spec = RunSpec("gan", "ring-veegan", 0, 2, 2, 200, {}, "pacgan")
    assert config["key"] == spec.key() != dataclasses.replace(spec, protocol="common").key()


def test_suite_protocol_field(tmp_path):
    raw = {
        "methods": ["gan"],
        "datasets": ["ring-veegan"],
        "seeds": [0, 1],
        "steps": 4,
        "eval_every": 2,
        "eval_samples": 100,
    }
    assert {s.protocol for s in build_suite("t", raw).specs} == {"common"}
    assert {s.protocol for s in build_suite("t", {**raw, "protocol": "pacgan"}).specs} == {"pacgan"}
    with pytest.raises(McbenchError, match="unknown protocol 'nosuch'; choices: common"):
        build_suite("t", {**raw, "protocol": "nosuch"})


@pytest.mark.parametrize(
    ("suite", "profile"),
    [
        ("pacgan-table1", "pacgan"),
        ("pacgan-table1-common", "common"),
        ("veegan-table1", "common"),
        ("lbt-fig2", "lbt"),
        ("lbt-table1", "lbt"),
        ("pacgan-table2", "common"),
        ("pacgan-table3", "common"),
    ],
)
def test_reproduction_suites_load(suite, profile):
    s = load_suite(suite)
    assert {spec.protocol for spec in s.specs} == {profile}
    assert "h" in s.description  # says the hours it would take


def test_pacgan_table1_is_the_papers_grid():
    s = load_suite("pacgan-table1")
    assert {x.method for x in s.specs} == {"gan", "pacgan2", "pacgan3", "pacgan4", "ali"}
    assert {x.dataset for x in s.specs} == {"ring-veegan", "grid-veegan"}
    assert {x.seed for x in s.specs} == set(range(10))
    assert {(x.steps, x.eval_samples) for x in s.specs} == {(400_000, 2_500)}


# -- every method under every profile --------------------------------------------------------


@pytest.mark.parametrize("profile", ["pacgan", "lbt", "unrolled"])
def test_every_method_takes_a_step_under_each_profile(profile):
    for method in distinct_methods():
        spec = RunSpec(method, "ring-veegan", 0, 1, 1, 1, {}, profile)
        m, _, _ = build(spec, CPU)
        losses = m.step(m.problem.sample_real(m.problem.batch_size))
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in losses.values()), method
        assert m.sample(5).shape == (5, 2), method


def test_replicas_under_the_pacgan_profile_match_sequential_runs():
    specs = [RunSpec("pacgan2", "ring-veegan", s, 1, 1, 1, {}, "pacgan") for s in (0, 1)]
    group, _, _ = build_group(specs, CPU)
    group.step(group.problem.sample_real(group.problem.batch_size))
    together = group.sample(50)
    for r, spec in enumerate(specs):
        single, _, _ = build(spec, CPU)
        single.step(single.problem.sample_real(single.problem.batch_size))
        torch.testing.assert_close(together[r], single.sample(50), rtol=1e-4, atol=1e-5)


# -- reports ---------------------------------------------------------------------------------


def test_report_labels_carry_the_protocol_only_where_one_method_has_several():
    runs = pd.DataFrame(
        {
            "run": ["a", "b", "c", "d"],
            "selector": ["gan", "gan", "pacgan2", "pacgan2"],
            "dataset": ["ring-veegan"] * 4,
            "steps": [100] * 4,
            "protocol": ["pacgan", "common", "pacgan", "pacgan"],
        }
    )
    rows = pd.DataFrame({"run": ["a", "b", "c", "d"]})
    _label_methods(rows, runs)
    assert list(runs["method"]) == ["gan [pacgan]", "gan [common]", "pacgan2", "pacgan2"]
    assert list(rows["method"]) == list(runs["method"])
