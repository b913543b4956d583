#!/bin/sh
# PacGAN Table 1, ring (ring-veegan): GAN and PacGAN2 rows under the `pacgan` protocol
# profile, seeds 0-2 trained together as replicas; 3.5 epochs (3,500 updates of a batch of
# 100 packs) of the paper's 400 epochs (400,000 updates), fit to a 2-core CPU.
nice -n 5 .venv/bin/mcbench run -m gan -m pacgan2 -d ring-veegan --protocol pacgan \
  --seeds 0 1 2 --replicas 3 -j 2 --steps 3500 --eval-every 500 --eval-samples 2500 \
  --checkpoint-every 500 --no-progress --out results/reference/pacgan_table1
