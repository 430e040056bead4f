"""What every trained model shares, whatever the stage (reward model, SFT, the PPO roles):

    config   DeepSpeedConfig: the one shape of the DeepSpeed settings (`deepspeed.*` in configs)
    learner  Learner: torch AdamW + an LR schedule, wrapped in DDP or DeepSpeed ZeRO-2/3; one
             optimizer step over micro-batches; the full weights (gathered under ZeRO-3); the
             optimizer's checkpoint (DeepSpeed's own, or optimizer.pt) and its restore;
             `deepspeed_json`, the DeepSpeed config every engine here is built from
    loop     run_loop: the one Ray Train worker loop of reward models and SFT (restore, steps,
             reports, evaluation, checkpoints) over a stage's TrainTask; torch_trainer: the
             TorchTrainer around it
    faults   test-only fault injection, switched on by an environment variable, never by a config

Imports torch only; DeepSpeed is imported when a learner uses it.
"""
