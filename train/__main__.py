"""python -m train --config configs/<name>.py[:arg] --workdir DIR [--config.key=value ...]

Multi-host: every host runs it with --coordinator HOST:PORT --num_processes N --process_id I (or,
on a TPU pod, --distributed: jax.distributed finds its peers).
"""

import jax
from absl import flags, logging
from ml_collections import config_flags

from infer import cli as checks
from train import cli, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl and the draft.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  cli.setup()
  if _COORDINATOR.value:
    n = checks.check_int("--num_processes", _NUM_PROCESSES.value or 0, 1)
    checks.check_int("--process_id", _PROCESS_ID.value if _PROCESS_ID.value is not None else -1,
                     0, n - 1)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  out = trainer.train(_CONFIG.value, _WORKDIR.value)
  logging.info("finished at step %d; draft: %s", out["step"], out["draft"])


if __name__ == "__main__":
  cli.run(main)
