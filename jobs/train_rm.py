"""`ray job submit` entrypoint for reward-model training; same arguments as `karma train-rm`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.train_rm --data runs/prepare --output runs/rm_text --config configs/rm/tiny_text.yaml \
        model.backbone=runs/tiny/bert

Inside a job RAY_ADDRESS is set, so training joins the job's cluster instead of starting one.
"""

import sys

from karma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-rm", *sys.argv[1:]]))
