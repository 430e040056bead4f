"""`karma experiment`: the whole KARMA study (prepare -> reward models -> SFT -> PPO matrix -> eval -> report)
as one cached, resumable command. See karma_ray.experiment.run."""
