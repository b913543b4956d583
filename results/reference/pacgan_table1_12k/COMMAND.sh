#!/usr/bin/env bash
# Run on 2026-11-29 from 19:24 to 20:57 UTC (1 h 33 min wall, one process at nice 19 on a
# 2-core CPU shared with other work the whole time), code of commit da60f35.
nice -n 19 mcbench run -m gan -m pacgan2 -d ring-veegan --protocol pacgan --seeds 0 1 2 \
  --replicas 3 -j 1 --steps 12000 --eval-every 1000 --eval-samples 2500 \
  --checkpoint-every 1000 --no-progress --out results/reference/pacgan_table1_12k
