"""`ray job submit ... -- python -m jobs.ppo --config configs/ppo/NAME.yaml --output DIR [--resume] [key=value ...]`

The same entry point as `karma ppo`; inside a Ray job RAY_ADDRESS is set, so the driver joins the
job's cluster instead of starting a local one.
"""

import sys

from karma_ray.rlhf.cli import ppo_main

if __name__ == "__main__":  # vLLM spawns its engine core: scripts that start it need this guard
    sys.exit(ppo_main(sys.argv[1:]))
