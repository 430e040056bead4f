"""`ray job submit` entrypoint for the whole study; same arguments as `karma experiment`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.experiment --config configs/experiment/cluster-64gpu.yaml --output /shared/runs/karma

Inside a job RAY_ADDRESS is set, so every stage (Ray Data, Train, Tune trials, PPO actors) joins the
job's cluster. Resubmitting with the same --output continues: finished stages are skipped.
"""

import sys

from karma_ray.cli import main

if __name__ == "__main__":  # vLLM spawns its engine core: scripts that start it need this guard
    sys.exit(main(["experiment", *sys.argv[1:]]))
