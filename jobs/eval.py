"""`ray job submit` entrypoint for evaluation; same arguments as `karma eval`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.eval --config configs/eval/gpu.yaml --model base=packaged:smollm2-135m-instruct \
        --model ppo=runs/ppo/policy --output runs/eval

Inside a job RAY_ADDRESS is set, so the scoring replicas and engines join the job's cluster.
"""

import sys

from karma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
