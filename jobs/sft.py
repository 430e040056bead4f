"""`ray job submit` entrypoint for supervised fine-tuning; same arguments as `karma sft`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.sft --data runs/prepare --output runs/sft --config configs/sft/synthetic.yaml

Inside a job RAY_ADDRESS is set, so training joins the job's cluster instead of starting one.
"""

import sys

from karma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]]))
