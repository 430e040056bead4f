"""`ray job submit` entrypoint for the PPO (KL) sweep; same arguments as `karma sweep-ppo`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.sweep_ppo --config configs/ppo/sweep_kl_tiny.yaml --output runs/sweep-kl
"""

import sys

from karma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep-ppo", *sys.argv[1:]]))
