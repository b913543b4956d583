#!/usr/bin/env bash
# gan and lbt at the quick suite's ring budget (400 updates, evaluations every 100 on
# 100,000 samples, seeds 0-2 trained together as replicas), compiled (--compile).
# Run on 2026-11-30 at commit 62b5e3f (TorchInductor graph rewrites: Eigen's tanh,
# unfused bias, thin matmuls; the runs record their method code), one job at nice 10
# on one core of the 2-core CPU while other work used the other core. The normal draws
# were torch.randn's own (the inlined copy of commit ce778e6 draws the same numbers).
mcbench run -m gan -m lbt -d ring --seeds 0 1 2 --steps 400 --eval-every 100 \
    --eval-samples 100000 --compile --jobs 1 --out results/reference/quick_compiled
