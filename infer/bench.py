"""Benchmarks of vispec-jax against references, measured in one process.

    python -m infer.bench {vanilla,spec,pieces,cost,table,length,facts,batch,gpu} [options]

Each subcommand is a module, infer/bench_<name>.py (table and length: bench_table.py), whose
docstring says what it measures and how; infer/bench_common.py holds what they share.
Timings move from run to run on shared machines: compare the ratio, not absolute numbers.
"""

from __future__ import annotations

import sys

from infer import (bench_batch, bench_cost, bench_facts, bench_gpu, bench_pieces, bench_spec,
                   bench_table, bench_vanilla, cli)

# In --help order; each adds its parser(s), whose `main` default runs the command.
SUBCOMMANDS = (bench_vanilla, bench_spec, bench_pieces, bench_cost, bench_table, bench_batch,
               bench_facts, bench_gpu)


def main(argv=None) -> int:
  """Bad options and folders: one `error:` line, exit 2 (infer/cli.py)."""
  return cli.run(lambda: _main(argv))


def _main(argv) -> int:
  parser = cli.ArgumentParser(prog="python -m infer.bench", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for module in SUBCOMMANDS:
    module.add_parser(sub)
  args = parser.parse_args(argv)
  return args.main(args)


if __name__ == "__main__":
  sys.exit(main())
