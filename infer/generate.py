"""`python -m infer.generate`: answer prompts about images or videos with a Qwen2.5-VL
checkpoint (examples: --help). Bad input (a missing or unreadable file, a checkpoint that does
not load, a prompt too long for the cache, an option out of range) is one `error: ...` line on
stderr, exit status 2 (infer/cli.py).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp

import vispec_jax as vj
from infer import bench_common as common, cli
from vispec_jax import processing, sharding, testing

EPILOG = """\
examples:
  # no download: a tiny random model and a generated picture (the answer is gibberish)
  python -m infer.generate --tiny --prompt "Describe the image."

  # a real checkpoint folder (config.json + *.safetensors + tokenizer files)
  python -m infer.generate --model /ckpt/Qwen2.5-VL-7B-Instruct --image cat.png \\
      --prompt "What is the cat doing?" --max-new-tokens 128 --dtype bfloat16

  # two images placed in the text with <image> markers; sampling; JSON output
  python -m infer.generate --model DIR --image a.png --image b.png \\
      --prompt "Compare <image> with <image>." --temperature 0.7 --top-p 0.9 --seed 1 --json

  # a video: a folder of frames (natural order), a quoted glob, or an animated GIF/WebP/PNG or
  # multi-page TIFF (other video files: extract frames first, e.g. with ffmpeg)
  python -m infer.generate --model DIR --video 'clip/frame_*.jpg' --prompt "What happens?"
  python -m infer.generate --model DIR --video clip.gif --video-fps 10 --prompt "What happens?"

  # speculative decoding with a ViSpec draft (same answer as without, faster), a dynamic tree
  python -m infer.generate --model DIR --draft DRAFT_DIR --image cat.png --prompt "Describe." \\
      --tree dynamic --tree-depth 3 --tree-top-k 8 --tree-tokens 30 --json

  # a batch from a JSON-lines file: {"prompt": "...", "images": ["a.png"], "videos": []} per line
  python -m infer.generate --model DIR --prompts questions.jsonl --json

  # print the answer while it is generated (each accepted round at once, also with --draft)
  python -m infer.generate --model DIR --draft DRAFT_DIR --image cat.png --prompt "Describe." \\
      --stream

Without <image> markers, images and videos come before the prompt text.
--json prints {"answer", "tokens", "num_tokens", "prompt_tokens", "seconds",
"tokens_per_second"} (one object per line with --prompts; with --draft also "tau",
"tokens_per_forward" and "target_forwards"); seconds is the wall time of generation of the whole
batch, including compilation unless --warmup is given.
"""

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
PROMPT_KEYS = ("prompt", "images", "videos")


def parse_args(argv):
  p = cli.ArgumentParser(
      prog="python -m infer.generate", epilog=EPILOG,
      description="Answer one prompt about images or videos with a Qwen2.5-VL checkpoint.",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", metavar="DIR", help="Hugging Face checkpoint folder")
  src.add_argument("--tiny", action="store_true",
                   help="build a tiny random Qwen2.5-VL in a temporary folder (no download)")
  p.add_argument("--image", action="append", default=[], metavar="PATH",
                 help="an image file; repeat for several")
  p.add_argument("--video", action="append", default=[], metavar="FRAMES",
                 help="a video: a folder of frames, a glob of frame files, or a multi-frame image "
                      "file (animated GIF/WebP/PNG, TIFF); repeatable")
  p.add_argument("--video-fps", type=float, default=2.0,
                 help="frames per second of --video (default 2)")
  ask = p.add_mutually_exclusive_group(required=True)
  ask.add_argument("--prompt", help="the question; may contain <image> markers")
  ask.add_argument("--prompts", metavar="FILE.jsonl", help="a batch: one JSON object per line, "
                   '{"prompt": ..., "images": [...], "videos": [...]}')
  p.add_argument("--draft", metavar="DIR",
                 help="a ViSpec/EAGLE/Medusa draft folder: speculative decoding")
  p.add_argument("--tree", choices=("dynamic", "chain"), default="dynamic",
                 help="draft tree with --draft: EAGLE-2 dynamic tree (default) or a single chain")
  p.add_argument("--tree-depth", type=int, default=3, metavar="D",
                 help="tree expansion steps (default 3)")
  p.add_argument("--tree-top-k", type=int, default=8, metavar="K",
                 help="dynamic tree branching (default 8)")
  p.add_argument("--tree-tokens", type=int, default=30, metavar="T",
                 help="dynamic tree size including the root (default 30)")
  p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                 help="most tokens to generate (default 64)")
  p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
  p.add_argument("--top-k", type=int, default=0, metavar="K",
                 help="keep the K likeliest tokens; 0 = all (default)")
  p.add_argument("--top-p", type=float, default=1.0, metavar="P",
                 help="nucleus sampling mass in (0, 1]; 1 = off (default)")
  p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
  p.add_argument("--max-length", type=int, default=None, metavar="L",
                 help="prompt + new tokens limit (default: the model's max_position_embeddings)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="weights and compute dtype (default float32)")
  p.add_argument("--mesh", default=None, metavar="SPEC",
                 help="shard over a device mesh, e.g. 'data=2,tensor=4' (axes data, fsdp, tensor)")
  p.add_argument("--warmup", action="store_true",
                 help="generate once before the timed run, so seconds excludes compilation")
  p.add_argument("--json", action="store_true", help="print one JSON object instead of the answer")
  p.add_argument("--stream", action="store_true",
                 help="print the answer as it is generated (one --prompt; not with --json)")
  return p.parse_args(argv)


def validate(args):
  """Every option value that can be checked before anything is loaded (each error names it)."""
  if args.prompt is not None:
    if not args.prompt.strip():
      raise cli.UsageError("--prompt is empty")
    cli.check_text("--prompt", args.prompt)
  if args.stream and (args.prompts or args.json or args.warmup):
    raise cli.UsageError("--stream prints one answer as plain text: use it with --prompt, "
                         "without --prompts, --json or --warmup")
  if args.prompts is not None and (args.image or args.video):
    raise cli.UsageError("--image/--video go inside the --prompts file, one list per line")
  cli.check_int("--max-new-tokens", args.max_new_tokens, 1)
  if args.max_length is not None:
    cli.check_int("--max-length", args.max_length, 2)
    if args.max_length <= args.max_new_tokens:
      raise cli.UsageError(f"--max-length ({args.max_length}) must be greater than "
                           f"--max-new-tokens ({args.max_new_tokens})")
  cli.check_float("--temperature", args.temperature, 0.0)
  cli.check_int("--top-k", args.top_k, 0)
  cli.check_float("--top-p", args.top_p, 0.0, 1.0, lo_open=True)
  cli.check_int("--seed", args.seed, 0, cli.SEED_MAX)
  cli.check_float("--video-fps", args.video_fps, 1e-3, 1e3)
  for flag in ("--tree-depth", "--tree-top-k", "--tree-tokens"):
    cli.check_int(flag, getattr(args, flag[2:].replace("-", "_")), 1)
  for flag, folder in (("--model", args.model), ("--draft", args.draft)):
    if folder is not None:
      cli.check_folder(flag, folder)
  if args.mesh is not None:
    cli.check_mesh("--mesh", args.mesh)
  make_tree(args)  # the tree's own bounds (depth, size)


def make_tree(args):
  """The --tree, --tree-depth, --tree-top-k, --tree-tokens options -> vj.TreeConfig."""
  if args.tree == "chain":
    return cli.prefixed("--tree chain --tree-depth", vj.tree.from_spec, f"chain{args.tree_depth}")
  return cli.prefixed("--tree-depth/--tree-top-k/--tree-tokens", vj.tree.from_spec,
                      f"dynamic-d{args.tree_depth}k{args.tree_top_k}t{args.tree_tokens}")


def read_prompts(path: str) -> list[dict]:
  """The --prompts file: JSON lines of {"prompt", "images", "videos"}; clear errors by line."""
  rows = []
  for where, row in cli.read_jsonl(path):
    prompt = row.get("prompt") if isinstance(row, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
      raise cli.UsageError(f'{where}: expected {{"prompt": "...", "images": [...]}} with a '
                           "non-empty prompt")
    unknown = sorted(set(row) - set(PROMPT_KEYS))
    if unknown:
      raise cli.UsageError(f"{where}: unknown keys {unknown}; known: {list(PROMPT_KEYS)}")
    cli.check_text(f"{where}: prompt", prompt)
    paths = {key: row.get(key, []) for key in PROMPT_KEYS[1:]}
    for key, value in paths.items():
      if not isinstance(value, list):
        raise cli.UsageError(f"{where}: {key} must be a list of paths")
      for i, p in enumerate(value):
        if not isinstance(p, str) or not p:
          raise cli.UsageError(f"{where}: {key}[{i}] must be a path (a non-empty string), got "
                               f"{json.dumps(p)}")
    rows.append({"prompt": prompt, **paths})
  if not rows:
    raise cli.UsageError(f"{path} has no prompts")
  return rows


def video_frames(spec: str) -> list:
  """A folder of frames (image files in natural order), a glob of frame files, or the frames of
  one multi-frame image file (PIL images)."""
  if os.path.isfile(spec):
    return processing.load_frames(spec)
  if os.path.isdir(spec):
    paths = [os.path.join(spec, f) for f in os.listdir(spec)
             if f.lower().endswith(FRAME_EXTENSIONS)]
  else:
    paths = [f for f in glob.glob(spec) if os.path.isfile(f)]
  if not paths:
    raise FileNotFoundError(f"no video frames found for --video {spec!r}")
  return sorted(paths, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p)])


def load(args, stack: contextlib.ExitStack):
  """The target, the draft (or None) and the (sharded) batch of the prompts and their pictures,
  checked against the model's limits."""
  rows = read_prompts(args.prompts) if args.prompts else [
      {"prompt": args.prompt, "images": args.image, "videos": args.video}]
  if args.tiny:
    print("note: --tiny uses a random model, so the answer is gibberish", file=sys.stderr)
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vispec-tiny-"))
    args.model = testing.make_tiny_qwen(os.path.join(tmp, "model"))
    if not args.prompts and not args.image and not args.video:
      rows[0]["images"] = [os.path.join(tmp, "scene.png")]
      testing.scene_image().save(rows[0]["images"][0])
  # Read every image before loading the checkpoint: a typo should not cost a model load.
  images = [[vj.load_image(p) for p in r["images"]] for r in rows]
  videos = [[[vj.load_image(f) for f in video_frames(v)] for v in r["videos"]] for r in rows]
  mesh = sharding.make_mesh(args.mesh) if args.mesh else None
  if mesh is not None:  # until `stack` closes: KV caches made inside the programs follow RULES
    stack.enter_context(jax.set_mesh(mesh))
  target = vj.load_target(args.model, dtype=getattr(jnp, args.dtype), mesh=mesh)
  draft = vj.load_draft(args.draft, target) if args.draft else None
  text = target.config.text
  positions = text.max_position_embeddings
  if args.max_length is not None and args.max_length > positions:
    raise cli.UsageError(f"--max-length {args.max_length} is more than the model's "
                         f"{positions} positions (max_position_embeddings)")
  max_length = args.max_length or positions
  if max_length <= args.max_new_tokens:
    raise cli.UsageError(f"the model allows {max_length} positions, not enough for "
                         f"--max-new-tokens {args.max_new_tokens}")
  tree_top_k = args.tree_top_k if draft is not None and args.tree == "dynamic" else 0
  for flag, k in (("--top-k", args.top_k), ("--tree-top-k", tree_top_k)):
    if k > text.vocab_size:
      raise cli.UsageError(f"{flag} {k} is more than the vocabulary's {text.vocab_size} tokens")
  try:
    batch = vj.prepare(target, [r["prompt"] for r in rows], images=images, videos=videos,
                       video_fps=args.video_fps, max_length=max_length - args.max_new_tokens)
  except vj.InputError as e:
    if "longer than" not in str(e):
      raise
    raise vj.InputError(f"{e} (max length {max_length} minus {args.max_new_tokens} new "
                        f"tokens)") from None
  return target, draft, batch if mesh is None else sharding.shard_batch(batch, mesh)


def run(args, stack: contextlib.ExitStack) -> list[dict]:
  """Loads, prepares, generates; returns one result dict per prompt."""
  target, draft, batch = load(args, stack)
  out_stream = StdoutStream() if args.stream else None
  streamer = vj.TextStreamer(target.tokenizer, write=out_stream) if args.stream else None
  drafting = () if draft is None else (draft.drafter, draft.params, make_tree(args))
  gen = common.decoder(target, batch, args.max_new_tokens, *drafting,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       key=jax.random.PRNGKey(args.seed), on_tokens=streamer)
  if args.warmup:
    gen()
  seconds, out = common.timed(gen)
  if streamer is not None:
    streamer.finish()
    if out_stream.closed:
      raise BrokenPipeError("stdout was closed while streaming")
  results = []
  for i, tokens in enumerate(vj.trim(out)):
    r = {"answer": target.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens,
         "num_tokens": len(tokens), "prompt_tokens": int(batch.prompt_lengths[i]),
         "seconds": round(seconds, 4),
         "tokens_per_second": round(len(tokens) / seconds, 2) if seconds > 0 else None}
    if draft is not None:
      r["tau"] = round(float(out.stats.tau[i]), 4)
      r["tokens_per_forward"] = round(float(out.stats.tokens_per_forward[i]), 4)
      r["target_forwards"] = int(out.stats.target_forwards[i])
    results.append(r)
  return results


class StdoutStream:
  """The streamer's `write`: text to stdout until its reader goes away (`| head`), then quiet
  (an exception inside the compiled loop's callback would not stop the loop); `run` exits 141."""

  def __init__(self):
    self.closed = False

  def __call__(self, row: int, text: str) -> None:
    del row
    if self.closed:
      return
    try:
      sys.stdout.write(text)
      sys.stdout.flush()
    except BrokenPipeError:
      self.closed = True
      cli.quiet_stdout()


def main(argv=None) -> int:
  args = parse_args(argv)  # usage errors exit 2 here
  if hasattr(sys.stdout, "reconfigure"):  # not in a notebook
    sys.stdout.reconfigure(errors="replace")  # random models decode to stray bytes

  def body() -> int:
    validate(args)
    with contextlib.ExitStack() as stack:
      results = run(args, stack)
    if args.stream:
      print()  # the answer itself was printed while it was generated
      return 0
    for r in results:
      print(json.dumps(r) if args.json else r["answer"])
    return 0

  return cli.run(body)


if __name__ == "__main__":
  sys.exit(main())
