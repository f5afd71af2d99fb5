"""What every command line shares (infer.*, train, train.datagen, proj.scenes.*): bad input is
one `error: ...` line on stderr, exit status 2, never a traceback; a closed stdout ends quietly.

Exit statuses: 0 done, 1 a failed result check or an internal error (a bug: one line too),
2 bad input (a ValueError or OSError), 130 Ctrl-C, 141 stdout closed by its reader (as for
SIGPIPE). `VISPEC_TRACEBACK=1` prints the full traceback as well. The `check_*` helpers validate
option values before anything is loaded, raising a `UsageError` that names the option.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from collections.abc import Callable

from vispec_jax import sharding

INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # jax.random.PRNGKey keeps 32 bits: larger seeds would repeat smaller ones
EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141


class UsageError(ValueError):
  """A bad option value, found before anything is loaded."""


class ArgumentParser(argparse.ArgumentParser):
  """argparse with its errors as one `error:` line (naming the option), exit status 2."""

  def error(self, message):
    self.exit(EXIT_BAD_INPUT, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def error_line(e: BaseException) -> str:
  """One line: the exception's message with its whitespace (newlines) collapsed."""
  return " ".join(str(e).split()) or type(e).__name__


def is_input_error(e: BaseException) -> bool:
  """Bad input (exit 2) rather than a bug: ValueError (our errors, JSON, Unicode), OSError, and
  XLA running out of memory (a size too large)."""
  if isinstance(e, (ValueError, OSError)):
    return True
  xla = type(e).__name__ in ("XlaRuntimeError", "JaxRuntimeError")
  return xla and "RESOURCE_EXHAUSTED" in str(e)


def report(e: BaseException) -> int:
  """Prints the `error:` line for `e`; returns the exit status."""
  if os.environ.get("VISPEC_TRACEBACK") == "1":
    traceback.print_exception(e, file=sys.stderr)
  if is_input_error(e):
    print("error: " + error_line(e), file=sys.stderr)
    return EXIT_BAD_INPUT
  print(f"error: internal error: {type(e).__name__}: {error_line(e)} (VISPEC_TRACEBACK=1 shows "
        "the traceback)", file=sys.stderr)
  return 1


def quiet_stdout() -> None:
  """Points stdout at /dev/null once its reader went away, so that the final flush cannot fail."""
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
  except (OSError, ValueError, AttributeError):  # not a real file (tests, notebooks)
    pass


def run(fn: Callable[[], int | None]) -> int:
  """Runs a command's body; turns its errors into one line and an exit status."""
  if sys.stdout is None:  # started with stdout closed (`>&-`)
    print("error: stdout is closed", file=sys.stderr)
    return EXIT_BAD_INPUT
  try:
    status = fn()
    sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
    return 0 if status is None else status
  except BrokenPipeError:
    quiet_stdout()
    return EXIT_BROKEN_PIPE
  except KeyboardInterrupt:
    return EXIT_INTERRUPTED
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    return report(e)


# ------------------------------------------------------------------------------ checks


def read_jsonl(path: str, error: type[Exception] = UsageError) -> list[tuple[str, object]]:
  """The non-blank lines of a UTF-8 JSON-lines file as ("path:line", value); bad text or JSON
  raises `error`, naming the file and line."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise error(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  rows = []
  for n, line in enumerate(lines, 1):
    if line.strip():
      try:
        rows.append((f"{path}:{n}", json.loads(line)))
      except json.JSONDecodeError as e:
        raise error(f"{path}:{n}: not valid JSON ({e.msg})") from None
  return rows


def check_int(flag: str, value: int, lo: int, hi: int = INT32_MAX) -> int:
  """`lo <= value <= hi`, else a UsageError naming `flag`."""
  if not lo <= value <= hi:
    raise UsageError(f"{flag} must be in [{lo}, {hi}], got {value}")
  return value


def check_float(flag: str, value: float, lo: float, hi: float | None = None,
                lo_open: bool = False) -> float:
  """A finite number in [lo, hi] ((lo, hi] with `lo_open`), else a UsageError naming `flag`."""
  above = value > lo if lo_open else value >= lo
  if not (math.isfinite(value) and above and (hi is None or value <= hi)):
    want = (">" if lo_open else ">=") + f" {lo:g}" + ("" if hi is None else f" and <= {hi:g}")
    raise UsageError(f"{flag} must be a finite number and {want}, got {value}")
  return value


def check_text(what: str, text: str) -> str:
  """Valid Unicode the tokenizer can encode (no lone surrogate from a JSON escape like
  "\\udcff" or a non-UTF-8 terminal)."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise UsageError(f"{what} is not valid Unicode text: {e.reason} "
                     f"{text[e.start]!r} at character {e.start}") from None
  return text


def check_output(flag: str, path: str) -> str:
  """A file we can write later: not a folder, its folder exists and is writable."""
  if os.path.isdir(path):
    raise UsageError(f"{flag} {path} is a folder, not a file name")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UsageError(f"{flag} {path}: folder {parent} not found")
  if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise UsageError(f"{flag} {path} is not writable")
  return path


def check_folder(flag: str, path: str) -> str:
  if not os.path.exists(path):
    raise UsageError(f"{flag} folder not found: {path}")
  if not os.path.isdir(path):
    raise UsageError(f"{flag} {path} is a file, not a folder")
  return path


def check_mesh(flag: str, spec: str) -> dict[str, int]:
  """A device mesh spec ('data=2,tensor=4') that this machine's devices fill."""
  try:
    return sharding.parse_mesh(spec)
  except ValueError as e:
    raise UsageError(f"{flag} {spec!r}: {e}") from None


def prefixed(prefix: str, fn: Callable, *args, **kwargs):
  """`fn(*args, **kwargs)`, a ValueError's message prefixed with `prefix` (the option)."""
  try:
    return fn(*args, **kwargs)
  except ValueError as e:
    raise UsageError(f"{prefix}: {error_line(e)}") from None
