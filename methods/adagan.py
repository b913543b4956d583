"""AdaGAN (Tolstikhin, Gelly, Bousquet, Simon-Gabriel and Schölkopf, NIPS 2017): boosting.

A mixture of T generators trained one after another (the paper's Algorithm 1). Each
component is an ordinary non-saturating GAN with its own, freshly initialised generator
and discriminator, trained on a reweighted training sample S_N that stresses the points
the mixture so far misses. The model evaluated at any time is the mixture
G_t = (1 - beta_t) G_{t-1} + beta_t G_t^c, the component in training included at its
weight beta_t (`sample`: a component index per sample drawn with the mixture weights).

S_N is a pool of N real points drawn once at construction (`problem.sample_real`, from
the run's seeded data stream, so every resume redraws the same pool). Component 1 trains
on the harness's fresh batches (uniform weights W_1 on the data distribution, the
N -> infinity case of S_N); every later component trains on minibatches drawn from the
pool with its weights W_t, and the harness's batch is ignored. The pool is not saved
in checkpoints (`not_state`): construction redraws it identically, as the seeded data
stream starts afresh before the checkpoint restores its state.

Per generator update, with t the component in training (1-based):
  1. if component t has had its `steps_per_component` updates and t < T, component
     t + 1 joins (`next_stage`; its first update pays for this):
     a. beta = ChooseMixtureWeight(t + 1): 1 / (t + 1) ("uniform", the authors'
        default: a uniform mixture) or a constant beta;
     b. train a fresh classifier C to tell pool points (label 1) from samples of the
        mixture G_t (label 0); h(X_i) = (1 - C(X_i)) / C(X_i) = exp(-logit_i)
        estimates dP_model / dP_data at each pool point (paper section 3;
        "theory_star" in the authors' code);
     c. W_{t+1, i} = (lambda* - (1 - beta) h(X_i))_+ / (beta N), with lambda* the
        unique value for which the weights sum to one (`data_weights`: a closed form
        over the sorted h); points the mixture already covers get weight 0;
     d. mixture weights: the old ones times (1 - beta), beta for component t + 1;
     then t <- t + 1;
  2. real batch: the harness's batch for t = 1, else n pool points drawn with
     replacement in proportion to W_t (the method's own seeded stream);
  3. for d_steps: update D_t,  L_D = -log D_t(x) - log(1 - D_t(G_t^c(z)));
  4. update G_t^c,             L_G = -log D_t(G_t^c(z)).
The switch waits for the next update, so an evaluation after update k x
steps_per_component sees the finished mixture G_k (Algorithm 1's output after k
iterations). After T components, further updates keep training component T on W_T
(the budget is the harness's, AdaGAN's is T x steps_per_component: set it to match).

Where the authors' code (tolstikhin/adagan) differs, and why: it draws minibatches
without replacement (we draw with replacement, so a weight vector with fewer positive
entries than a batch still works) and trains the classifier against one fixed sample of
N mixture points (we draw fresh mixture samples at every classifier step, the same
distribution with no reuse).

Not vectorised: the stage changes which nets an update touches, and the reweighting
step is a data-dependent search. Not capturable as a CUDA graph for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from mcbench.errors import McbenchError
from mcbench.methods.blocks.losses import d_loss, g_loss_nonsaturating
from mcbench.methods.blocks.memory import memory_available, size_text
from mcbench.metrics.registry import MetricSpec, register_metric
from mcbench.plugin.method import Method, Problem, Rng, positive

if TYPE_CHECKING:
    from mcbench.plugin.protocol import Protocol

BETA_RULES = ("uniform", "constant")
SCORE_CHUNK = 4096  # pool points scored by the classifier at once
SOURCE = "AdaGAN (Tolstikhin et al., NIPS 2017), Algorithm 1"
for _spec in (
    MetricSpec(
        "adagan_component",
        None,
        "AdaGAN component",
        "The AdaGAN component in training (1-based): the mixture holds this many.",
        SOURCE,
        role="diagnostic",
        unit="components",
        lower=1,
    ),
    MetricSpec(
        "adagan_data_support",
        None,
        "AdaGAN data support",
        "Share of the AdaGAN training pool with a positive weight for the component in "
        "training (1: uniform; small: the mixture already covers most of the data).",
        SOURCE,
        role="diagnostic",
        unit="share of pool",
        lower=0,
        upper=1,
    ),
):
    register_metric(_spec)


@dataclass
class AdaGANConfig:
    # Components in the mixture: the authors' 2-D script (adagan_gmm.py,
    # adagan_steps_total = 10).
    T: int = 10
    # Generator updates per component; 0: derived, component_epochs passes over the pool
    # at the protocol's batch (15 x 64,000 / 512 = 1,875 on the 2-D mixtures). The
    # method cannot see the run's budget: set T x steps_per_component to it.
    steps_per_component: int = 0
    # Epochs of GAN training per component when steps_per_component = 0: the authors'
    # 2-D script (gan_epoch_num = 15).
    component_epochs: float = 15.0
    # Size N of the reweighted training sample: the authors' 2-D script
    # (toy_dataset_size = 64 * 1000).
    pool_size: int = 64_000
    # "uniform": beta_t = 1/t (authors' default, beta_heur = 'uniform'); "constant":
    # beta_t = beta for t >= 2 (beta_heur = 'constant', beta_constant = 0.5).
    beta_rule: str = "uniform"
    beta: float = 0.5
    # Classifier (data vs mixture) training: epochs over the pool at the protocol's
    # batch (authors' mixture_c_epoch_num = 5), Adam at this x the protocol's
    # discriminator lr (authors' 2-D script: classifier lr 0.008 = 2 x D's 0.004).
    classifier_epochs: float = 5.0
    classifier_lr_mult: float = 2.0
    d_steps: int = 1  # D updates per G update (authors' d_steps = 1)

    def validate(self) -> None:
        positive(
            "adagan",
            T=self.T,
            component_epochs=self.component_epochs,
            pool_size=self.pool_size,
            classifier_epochs=self.classifier_epochs,
            classifier_lr_mult=self.classifier_lr_mult,
            d_steps=self.d_steps,
        )
        if self.steps_per_component < 0:
            raise McbenchError(
                "method 'adagan': steps_per_component must be >= 0 (0: derived from "
                f"component_epochs), got {self.steps_per_component}"
            )
        if self.beta_rule not in BETA_RULES:
            raise McbenchError(
                f"method 'adagan': beta_rule must be one of {', '.join(BETA_RULES)}, "
                f"got {self.beta_rule!r}"
            )
        if not 0 < self.beta <= 1:
            raise McbenchError(f"method 'adagan': beta must be in (0, 1], got {self.beta}")


def mixture_beta(t: int, rule: str = "uniform", beta: float = 0.5) -> float:
    """beta_t, the mixture weight of component t (1-based) when it joins: 1 for the
    first; 1/t under "uniform" (every component then weighs 1/t: a uniform mixture);
    `beta` under "constant"."""
    if t < 1:
        raise ValueError(f"components count from 1, got t={t}")
    if t == 1:
        return 1.0
    if rule == "uniform":
        return 1.0 / t
    if rule == "constant":
        return beta
    raise ValueError(f"unknown beta rule {rule!r}; choices: {', '.join(BETA_RULES)}")


def data_weights(h: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, lambda*): the AdaGAN training weights of N points with density-ratio
    estimates h_i ~ dP_model / dP_data(X_i), for a new component of weight beta:

        W_i = (lambda* - (1 - beta) h_i)_+ / (beta N),   sum_i W_i = 1.

    F(lam) = sum_i (lam - (1 - beta) h_i)_+ - beta N is increasing, negative at
    lam = (1 - beta) min h, so its root lambda* is unique. With h sorted ascending and
    S_k the sum of the k smallest, lambda* = (beta N + (1 - beta) S_k) / k for the
    largest k with (1 - beta) h_(k) < that value (the points with positive weight are
    the k with the smallest ratios). Computed in float64, with no host sync."""
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    h = h.detach().to(torch.float64).flatten()
    n = h.numel()
    hs = torch.sort(h).values
    k = torch.arange(1, n + 1, dtype=torch.float64, device=h.device)
    lam_k = (beta * n + (1 - beta) * torch.cumsum(hs, 0)) / k
    kept = ((1 - beta) * hs < lam_k).sum()  # a prefix: F((1 - beta) h_(k)) < 0; k = 1 always
    lam = lam_k[kept - 1]
    w = (lam - (1 - beta) * h).clamp_min(0) / (beta * n)
    return w / w.sum(), lam  # the sum is 1 up to rounding: renormalise it away


class Mixture(nn.Module):
    """The AdaGAN model: T component generators and their mixture weights, a buffer, so
    that the run's saved generator (generator.pt) is the whole mixture. Components not
    trained yet have weight 0."""

    def __init__(self, components: list[nn.Module], device: torch.device) -> None:
        super().__init__()
        self.components = nn.ModuleList(components)
        weights = torch.zeros(len(components), dtype=torch.float64, device=device)
        weights[0] = 1.0  # beta_1 = 1: the first component is the whole model
        self.register_buffer("weights", weights)

    def forward(self, z: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Sample i is component which[i] applied to z[i]."""
        out: torch.Tensor | None = None
        for k, g in enumerate(self.components):
            rows = (which == k).nonzero().flatten()
            if rows.numel() == 0:
                continue
            x = g(z[rows])
            if out is None:
                out = x.new_empty((z.shape[0], *x.shape[1:]))
            out[rows] = x
        assert out is not None, "no samples requested"
        return out


class AdaGAN(Method):
    name = "adagan"
    Config = AdaGANConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # The authors' 2-D script trains each component for 15,000 updates (15 epochs of
        # 64,000 points at its batch of 64); our default keeps the 15 epochs at the
        # protocol's batch of 512 (1,875 updates).
        "paper": {"steps_per_component": 15_000},
    }
    defaults_from = (
        "paper's Algorithm 1 and section 3 (reweighting, beta_t = 1/t); T, pool, epochs, "
        "classifier from the authors' 2-D script (tolstikhin/adagan adagan_gmm.py); nets, "
        "Adam and batch from the protocol"
    )
    vectorized = False
    not_state = ("pool",)  # drawn at construction from the seeded data stream: the same on resume

    @classmethod
    def check_protocol(cls, config: AdaGANConfig, protocol: Protocol) -> None:
        """Refuse a pool that cannot fit in memory before any work (images: a lower
        bound, one 28x28 channel a point)."""
        data_dim = 2 if protocol.family == "mixture2d" else 28 * 28
        _check_pool_memory(config.pool_size, data_dim)

    def __init__(self, problem: Problem, cfg: AdaGANConfig) -> None:
        super().__init__(problem, cfg)
        if problem.sample_real is None:
            raise McbenchError("method 'adagan' needs problem.sample_real to draw its pool")
        _check_pool_memory(cfg.pool_size, problem.data_dim)
        T, dev = cfg.T, problem.device
        self.G = Mixture([problem.generator(problem.latent_dim) for _ in range(T)], dev)
        self.Ds = nn.ModuleList([problem.critic() for _ in range(T)])
        self.Cs = nn.ModuleList([problem.critic() for _ in range(T - 1)])
        # One Adam per role over every component: Adam skips parameters without a
        # gradient, so each component starts with fresh moments when its stage begins.
        self.opt_g = problem.adam(self.G.components.parameters(), problem.lr_g)
        self.opt_d = problem.adam(self.Ds.parameters(), problem.lr_d)
        self.opt_c = (
            problem.adam(self.Cs.parameters(), cfg.classifier_lr_mult * problem.lr_d)
            if T > 1
            else None
        )
        self.pool = problem.sample_real(cfg.pool_size)
        self.pool_rng = problem.spawn_rng()  # pool minibatches, of its own
        n, batch = cfg.pool_size, problem.batch_size
        self.data_w = torch.full((n,), 1.0 / n, dtype=torch.float64, device=dev)
        self.steps_per_stage = cfg.steps_per_component or math.ceil(
            cfg.component_epochs * n / batch
        )
        self.classifier_steps = math.ceil(cfg.classifier_epochs * n / batch)
        self.stage = 0  # the component in training (0-based)
        self.stage_step = 0  # updates it has had

    # -- one generator update ------------------------------------------------------

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("AdaGAN's update changes with its stage: no CUDA graph capture")
        if self.stage_step == self.steps_per_stage and self.stage + 1 < self.cfg.T:
            self.next_stage()  # 1.
        t = self.stage
        G, D = self.G.components[t], self.Ds[t]
        n = self.num_samples(real)
        x = real if t == 0 else self.pool_batch(n)  # 2.
        for _ in range(self.cfg.d_steps):  # 3.
            fake = G(self.randn(n)).detach()
            loss_d = d_loss(D(x), D(fake))
            self.minimize(self.opt_d, loss_d)
        loss_g = g_loss_nonsaturating(D(G(self.randn(n))))  # 4.
        self.minimize(self.opt_g, loss_g, inputs=list(G.parameters()))
        self.stage_step += 1
        return {"d": loss_d.detach(), "g": loss_g.detach()}

    def pool_batch(self, n: int) -> torch.Tensor:
        """n pool points drawn with replacement in proportion to the data weights."""
        idx = torch.multinomial(self.data_w, n, replacement=True, generator=self.pool_rng)
        return self.pool[idx]

    def next_stage(self) -> None:
        """Step 1: component t + 1 joins, with its data weights and mixture weight."""
        t = self.stage + 1  # components finished, = the 1-based index of the last one
        beta = mixture_beta(t + 1, self.cfg.beta_rule, self.cfg.beta)  # a.
        h = self.density_ratios(self.Cs[t - 1])  # b.
        w, _ = data_weights(h, beta)  # c.
        self.data_w.copy_(w)
        with torch.no_grad():  # d.
            self.G.weights.mul_(1 - beta)
            self.G.weights[t] = beta
        self.stage, self.stage_step = t, 0

    def density_ratios(self, C: nn.Module) -> torch.Tensor:
        """Train C on pool points (real) against samples of the current mixture (fake);
        return h(X_i) = (1 - C(X_i)) / C(X_i) = exp(-logit) at every pool point."""
        n, batch = self.cfg.pool_size, self.problem.batch_size
        dev = self.problem.device
        for _ in range(self.classifier_steps):
            idx = torch.randint(n, (batch,), generator=self.pool_rng, device=dev)
            fake = self.sample(batch)
            self.minimize(self.opt_c, d_loss(C(self.pool[idx]), C(fake)))
        with torch.no_grad():
            logits = torch.cat([C(p) for p in self.pool.split(SCORE_CHUNK)]).flatten()
        h = torch.exp(-logits.to(torch.float64).clamp(min=-700.0))
        if not torch.isfinite(h).all():
            raise RuntimeError("AdaGAN's data-vs-mixture classifier gave non-finite outputs")
        return h

    # -- the mixture ------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, rng: Rng | None = None) -> torch.Tensor:
        """n samples of the mixture: a component index per sample drawn with the mixture
        weights, then that component's sample (every generator in eval mode)."""
        gen = self.problem.rng if rng is None else rng
        z = self.randn(n, rng=gen)
        which = torch.multinomial(self.G.weights, n, replacement=True, generator=gen)
        was_training = self.G.training
        self.G.eval()
        out = self.G(z, which)
        self.G.train(was_training)
        return out

    def diagnostics(self) -> dict[str, float | torch.Tensor]:
        """The component in training (1-based) and the share of pool points with a
        positive training weight (1 for the first component)."""
        return self.readout(
            {
                "adagan_component": torch.tensor(float(self.stage + 1)),
                "adagan_data_support": (self.data_w > 0).double().mean(),
            }
        )


def _check_pool_memory(pool_size: int, data_dim: int) -> None:
    need = 4 * pool_size * data_dim
    have, where = memory_available()
    if need > have:
        raise McbenchError(
            f"method 'adagan': pool_size={pool_size} needs at least {size_text(need)} "
            f"({pool_size} points x {data_dim} values x 4 B), more than the "
            f"{size_text(have)} of {where}"
        )
