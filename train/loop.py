"""What every training loop here shares (the draft trainer, proj/scenes' target trainer and
stage 0): the mesh, the optimizer, sharded state, batches on devices, the orbax checkpoints that
resume, metrics logging and the loop. A trainer calls `setup_mesh`, builds its params and data
iterator, then `Run.create`, `Run.jit_step` and `Run.fit`. State is {"params", "opt_state",
"step"}; a checkpoint holds it and the data iterator's position, so a restart continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from train import data, sharding


def schedule(config, total_steps: int, warmup: int):
  """Linear warmup to optim.lr, then linear decay to 0 at the last step."""
  lr = config.optim.lr
  warmup = max(0, min(warmup, total_steps))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup, 1)),
       optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))], [warmup])


def make_optimizer(config, sched) -> optax.GradientTransformation:
  """Clipping (by value and/or global norm), then AdamW. `optim.lr_scales` ({params path
  prefix: multiplier}, the longest matching prefix wins; 0 freezes) scales a subtree's updates."""
  o = config.optim
  parts = []
  if o.clip_value:
    parts.append(optax.clip(o.clip_value))
  if o.clip_norm:
    parts.append(optax.clip_by_global_norm(o.clip_norm))
  parts.append(optax.adamw(sched, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay))
  scales = {k: float(v) for k, v in (o.get("lr_scales") or {}).items()}
  if scales:  # AdamW's update (step and decay) is proportional to the lr: scale it per subtree
    parts.append(optax.stateless(lambda updates, params=None: jax.tree_util.tree_map_with_path(
        lambda path, u: u * lr_scale(scales, path), updates)))
  return optax.chain(*parts)


def lr_scale(scales: dict[str, float], path) -> float:
  """The multiplier of the longest prefix in `scales` of a params key path (1 if none)."""
  name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  best = max((p for p in scales if name == p or name.startswith(p + "/")), key=len, default=None)
  return 1.0 if best is None else scales[best]


def put_global(tree, shardings):
  """Host values (the same on every process) -> global arrays with the given shardings."""
  def one(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)


def to_host(tree):
  """Global arrays -> NumPy on every process (gathers shards other processes hold)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def init_state(tx, host_params, param_sh, mesh) -> tuple[dict, dict]:
  """(state, its shardings): params placed by `param_sh`, AdamW moments sharded like them."""
  params = put_global(host_params, param_sh)
  repl = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, host_params),
                                 param_sh, transform_non_params=lambda _: repl)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  state = {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
  state_sh = {"params": param_sh, "opt_state": opt_sh, "step": repl}
  return jax.device_put(state, state_sh), state_sh


def grad_step(tx, loss_fn: Callable, state: dict, *args) -> tuple[dict, dict]:
  """One optimizer update of `state` by the gradient of `loss, metrics = loss_fn(params, *args)`.
  Returns (state, metrics + grad_norm)."""
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], *args)
  metrics["grad_norm"] = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
          "step": state["step"] + 1}, metrics


def device_batch(mesh, batch: dict) -> dict:
  """This process's rows of a host batch -> global arrays split over the batch axes."""
  sh = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, v) for k, v in batch.items()
          if k not in data.HOST_KEYS}


class WorkdirInUse(ValueError):
  """Another run holds the workdir (or the datagen worker's chunks)."""


@contextlib.contextmanager
def exclusive(path: str, what: str, wait: bool = False):
  """An exclusive `fcntl.flock` on the file `path` while the block runs; another holder makes it
  raise WorkdirInUse naming `what` and the holder (or, with `wait`, wait). A killed process
  leaves no stale lock."""
  with open(path, "a+", encoding="utf-8") as f:  # closing it releases the lock
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise WorkdirInUse(f"{what} is in use by another run ({holder}); wait for it to end or "
                         f"choose another") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    yield


def workdir_lock(workdir: str):
  """Creates `workdir` (refusing a file) and locks it for this run. Each process locks its own
  `run-<process index>.lock`, so the processes of one run share it."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a folder")
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"run-{jax.process_index()}.lock")
  return exclusive(path, f"--workdir {workdir}")


def restore_latest(mngr, state, train_iter) -> tuple[dict, int]:
  """(state, step) of the newest checkpoint (restored into `state`'s shardings, and the data
  iterator moved to its position), or (state, 0) when there is none."""
  if mngr.latest_step() is None:
    return state, 0
  start = int(mngr.latest_step())
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  restored = mngr.restore(start, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  train_iter.set_state(restored["data"])
  logging.info("resumed from step %d", start)
  return restored["state"], start


def save(mngr, step: int, state, train_iter, force: bool = False) -> None:
  mngr.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(train_iter.get_state())))


class Logger:
  """Metrics to stdout and workdir/metrics.jsonl (process 0), plus a progress bar."""

  def __init__(self, workdir: str, total: int, start: int, progress: bool):
    self.main = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    if self.main:
      drop_redone_rows(self.path, start)
    self.bar = tqdm(total=total, initial=start, unit="step", desc="train", dynamic_ncols=True,
                    disable=not (self.main and progress))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.main:
      return
    row = {"step": step, **{k: _scalar(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in row.items() if k != "ids")
    if self.bar.disable:
      print(shown, flush=True)
    else:
      self.bar.write(shown)


def drop_redone_rows(path: str, step: int) -> None:
  """Drops the rows after `step` (a resumed run redoes them) and a line cut short by a crash."""
  if not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
      kept.append(line)
  if len(kept) == len(lines):
    return
  write_atomic(path, "".join(l + "\n" for l in kept).encode())


def write_atomic(path: str, data: bytes) -> None:
  """Writes `path` through a temporary name in its folder and a rename (never half a file)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _scalar(v):
  if isinstance(v, (list, tuple)):
    return list(v)
  a = np.asarray(v)
  if a.ndim:
    return a.tolist()
  return a.item() if a.dtype.kind in "iub" else float(a)


def compile_info(step_fn, *args) -> dict:
  """Compiles `step_fn` for these arguments: the compile time and XLA's memory per device."""
  t0 = time.time()
  mem = step_fn.lower(*args).compile().memory_analysis()
  info = {"compile_s": time.time() - t0}
  if mem is not None:
    info["memory_per_device_mb"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                    + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**20
  return info


def setup_mesh(config) -> Mesh:
  """The compilation cache, the mesh (`config.mesh`), and a global batch that splits over it."""
  if config.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache)
  mesh = sharding.make_mesh(config.mesh)
  if config.batch_size % sharding.batch_divisor(mesh):
    raise ValueError(f"batch_size {config.batch_size} is not a multiple of the "
                     f"{sharding.batch_divisor(mesh)} devices the batch is split over")
  return mesh


@dataclasses.dataclass
class Run:
  """A trainer's loop before it runs: optimizer, sharded state (restored from the newest
  checkpoint, if any: `start` is its step, `train_iter` at its position), checkpoint manager."""
  config: Any
  workdir: str
  mesh: Mesh
  sched: Callable
  tx: optax.GradientTransformation
  state: dict
  state_sh: dict
  mngr: ocp.CheckpointManager
  train_iter: Any
  total: int
  start: int

  @classmethod
  def create(cls, config, workdir: str, mesh, host_params, param_sh, train_iter, total: int,
             warmup: int) -> Run:
    sched = schedule(config, total, warmup)
    tx = make_optimizer(config, sched)
    state, state_sh = init_state(tx, host_params, param_sh, mesh)
    mngr = ocp.CheckpointManager(  # workdir/checkpoints, saved every checkpoint.every steps
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep, save_interval_steps=config.checkpoint.every,
            enable_async_checkpointing=config.checkpoint.use_async, create=True),
        item_names=("state", "data"))
    state, start = restore_latest(mngr, state, train_iter)
    return cls(config, workdir, mesh, sched, tx, state, state_sh, mngr, train_iter, total, start)

  def jit_step(self, step_fn: Callable) -> Callable:
    """`step_fn(state, batch, *step_args) -> (state, metrics)` jitted, the state donated."""
    return jax.jit(step_fn, out_shardings=(self.state_sh, sharding.replicated(self.mesh)),
                   donate_argnums=(0,))

  def jit_eval(self, eval_fn: Callable) -> Callable:
    return jax.jit(eval_fn, out_shardings=sharding.replicated(self.mesh))

  def fit(self, step_fn: Callable, evaluate: Callable[[dict, int], dict] | None = None, *,
          step_args: tuple = (), skip: bool = False):
    """Runs steps start..min(total, stop_at_step), logging every `log_every` steps, evaluating
    every `eval_every` (and at the last), saving every `checkpoint.every`, on SIGTERM (then
    stopping) and at a time-boxed stop; `skip`: no step (export only). Returns (state, step,
    last metrics, last eval)."""
    out = (self.state, self.start, {}, {}) if skip else _steps(self, step_fn, evaluate, step_args)
    self.mngr.close()
    return out


def _steps(run: Run, step_fn, evaluate, step_args):
  """Run.fit's loop."""
  config, workdir, mngr, train_iter = run.config, run.workdir, run.mngr, run.train_iter
  state, start, total, mesh, sched = run.state, run.start, run.total, run.mesh, run.sched
  stop = {"sigterm": False}
  in_main = threading.current_thread() is threading.main_thread()  # signals need the main thread
  if in_main:
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
  logger = Logger(workdir, total, start, config.progress)
  step, last, last_eval, sigterm = start, {}, {}, False
  pending, t_log, tokens = [], time.time(), 0
  end = min(total, config.stop_at_step or total)
  try:
    while step < end and not sigterm:
      batch = next(train_iter)
      ids = batch["global_index"].tolist()
      tokens += int(batch["global_tokens"])
      dbatch = device_batch(mesh, batch)
      if step == start:  # compile up front: report the compile time and memory per device
        info = compile_info(step_fn, state, dbatch, *step_args)
        logging.info("train step: %s", info)
        logger.write(step, info)
        t_log = time.time()
      state, metrics = step_fn(state, dbatch, *step_args)
      step += 1
      pending.append((step, metrics, ids))
      if step % config.log_every == 0 or step == total:
        done = jax.device_get(pending)  # waits for the steps: dispatch runs ahead of them
        rate = tokens / max(time.time() - t_log, 1e-9)
        for s, m, i in done:
          row = dict(m, lr=float(sched(s - 1)))
          if config.log_sample_ids:
            row["ids"] = i
          if s == step:
            row["tokens_per_s"] = rate
          logger.write(s, row)
          last = row
        logger.bar.set_postfix({"loss": f"{last['loss']:.4g}", "tok/s": f"{rate:.0f}"},
                               refresh=False)
        logger.bar.update(len(pending))
        pending, t_log, tokens = [], time.time(), 0
      if evaluate and config.eval_every and (step % config.eval_every == 0 or step == total):
        last_eval = evaluate(state, step)
        logger.write(step, last_eval)
      save(mngr, step, state, train_iter)
      if step == config.debug.crash_after_step:  # tests: die like a lost machine
        mngr.wait_until_finished()
        os.kill(os.getpid(), signal.SIGKILL)
      if step == config.debug.sigterm_after_step:  # tests: a preemption notice
        os.kill(os.getpid(), signal.SIGTERM)
      sigterm = stop["sigterm"]
      if jax.process_count() > 1:
        sigterm = bool(np.any(multihost_utils.process_allgather(np.asarray(sigterm))))
      if sigterm:
        logging.warning("SIGTERM: saving step %d and stopping", step)
    if sigterm or step < total:  # preempted or time-boxed: leave a checkpoint to resume from
      mngr.wait_until_finished()
      if mngr.latest_step() != step:
        save(mngr, step, state, train_iter, force=True)
    mngr.wait_until_finished()
  finally:
    if in_main:
      signal.signal(signal.SIGTERM, previous)
    logger.bar.close()
  if pending:  # stopped between two log steps
    for s, m, i in jax.device_get(pending):
      logger.write(s, dict(m))
  return state, step, last, last_eval
