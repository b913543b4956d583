#!/usr/bin/env bash
# gan and lbt at the quick suite's ring budget (400 updates, evaluations every 100 on
# 100,000 samples, seeds 0-2 trained together as replicas), compiled (--compile).
# Run on 2026-11-30 at commit 82a5b66 (the runs record their code), one job at nice 10
# on the 2-core CPU while the test suite ran on the other core.
mcbench run -m gan -m lbt -d ring --seeds 0 1 2 --steps 400 --eval-every 100 \
    --eval-samples 100000 --compile --jobs 1 --out results/reference/quick_compiled
