"""Answer one prompt about images (or videos) with a Qwen2.5-VL checkpoint: the command line.

    python -m infer.generate --tiny --prompt "Describe the image."
    python -m infer.generate --model /ckpt/Qwen2.5-VL-7B-Instruct --image cat.png --prompt "What is this?"

Bad input (missing or unreadable files, a checkpoint that does not load, a prompt too long for
the cache, out-of-range options) is reported as one `error: ...` line on stderr, exit status 2.
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
import time

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

  # a video: a folder of frames (natural order) or a quoted glob
  python -m infer.generate --model DIR --video 'clip/frame_*.jpg' --prompt "What happens?"

Without <image> markers, images and videos come before the prompt text.
--json prints {"answer", "tokens", "num_tokens", "prompt_tokens", "seconds",
"tokens_per_second"}; seconds is the wall time of generation, including compilation unless
--warmup is given.
"""

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class UsageError(ValueError):
  """A bad option value, found before anything is loaded."""


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog="python -m infer.generate", epilog=EPILOG,
      description="Answer one prompt about images or videos with a Qwen2.5-VL checkpoint.",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--model", metavar="DIR", help="Hugging Face checkpoint folder")
  src.add_argument("--tiny", action="store_true",
                   help="build a tiny random Qwen2.5-VL in a temporary folder (no download)")
  p.add_argument("--image", action="append", default=[], metavar="PATH",
                 help="an image file; repeat for several")
  p.add_argument("--video", action="append", default=[], metavar="FRAME_DIR_OR_GLOB",
                 help="a video as a folder of frames or a glob of frame files; repeatable")
  p.add_argument("--video-fps", type=float, default=2.0, help="frames per second of --video (default 2)")
  p.add_argument("--prompt", required=True, help="the question; may contain <image> markers")
  p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                 help="most tokens to generate (default 64)")
  p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
  p.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K likeliest tokens; 0 = all (default)")
  p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass in (0, 1]; 1 = off (default)")
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
  return p.parse_args(argv)


def validate(args):
  if not args.prompt.strip():
    raise UsageError("--prompt is empty")
  if args.max_new_tokens <= 0:
    raise UsageError(f"--max-new-tokens must be > 0, got {args.max_new_tokens}")
  if not args.temperature >= 0:  # also refuses nan
    raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
  if args.top_k < 0:
    raise UsageError(f"--top-k must be >= 0, got {args.top_k}")
  if not 0.0 < args.top_p <= 1.0:
    raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
  if not args.video_fps > 0:
    raise UsageError(f"--video-fps must be > 0, got {args.video_fps}")
  if args.max_length is not None and args.max_length <= args.max_new_tokens:
    raise UsageError(f"--max-length ({args.max_length}) must be greater than "
                     f"--max-new-tokens ({args.max_new_tokens})")


def _natural_key(path: str):
  return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path)]


def video_frames(spec: str) -> list[str]:
  """A folder of frames (image files in natural order) or a glob of frame files."""
  if os.path.isdir(spec):
    paths = [os.path.join(spec, f) for f in os.listdir(spec)
             if f.lower().endswith(FRAME_EXTENSIONS)]
  else:
    paths = [f for f in glob.glob(spec) if os.path.isfile(f)]
  if not paths:
    raise FileNotFoundError(f"no video frames found for --video {spec!r}")
  return sorted(paths, key=_natural_key)


def run(args, stack: contextlib.ExitStack) -> dict:
  import jax
  import jax.numpy as jnp

  import vispec_jax as vj
  from vispec_jax import testing

  if args.tiny:
    print("note: --tiny uses a random model, so the answer is gibberish", file=sys.stderr)
    tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vispec-tiny-"))
    args.model = testing.make_tiny_qwen(os.path.join(tmp, "model"))
    if not args.image and not args.video:
      args.image = [os.path.join(tmp, "scene.png")]
      testing.scene_image().save(args.image[0])

  # Read every image before loading the checkpoint: a typo should not cost a model load.
  images = [vj.load_image(p) for p in args.image]
  videos = [[vj.load_image(f) for f in video_frames(v)] for v in args.video]

  mesh = None
  if args.mesh:
    from vispec_jax import sharding
    mesh = sharding.make_mesh(args.mesh)
  target = vj.load_target(args.model, dtype=getattr(jnp, args.dtype), mesh=mesh)
  max_length = args.max_length or target.config.text.max_position_embeddings
  if max_length <= args.max_new_tokens:
    raise UsageError(f"the model allows {max_length} positions, not enough for "
                     f"--max-new-tokens {args.max_new_tokens}")
  try:
    batch = vj.prepare(target, [args.prompt], images=[images], videos=[videos],
                       video_fps=args.video_fps, max_length=max_length - args.max_new_tokens)
  except vj.InputError as e:
    if "longer than" not in str(e):
      raise
    raise vj.InputError(f"{e} (max length {max_length} minus {args.max_new_tokens} new "
                        f"tokens)") from None
  if mesh is not None:
    batch = sharding.shard_batch(batch, mesh)

  def gen():
    out = vj.generate(target, batch, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      key=jax.random.PRNGKey(args.seed))
    return jax.block_until_ready(out)

  if args.warmup:
    gen()
  start = time.perf_counter()
  out = gen()
  seconds = time.perf_counter() - start
  tokens = vj.trim(out)[0]
  return {
      "answer": target.tokenizer.decode(tokens, skip_special_tokens=True),
      "tokens": tokens,
      "num_tokens": len(tokens),
      "prompt_tokens": int(batch.prompt_lengths[0]),
      "seconds": round(seconds, 4),
      "tokens_per_second": round(len(tokens) / seconds, 2) if seconds > 0 else None,
  }


def main(argv=None) -> int:
  args = parse_args(argv)  # usage errors exit 2 here
  try:
    validate(args)
    with contextlib.ExitStack() as stack:
      result = run(args, stack)
  except (ValueError, OSError) as e:  # InputError, CheckpointError, ConfigError are ValueErrors
    print("error: " + (" ".join(str(e).split()) or type(e).__name__), file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130
  if args.json:
    print(json.dumps(result))
  else:
    sys.stdout.reconfigure(errors="replace")  # random models decode to stray bytes
    print(result["answer"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
