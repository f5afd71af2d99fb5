"""The error of an unusable checkpoint, in a module of its own so that both readers raise it:
`checkpoints` (safetensors, name maps) and `torch_bin` (pytorch_model.bin), which it imports."""


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be loaded; the message names the file or tensor."""
