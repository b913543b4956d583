"""How fast could LBT's update be compiled? An experiment for issue 16, not a training path.

    python benchmarks/tools/compiled_lbt.py --out results/reference/perf/compiled_lbt

The harness trains LBT eagerly (`methods/lbt.py`: optimisers, replicas, checkpoints).
Here the same update is written as one pure function of (parameters, optimiser
moments, step counts, real batch, noise), its gradients by `torch.func.grad` (nested for
the unrolled estimator steps), and compiled whole by `torch.compile` (TorchInductor's C++
code on a CPU), the form issue 16 names as untried. One update of this function equals
one update of the harness's `lbt[preset=authors-code]` given the same noise (checked
below, and in tests/test_compiled_lbt.py for the eager function):
  1. M estimator Adam steps (eps inside the square root, 3x the estimator rate) on G's
     samples, fresh noise each;
  2. K unrolled steps of the same Adam from there (second moment not differentiated) on
     fresh differentiable samples, then -ELBO of the real batch under the unrolled
     estimator;
  3. its gradient for G, clipped to global norm 5, and G's Adam step.
Reported: the compile time, ms per update of the harness (eager) and of the compiled
function in interleaved blocks, each as a fraction of the matmul peak measured in the
same run, and how far the compiled function's parameters drift from the eager function's
over the timed updates (rounding: the compiler reorders floating-point arithmetic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from perf import count_flops, cpu_model, matmul_peak  # benchmarks/tools, beside this
from torch.func import functional_call, grad

from mcbench.methods.blocks.unroll import AdamState, adam_step
from mcbench.run.runner import RunSpec, build

SELECTOR = "lbt[preset=authors-code]"
Params = dict[str, torch.Tensor]


def functional_update(method: Any):
    """LBT's update as a pure function of its state and noise (see the module docstring)."""
    cfg = method.cfg
    if not cfg.adam_eps_inside or method._replicas:
        raise ValueError("written for one seed of lbt[preset=authors-code] (eps inside)")
    G, E = method.G, method.E
    M, K = cfg.M, cfg.K
    betas = method.betas
    eps_e = method.opt_e.param_groups[0]["eps"]
    lr_e = method.opt_e.param_groups[0]["lr"]
    g_group = method.opt_g.param_groups[0]
    lr_u, clip = method.unroll_lr, cfg.clip_norm

    def nelbo(pe: Params, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return -functional_call(E, pe, (x, e)).mean()

    def update(pG, pE, mE, vE, tE, mG, vG, tG, real, zM, eM, zK, eK):
        # Adam as the harness's unroll takes it (`unroll.adam_step`; a tensor step count)
        sE = AdamState(tE, mE, vE, lr_e, betas, eps_e)
        fakes = functional_call(G, pG, (zM,)).detach().chunk(M)
        for x, e in zip(fakes, eM.chunk(M), strict=True):  # 1. estimator steps
            pE, sE = adam_step(pE, grad(nelbo)(pE, x, e), sE, eps_inside=True)

        def unrolled_real_loss(pg: Params) -> torch.Tensor:  # 2. the unroll
            p, s = pE, AdamState(sE.step, sE.exp_avg, sE.exp_avg_sq, lr_u, betas, eps_e)
            eps = eK.chunk(K + 1)
            for x, e in zip(functional_call(G, pg, (zK,)).chunk(K), eps[:K], strict=True):
                p, s = adam_step(p, grad(nelbo)(p, x, e), s, eps_inside=True)
            return nelbo(p, real, eps[K])

        gG = grad(unrolled_real_loss)(pG)  # 3. the generator step
        if clip > 0:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(x) for x in gG.values()])
            )
            scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
            gG = {k: x * scale for k, x in gG.items()}
        sG = AdamState(tG, mG, vG, g_group["lr"], tuple(g_group["betas"]), g_group["eps"])
        pG, sG = adam_step(pG, gG, sG)
        return pG, pE, sE.exp_avg, sE.exp_avg_sq, sE.step, sG.exp_avg, sG.exp_avg_sq, sG.step

    return update


def initial_state(method: Any) -> list[Any]:
    """The harness method's weights, zero moments and step counts, as fresh tensors."""
    if method.opt_e.state or method.opt_g.state:
        raise ValueError("take the state of a method that has not stepped yet")
    pG = {k: v.detach().clone() for k, v in method.G.named_parameters()}
    pE = {k: v.detach().clone() for k, v in method.E.named_parameters()}

    def zeros(p: Params) -> Params:
        return {k: torch.zeros_like(v) for k, v in p.items()}

    dev = next(iter(pG.values())).device
    step = torch.zeros((), device=dev)
    return [pG, pE, zeros(pE), zeros(pE), step, zeros(pG), zeros(pG), step.clone()]


def draw_noise(method: Any, rng: torch.Generator) -> list[torch.Tensor]:
    """One update's noise in the order the harness's `LBT.step` draws it from its stream."""
    n, L, M, K = method.problem.batch_size, method.E.latent_dim, method.cfg.M, method.cfg.K
    return [
        method.randn(M * n, rng=rng),
        method.randn(M * n, L, rng=rng),
        method.randn(K * n, rng=rng),
        method.randn(K * n + n, L, rng=rng),
    ]


def _peak(device: torch.device) -> float:
    return matmul_peak(device, 2048, 5)["best"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/compiled_lbt"))
    ap.add_argument("--blocks", type=int, default=6, help="interleaved blocks per side")
    ap.add_argument("--updates", type=int, default=10, help="updates per block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--check", type=int, default=10, help="updates of the faithfulness check")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    harness, ds, data_rng = build(RunSpec(SELECTOR, "ring", 0, 1, 1, 1), device)
    update = functional_update(harness)
    compiled = torch.compile(update, dynamic=False)
    n = harness.problem.batch_size

    # Faithfulness: from the harness's initial state, the harness, the eager function and
    # the compiled function take --check updates on the same real batches and noise.
    eager, comp = initial_state(harness), initial_state(harness)
    compile_s = 0.0
    for i in range(args.check):
        real = ds.sample(n, data_rng, device)
        replay = torch.Generator(device).manual_seed(0)
        replay.set_state(harness.problem.rng.get_state())
        noise = draw_noise(harness, replay)
        harness.step(real)
        eager = list(update(*eager, real, *noise))
        t = time.perf_counter()
        comp = list(compiled(*comp, real, *noise))
        if i == 0:
            compile_s = time.perf_counter() - t

    def rel(a: Params, b: Params) -> float:
        num = sum(float((a[k] - b[k]).square().sum()) for k in a)
        return (num / sum(float(b[k].square().sum()) for k in b)) ** 0.5

    live = {k: p.detach() for k, p in harness.G.named_parameters()}
    drift = {"eager function": rel(eager[0], live), "compiled function": rel(comp[0], live)}

    real = ds.sample(n, data_rng, device)
    flops = count_flops(lambda: harness.step(real))
    state, noise_rng = comp, torch.Generator(device).manual_seed(1)
    times: dict[str, list[float]] = {"harness (eager)": [], "compiled function": []}
    for b in range(args.blocks):
        order = list(times) if b % 2 == 0 else list(times)[::-1]
        for side in order:
            t = time.perf_counter()
            for _ in range(args.updates):
                if side == "compiled function":
                    state = list(compiled(*state, real, *draw_noise(harness, noise_rng)))
                else:
                    harness.step(real)
            times[side].append((time.perf_counter() - t) / args.updates * 1e3)
    peak = _peak(device)
    res: dict[str, Any] = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "threads": args.threads,
        "selector": SELECTOR,
        "compile_s": compile_s,
        "mflop_per_update": flops / 1e6,
        "peak_flops": peak,
        "ms": times,
        "median_ms": {k: statistics.median(v) for k, v in times.items()},
        "check_updates": args.check,
        "relative_G_difference_from_harness": drift,
    }
    res["fraction_of_peak"] = {k: flops / (v / 1e3) / peak for k, v in res["median_ms"].items()}
    res["speedup"] = res["median_ms"]["harness (eager)"] / res["median_ms"]["compiled function"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compiled_lbt.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# LBT's update compiled whole (torch.func + torch.compile): an experiment",
        "",
        f"{res['cpu']}, {args.threads} thread(s), torch {res['torch']}, {res['date_utc']} UTC; "
        f"`{SELECTOR}` on ring; {args.blocks} interleaved blocks of {args.updates} updates per "
        f"side; matmul peak {peak / 1e9:.1f} GFLOP/s (2048x2048, this run); "
        f"{flops / 1e6:.0f} MFLOP per update.",
        "",
        "| update | ms (median) | blocks | fraction of peak |",
        "|---|---|---|---|",
    ]
    for k, v in times.items():
        lines.append(
            f"| {k} | {res['median_ms'][k]:.1f} | {', '.join(f'{x:.0f}' for x in v)} | "
            f"{res['fraction_of_peak'][k]:.3f} |"
        )
    lines += [
        "",
        f"Speed-up of the compiled function: **{res['speedup']:.2f}x**. Compile time (first "
        f"call, this process; cached by TorchInductor for later processes): {compile_s:.0f} s.",
        "",
        f"Faithfulness: after {args.check} updates from the harness's initial weights on the "
        f"same real batches and noise, the generator's weights differ from the harness's by "
        f"{drift['eager function']:.1e} (eager function) and {drift['compiled function']:.1e} "
        "(compiled function) in relative L2 norm: float32 rounding of reordered arithmetic, "
        "which Adam's normalisation of near-zero gradients magnifies (in float64 the eager "
        "function equals the harness to 1e-9, tests/test_compiled_lbt.py).",
        "",
    ]
    (args.out / "compiled_lbt.md").write_text("\n".join(lines))
    print(f"compiled_lbt: {res['speedup']:.2f}x; wrote {args.out}/compiled_lbt.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
