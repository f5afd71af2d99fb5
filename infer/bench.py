"""Benchmarks of vispec-jax against references, measured in one process.

    python -m infer.bench vanilla [--new-tokens 128] [--repeats 5] [--json out.json]
    python -m infer.bench spec [--batch 1 4] [--trees ...] [--mesh data=2,tensor=4]
    python -m infer.bench pieces [--batch 1]
    python -m infer.bench cost [--tau 1 2 3 4] [--target DIR] [--trees chain4 dynamic]
    python -m infer.bench table --target DIR --draft NAME=DIR [--draft NAME=DIR ...] [--scenes 8]
        [--temperatures 0 1] [--max-new-tokens 512] [--tree dynamic|chain4|...] [--markdown]
    python -m infer.bench length --target DIR --draft NAME=DIR ... [--lengths 64 128 256 512]
        [--scenes 4] --out length.png [--json out.json]
    python -m infer.bench facts --target DIR [--scenes 32] [--control] [--json out.json]
    python -m infer.bench batch [--target DIR] [--draft DIR] [--batch 1 4 16 32]
        [--new-tokens 128 512] [--tree chain6] [--repeats 3] [--json out.json] [--markdown]
    python -m infer.bench gpu --out DIR [--tiny] [--budget-s 420]

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
