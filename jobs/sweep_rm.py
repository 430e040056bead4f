"""`ray job submit` entrypoint for the reward-model sweep; same arguments as `karma sweep-rm`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.sweep_rm --data runs/prepare --output runs/sweep_rm --config configs/rm/sweep_synthetic.yaml \
        rm.model.backbone=runs/tiny/bert
"""

import sys

from karma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep-rm", *sys.argv[1:]]))
