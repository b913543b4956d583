"""LBT: Learning by Teaching (Du, Xu, Li, Zhu, Zhang; ICLR 2019 submission, Algorithm 1).

An implicit generator G teaches an explicit density estimator E (a VAE): E fits G's
samples, and G is trained so that E, after learning from them, explains the real data.

Per generator update:
  1. M estimator updates:  phi <- Adam(phi, grad -ELBO(G(z); phi)),  fresh z each
  2. K unrolled estimator steps from phi on fresh samples G(z_k), with E's own Adam
     update (moments carried, second moment not differentiated): phi_K(theta)
  3. generator update:     theta <- Adam(theta, grad_theta -ELBO(x_real; phi_K(theta)))
     (global-norm clipped in the authors' code)

Presets: `authors-code` (the authors' code, taufikxu/Learning-By-Teaching) and `paper`
(K=5, M=15, Adam default betas, no clipping). In the authors' code an "estimator update"
is itself K Adam steps at 3x the estimator lr, so its 2 updates are M = 2K = 10 single
Adam steps here; the unrolled steps run at 1x.

Class defaults are the 2-D ring settings of the authors' code as this harness first ran
them (committed reference runs use them). `authors-code` also turns on, everywhere:
  adam_eps_inside  their Adam (unrolled and estimator) is m / sqrt(v + 1e-8)
                   (`compute_est_updated_with_Adam`, LBT_toy.py, LBT-GAN_smnist.py)
  per_dataset      their per-dataset settings (AUTHORS_BY_FAMILY) for any field the
                   run leaves at the preset's value; on Stacked MNIST (LBT-GAN_smnist.py
                   argparse defaults and README command): M = 15 (n_est 3), VAE latent
                   256 (z_dims 256,256), Bernoulli decoder, no clipping (no -clip_grad),
                   generator samples in training-mode batch norm; LBT-GAN adds 3,001
                   GAN-only updates (`if i > 3000`) and fresh GAN samples.
  init="glorot"    TensorFlow's Glorot-uniform weights and zero biases (their nets use
                   TF defaults) for G, E and D, re-drawn at construction (`reinitialize`);
                   under the `lbt` profile the protocol already initialises so.
                   On the grid (AUTHORS_BY_DATASET; their README: -n_est 3) M = 15; its
                   batch 2048 is the `lbt` profile's (protocol.LBT_GRID).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from mcbench.errors import McbenchError
from mcbench.methods.blocks import functional as fn
from mcbench.methods.blocks.memory import memory_available, size_text
from mcbench.methods.blocks.unroll import AdamState, adam_eps_inside_, unroll
from mcbench.methods.blocks.vae import LIKELIHOODS, VAE
from mcbench.plugin.method import FunctionalUpdate, Method, Problem, Rng, positive
from mcbench.plugin.replicas import StackedLinear

if TYPE_CHECKING:
    from mcbench.plugin.protocol import Protocol

INITS = ("pytorch", "glorot")


@dataclass
class LBTConfig:
    K: int = 5  # unrolled estimator steps per generator update
    M: int = 10  # estimator Adam steps per generator update (authors: 2 updates x K)
    est_lr_mult: float = 3.0  # estimator updates run at est_lr_mult x lr_d
    unroll_lr_mult: float = 1.0  # unrolled steps run at unroll_lr_mult x lr_d
    vae_latent: int = 32  # VAE latent size (authors' code)
    decoder_var: float = 1e-3  # decoder variance, fixed unless learn_var
    learn_var: bool = False  # learn a per-dimension decoder variance instead
    clip_norm: float = 5.0  # generator gradient global-norm clip; 0 turns it off
    adam_defaults: bool = False  # Adam betas (0.9, 0.999) instead of the protocol's
    # Faithfulness options (module docstring); the defaults keep the reference runs.
    likelihood: str = "gaussian"  # VAE decoder: gaussian (fixed decoder_var) | bernoulli
    adam_eps_inside: bool = False  # estimator Adam: m / sqrt(v + eps) (authors' code)
    init: str = "pytorch"  # pytorch | glorot: re-initialise G, E (and D) at construction
    sample_train_bn: bool = False  # sample() with batch norm in training mode (smnist code)
    per_dataset: bool = False  # apply AUTHORS_BY_FAMILY for the problem's family

    def validate(self, name: str = "lbt") -> None:
        positive(
            name,
            K=self.K,
            M=self.M,
            est_lr_mult=self.est_lr_mult,
            unroll_lr_mult=self.unroll_lr_mult,
            vae_latent=self.vae_latent,
            decoder_var=self.decoder_var,
        )
        if self.clip_norm < 0:
            raise McbenchError(f"method {name!r}: clip_norm must be >= 0 (0: no clipping)")
        if self.likelihood not in LIKELIHOODS:
            raise McbenchError(
                f"method {name!r}: likelihood must be one of {', '.join(LIKELIHOODS)}, "
                f"got {self.likelihood!r}"
            )
        if self.likelihood == "bernoulli" and self.learn_var:
            raise McbenchError(f"method {name!r}: learn_var needs likelihood=gaussian")
        if self.init not in INITS:
            raise McbenchError(
                f"method {name!r}: init must be one of {', '.join(INITS)}, got {self.init!r}"
            )


def unroll_bytes(
    cfg: LBTConfig, batch: int, hidden: Sequence[int], latent: int, data_dim: int = 0
) -> int:
    """A lower bound on the memory one generator update holds: K unrolled steps keep each
    step's VAE activations (encoder and decoder, batch x 2 x sum(hidden)) and parameter
    copies (parameters, gradient, Adam moment: 3 x P) for the backward pass; the M
    estimator batches are drawn at once (M x batch x (G's latent + data_dim)). float32."""
    h = [data_dim or 1, *hidden, cfg.vae_latent]
    params = 2 * sum(a * b for a, b in itertools.pairwise(h))  # encoder and decoder
    per_step = batch * 2 * sum(hidden) + 3 * params
    return 4 * (cfg.K * per_step + cfg.M * batch * (latent + data_dim))


def check_memory(
    name: str, cfg: LBTConfig, batch: int, hidden: Sequence[int], latent: int, data_dim: int = 0
) -> None:
    """Refuse K (or M) whose unroll cannot fit in memory, before any allocation."""
    need = unroll_bytes(cfg, batch, hidden, latent, data_dim)
    have, where = memory_available()
    if need > have:
        raise McbenchError(
            f"method {name!r}: K={cfg.K}, M={cfg.M} need at least {size_text(need)} "
            f"(K x (batch {batch} x 2 x {sum(hidden)} activations + 3 x parameters) x 4 B, "
            f"plus M x batch x {latent + data_dim} values), "
            f"more than the {size_text(have)} of {where}"
        )


@dataclass(frozen=True)
class FunctionalPhases:
    """LBT's phases 1 and 2 as pure functions (`LBT.functional_phases`)."""

    fit: Callable[..., tuple[Any, Any, torch.Tensor]]
    unrolled_real_loss: Callable[..., torch.Tensor]


PAPER = {"K": 5, "M": 15, "est_lr_mult": 1.0, "clip_norm": 0.0, "adam_defaults": True}
AUTHORS_CODE = {
    "K": 5,
    "M": 10,
    "est_lr_mult": 3.0,
    "unroll_lr_mult": 1.0,
    "vae_latent": 32,
    "decoder_var": 1e-3,
    "learn_var": False,
    "clip_norm": 5.0,
    "adam_defaults": False,
    "adam_eps_inside": True,
    "init": "glorot",
    "per_dataset": True,
}
# The authors' per-dataset settings, by family prefix (`per_dataset`); fields a class's
# Config lacks are skipped. Stacked MNIST: LBT-GAN_smnist.py (argparse defaults; the
# README runs it with -lbt and no -clip_grad).
# ... and by dataset where one family holds several (the 2-D mixtures); a dataset's own
# entry wins over its family's.
AUTHORS_BY_DATASET: dict[str, dict[str, Any]] = {
    "grid": {"M": 15},  # the authors' README grid command: -n_est 3 (3 updates x K = 5)
}
AUTHORS_BY_FAMILY: dict[str, dict[str, Any]] = {
    "stacked-mnist": {
        "M": 15,
        "vae_latent": 256,
        "likelihood": "bernoulli",
        "clip_norm": 0.0,
        "sample_train_bn": True,
        "warmup": 3001,
        "fresh_samples": True,
    },
}


class LBT(Method):
    name = "lbt"
    Config = LBTConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": PAPER, "authors-code": AUTHORS_CODE}
    defaults_from = "LBT authors' code (preset authors-code); preset paper: section 5"
    vectorized = True
    depth_param = "K"
    not_state = ("diag_real",)  # drawn at construction, the same on every resume

    @classmethod
    def check_protocol(cls, config: LBTConfig, protocol: Protocol) -> None:
        """Refuse an unroll that cannot fit in memory (e.g. K=1e9), at planning time."""
        hidden = protocol.estimator_hidden or protocol.hidden
        data_dim = 2 if protocol.family == "mixture2d" else 0  # images: a lower bound
        config = cls.for_family(config, protocol.family)
        batch, latent = protocol.batch_size, protocol.latent_dim
        check_memory(cls.name, config, batch, hidden, latent, data_dim)

    @classmethod
    def for_family(cls, cfg: LBTConfig, family: str, dataset: str = "") -> LBTConfig:
        """`cfg` with the authors' settings for `family` (AUTHORS_BY_FAMILY) and `dataset`
        (AUTHORS_BY_DATASET) in every field still at the `authors-code` preset's value (a
        field set by the run wins)."""
        if not cfg.per_dataset:
            return cfg
        table = next((v for k, v in AUTHORS_BY_FAMILY.items() if family.startswith(k)), {})
        table = {**table, **AUTHORS_BY_DATASET.get(dataset, {})}
        base = {**dataclasses.asdict(cls.Config()), **cls.presets["authors-code"]}
        fields = {f.name for f in dataclasses.fields(cfg)}
        changes = {k: v for k, v in table.items() if k in fields and getattr(cfg, k) == base[k]}
        return dataclasses.replace(cfg, **changes)

    def __init__(self, problem: Problem, cfg: LBTConfig) -> None:
        cfg = self.for_family(cfg, problem.family, problem.dataset)
        super().__init__(problem, cfg)
        hidden = problem.estimator_hidden
        batch, latent = problem.batch_size, problem.latent_dim
        check_memory(self.name, cfg, batch, hidden, latent, problem.data_dim)
        self.betas = (0.9, 0.999) if cfg.adam_defaults else problem.betas
        betas = self.betas
        self.G = problem.generator(problem.latent_dim)
        self.E = VAE(problem, cfg.vae_latent, cfg.decoder_var, cfg.learn_var, cfg.likelihood)
        self.reinitialize(self.G, self.E)
        self.opt_g = problem.adam(self.G.parameters(), problem.lr_g, betas)
        self.opt_e = problem.adam(self.E.parameters(), cfg.est_lr_mult * problem.lr_d, betas)
        self.unroll_lr = cfg.unroll_lr_mult * problem.lr_d
        # Diagnostics draw from their own stream (seeded once from the method's) and a
        # real batch fixed at construction, so evaluating never shifts training streams.
        self.diag_rng = problem.spawn_rng()
        self.diag_real = problem.sample_real(problem.batch_size) if problem.sample_real else None

    @torch.no_grad()
    def reinitialize(self, *nets: nn.Module) -> None:
        """`init="glorot"`: TensorFlow's dense and conv default, Glorot-uniform weights
        (bound sqrt(6 / (fan_in + fan_out))) and zero biases, which the authors' code gets
        implicitly. Drawn from a stream spawned from the method's seeded one, per replica:
        the harness's per-replica init streams are not reachable from a method, and this
        way replica r equals its seed's sequential run. Batch-norm layers keep theirs."""
        if self.cfg.init == "pytorch":
            return
        rng = self.problem.spawn_rng()
        layers = (nn.Linear, StackedLinear, nn.Conv2d, nn.ConvTranspose2d)
        for net in nets:
            for m in net.modules():
                if not isinstance(m, layers):
                    continue
                w = m.weight
                shape = w.shape[1:] if self._replicas else w.shape
                field = shape[2:].numel()  # receptive field of a conv kernel; 1 for dense
                bound = math.sqrt(6.0 / ((shape[0] + shape[1]) * field))
                u = self.rand(1, shape.numel(), rng).reshape(w.shape)
                w.copy_((2 * u - 1) * bound)
                if m.bias is not None:
                    m.bias.zero_()

    def estimator_step(self, loss: torch.Tensor) -> None:
        """One estimator Adam step; with `adam_eps_inside` the authors' placement of eps."""
        if not self.cfg.adam_eps_inside:
            self.minimize(self.opt_e, loss)
            return
        self.opt_e.zero_grad(set_to_none=True)
        self.backward(loss)
        adam_eps_inside_(self.opt_e)

    # -- the three phases of Algorithm 1 ------------------------------------------------

    def fit_estimator(self, n: int) -> torch.Tensor:
        """M Adam steps of E on fresh generated samples; returns the last -ELBO."""
        m = self.cfg.M
        with torch.no_grad():  # one generator pass for all M batches
            fakes = self.split(self.G(self.randn(m * n)), m)
        eps = self.split(self.randn(m * n, self.E.latent_dim), m)
        for x, e in zip(fakes, eps, strict=True):
            loss_e = -self.mean(self.E(x, e))
            self.estimator_step(loss_e)
        return loss_e.detach()

    def fresh_fakes(self, n: int, k: int) -> list[torch.Tensor]:
        """k batches of n generated samples, differentiable w.r.t. G, in one pass."""
        return self.split(self.G(self.randn(k * n)), k)

    def unrolled_real_loss(self, real: torch.Tensor, fakes: list[torch.Tensor]) -> torch.Tensor:
        """-ELBO(real; phi_K(theta)), one unrolled step per batch in `fakes` (K of them):
        differentiable w.r.t. G through its samples."""
        k, n = len(fakes), self.num_samples(real)
        eps = self.split(self.randn(k * n + n, self.E.latent_dim), k + 1)
        batches = iter(zip(fakes, eps[:k], strict=True))
        state = dataclasses.replace(AdamState.from_optimizer(self.E, self.opt_e), lr=self.unroll_lr)
        params = unroll(
            self.E,
            lambda f: -self.mean(f(*next(batches))),
            state,
            k,
            eps_inside=self.cfg.adam_eps_inside,
        )
        return -self.mean(torch.func.functional_call(self.E, params, (real, eps[k])))

    def generator_loss(self, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss G descends (LBT: the unrolled real-data -ELBO) and what to log."""
        loss = self.unrolled_real_loss(real, self.fresh_fakes(self.num_samples(real), self.cfg.K))
        return loss, {"elbo_real_unrolled": -loss.detach()}

    def generator_grads(self, real: torch.Tensor) -> tuple[list[torch.Tensor], dict]:
        """Each seed's gradient of its generator loss w.r.t. G's parameters (E's left
        untouched)."""
        loss, logs = self.generator_loss(real)
        return self.grad(loss, self.G.parameters()), logs

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        loss_e = self.fit_estimator(self.num_samples(real))
        grads, logs = self.generator_grads(real)
        for prm, g in zip(self.G.parameters(), grads, strict=True):
            prm.grad = g
        if self.cfg.clip_norm > 0:
            self.clip_grad_norm_(self.G.parameters(), self.cfg.clip_norm)
        self.opt_g.step()
        return {"elbo_fake": -loss_e, **logs}

    def functional_phases(self) -> FunctionalPhases:
        """LBT's phases 1 and 2 as pure functions, for `functional_update` here and in
        LBT-GAN: the M estimator Adam steps on G's samples, and the real-data -ELBO
        after K unrolled steps on differentiable samples (second moment not
        differentiated), gradients by nested `torch.func.grad`."""
        cfg, E = self.cfg, self.E
        M, K, inside = cfg.M, cfg.K, cfg.adam_eps_inside
        if any(True for _ in itertools.chain(self.G.buffers(), E.buffers())):
            raise McbenchError(f"method {self.name!r}: --compile supports nets without buffers")
        step_e = fn.adam(self.opt_e, eps_inside=inside)
        step_unrolled = fn.adam(self.opt_e, eps_inside=inside, lr=self.unroll_lr)

        def nelbo(pe: fn.Params, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            return -self.mean(fn.call(E, pe, x, e))

        grad_nelbo = fn.grad_and_value(nelbo)

        def fit(p_g, p_e, s_e, z, eps):  # 1. returns (p_e, s_e, the last -ELBO)
            fakes = self.split(fn.call(self.G, p_g, z).detach(), M)
            for x, e in zip(fakes, self.split(eps, M), strict=True):
                g, loss_e = grad_nelbo(p_e, x, e)
                p_e, s_e = step_e(p_e, g, s_e)
            return p_e, s_e, loss_e

        def unrolled_real_loss(p_e, s_e, fakes, real, eps):  # 2. -ELBO(real; phi_K)
            eps = self.split(eps, K + 1)
            for x, e in zip(fakes, eps[:K], strict=True):
                p_e, s_e = step_unrolled(p_e, grad_nelbo(p_e, x, e)[0], s_e)
            return nelbo(p_e, real, eps[K])

        return FunctionalPhases(fit, unrolled_real_loss)

    def functional_step_g(self) -> Callable:
        """Phase 3 as a pure function: G's gradient clipped as `step` clips it, then
        G's Adam step: (p_g, grads, s_g) -> (p_g, s_g)."""
        clip, step_g = self.cfg.clip_norm, fn.adam(self.opt_g)

        def step(p_g, g, s_g):
            if clip > 0:
                g = fn.clip_global_norm(g, clip, self._replicas)
            return step_g(p_g, g, s_g)

        return step

    def functional_update(self) -> FunctionalUpdate:
        """`step` as one pure function of (weights, Adam moments, real batch, noise), for
        `mcbench run --compile`: the same three phases. Equal to `step` to rounding
        (tests/test_compiled.py, in float64 to 1e-9)."""
        K, G = self.cfg.K, self.G
        phase, step_g = self.functional_phases(), self.functional_step_g()

        def generator_loss(p_g, p_e, s_e, real, z, eps):
            fakes = self.split(fn.call(G, p_g, z), K)
            return phase.unrolled_real_loss(p_e, s_e, fakes, real, eps)

        grad_g = fn.grad_and_value(generator_loss)

        def update(params, moments, real, noise):
            z_fit, e_fit, z_unroll, e_unroll = noise
            p_g = params["G"]
            p_e, s_e, loss_e = phase.fit(p_g, params["E"], moments["opt_e"], z_fit, e_fit)
            g, loss = grad_g(p_g, p_e, s_e, real, z_unroll, e_unroll)
            p_g, s_g = step_g(p_g, g, moments["opt_g"])
            losses = {"elbo_fake": -loss_e, "elbo_real_unrolled": -loss}
            return {"G": p_g, "E": p_e}, {"opt_g": s_g, "opt_e": s_e}, losses

        def noise(n: int) -> list[torch.Tensor]:  # in the order `step` draws it
            latent = self.E.latent_dim
            return [
                self.randn(self.cfg.M * n),
                self.randn(self.cfg.M * n, latent),
                self.randn(K * n),
                self.randn(K * n + n, latent),
            ]

        return FunctionalUpdate(update, noise, {"opt_g": "G", "opt_e": "E"})

    @torch.no_grad()
    def sample(self, n: int, rng: Rng | None = None) -> torch.Tensor:
        """As `Method.sample`; with `sample_train_bn` the generator keeps batch norm in
        training mode (batch statistics over chunks of the protocol's batch), as the
        authors' Stacked MNIST generator always runs (`is_training=True`). Running
        statistics are restored afterwards, so evaluating leaves no trace in training."""
        if not self.cfg.sample_train_bn:
            return super().sample(n, rng)
        g, b = self.generator_module(), self.problem.batch_size
        saved = [buf.clone() for buf in g.buffers()]
        was_training = g.training
        g.train()
        parts = [self.G(self.randn(min(b, n - i), rng=rng)) for i in range(0, n, b)]
        g.train(was_training)
        for buf, old in zip(g.buffers(), saved, strict=True):
            buf.copy_(old)
        return torch.cat(parts, dim=-1 - len(self.problem.data_shape))  # the sample dim

    # -- learning curves (paper, workshop version Fig. 4) -----------------------------

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float | torch.Tensor]:
        """The estimator's ELBO on a fresh generated batch and on real data, per seed."""
        n, latent, rng = self.problem.batch_size, self.E.latent_dim, self.diag_rng
        fake = self.G(self.randn(n, rng=rng))
        out = {"elbo_generated": self.mean(self.E(fake, self.randn(n, latent, rng)))}
        if self.diag_real is not None:
            eps = self.randn(self.num_samples(self.diag_real), latent, rng)
            out["elbo_real"] = self.mean(self.E(self.diag_real, eps))
        return self.readout(out)
