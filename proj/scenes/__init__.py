"""The scenes world: procedural images of shapes with long answers about them (generator.py), their
TFDS builder (tfds_builder.py), a fact checker for answers (facts.py), and the small scenes
target's training: vision tower pretraining (vision_pretrain.py, stage 0), the target trainer
(train_target.py, target_eval.py, target_folder.py, size_target.py) and their configs.
The embedded demo models (models/scenes) come from here (docs/embedded-model.md).
"""
