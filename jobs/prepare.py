"""`ray job submit` entrypoint for corpus preparation; same arguments as `karma prepare`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.prepare s3://bucket/reddit/RC_2019-*.zst --output s3://bucket/prepared \
        --config configs/data/default.yaml

Inside a job RAY_ADDRESS is set, so the pipeline joins the job's cluster instead of starting one.
"""

import sys

from karma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
