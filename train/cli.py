"""Process setup and CLI rules of the absl entry points (train, train.datagen, proj.scenes):
`run(main)` is `absl.app.run(main)` where a bad flag, config file, key or value is one
`error: ...` line naming it, exit status 2 (infer/cli.py), and `--help` exits 0.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys

from absl import app, flags

from infer import cli

HELP_FLAGS = ("-?", "-h", "--help", "-help", "--helpshort", "-helpshort", "--helpfull",
              "-helpfull", "--helpxml", "-helpxml")


def _drop_chatter(record) -> bool:
  """A logging filter: drops orbax's per-save INFO lines (dozens per checkpoint)."""
  return record.levelno > std_logging.INFO or "orbax" not in record.pathname


def setup() -> None:
  """Keeps PyTorch out (transformers imports it, ~10 s, for classes training never runs) unless
  VISPEC_ALLOW_TORCH=1; quiets orbax."""
  # Only before transformers has looked for torch: once it has found it, a blocked torch breaks
  # its later lazy imports (e.g. a test process that imported transformers first).
  if (os.environ.get("VISPEC_ALLOW_TORCH") != "1" and "torch" not in sys.modules
      and "transformers" not in sys.modules):
    sys.modules["torch"] = None  # `import torch` now fails fast; transformers runs without it
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  for handler in std_logging.getLogger().handlers + std_logging.getLogger("absl").handlers:
    handler.addFilter(_drop_chatter)
  std_logging.getLogger("absl").addFilter(_drop_chatter)


def _config_file(argv: list[str]) -> str | None:
  """The file of `--config FILE[:arg]` / `--config=FILE[:arg]` in argv, if any."""
  for i, a in enumerate(argv):
    if a in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
    m = re.fullmatch(r"--?config=(.*)", a)
    if m:
      return m.group(1).split(":", 1)[0]
  return None


def flag_error(argv: list[str], e: Exception) -> str:
  """One line for an exception raised while absl parsed `argv` (flags and config overrides)."""
  message = str(e)
  lines = [l.strip() for l in message.strip().splitlines() if l.strip()]
  if isinstance(e, (KeyError, AttributeError)):  # an override of a key the config does not have
    key = message.strip("\"' ")
    culprit = next((a.split("=", 1)[0] for a in argv
                    if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")),
                   "--config.*")
    return f"{culprit}: the config has no key {key!r}"
  if any(l.startswith("Traceback") for l in lines):  # the config file raised: keep its message
    return f"{lines[0]} {lines[-1]}"
  config = _config_file(argv)
  if config is not None and not isinstance(e, flags.Error):
    return f"--config {config}: cannot load it: {type(e).__name__}: {' '.join(lines)}"
  return " ".join(lines) or type(e).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, errors as one line (exit 2), --help exit 0."""
  config = _config_file(argv[1:])
  if config is not None and not os.path.isfile(config) and not set(argv[1:]) & set(HELP_FLAGS):
    print(f"error: --config {config}: file not found", file=sys.stderr)
    sys.exit(cli.EXIT_BAD_INPUT)
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    if set(argv[1:]) & set(HELP_FLAGS):  # absl's help flags exit 1 after printing
      sys.exit(0)
    raise
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("VISPEC_TRACEBACK") == "1":
      raise
    print("error: " + flag_error(argv[1:], e), file=sys.stderr)
    sys.exit(cli.EXIT_BAD_INPUT)


def run(main) -> None:
  """absl.app.run(main) with one-line errors (flags, config, and everything `main` raises)."""
  app.run(lambda argv: cli.run(lambda: main(argv)), flags_parser=parse_flags)
