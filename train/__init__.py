"""Draft training for vispec-jax (docs/training.md): data generation with the target, a grain
input pipeline, the reference's losses and a sharded two-stage trainer with orbax checkpoints.

    python -m train.datagen --config configs/tiny_qwen.py        # prompts -> ArrayRecord shards
    python -m train --config configs/tiny_qwen.py --workdir /tmp/run
"""
