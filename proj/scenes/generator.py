"""Procedural scenes: images of shapes on a 3x3 grid and long answers about them.

The embedded demo model is trained on these (issue 8). Everything is pure Python/NumPy/PIL
and a function of the seed, so the same seed gives the same image bytes and the same text.

    image, scene = make_scene(seed)                         # PIL image + a JSON-able dict
    question, answer = describe(scene, "count", rng)        # one question kind
    ex = sample(seed)                                       # image, question, answer, kind, ...

A scene is a background colour and 3 to 6 objects, each in its own cell of a 3x3 grid (jittered
inside the cell), with a shape, a colour, a size and a texture; no two objects share both colour
and shape, so "the red circle" always names one object. The questions never name what is in
the picture (a colour or shape they ask about is drawn independently of the scene), while the
answers enumerate the objects, count them per colour, shape, size, texture, row and column,
relate them spatially and summarise: a regular language over a small vocabulary (a small
transformer can learn it) whose content only the image determines. Answers are at least 300
tokens long with the scenes tokenizer (checked in tests/test_scenes.py).

Command line:
    python -m proj.scenes.generator tokenizer --out DIR [--samples 4000] [--vocab-size 2048]
    python -m proj.scenes.generator show --seed 3 [--kind describe] [--style bold] [--out scene.png]
    python -m proj.scenes.generator stats --tokenizer DIR [--samples 500]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image, ImageDraw

from vispec_jax.checkpoints import write_folder
from vispec_jax import testing
from vispec_jax.testing import CHAT_TEMPLATE, SPECIAL_TOKENS

# ---------------------------------------------------------------------------- vocabulary

COLOURS = {  # name -> RGB; all far from every background
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
    "yellow": (240, 205, 30), "purple": (140, 60, 180), "orange": (245, 135, 20),
    "pink": (245, 120, 185), "brown": (125, 75, 35), "cyan": (40, 200, 215),
}
BACKGROUNDS = {"white": (250, 250, 250), "grey": (175, 175, 175), "black": (20, 20, 20),
               "beige": (230, 220, 190)}
SHAPES = ["circle", "square", "triangle", "star", "diamond", "hexagon", "cross"]
SIZES = {"small": 0.2, "medium": 0.3, "large": 0.42}  # radius as a fraction of the cell side
# Scene styles: the shapes drawn and the sizes' radii. "classic" (the default) is what the shipped
# models were trained on. "bold" (issue 16) draws bigger objects and drops the hexagon: at
# "small" a classic solid circle and hexagon differ in 106 pixels (square/hexagon 110), which a
# vision tower of 14-pixel patches took 45 minutes of training to start telling apart
# (docs/embedded-model.md "Stage 0"). A non-default style is recorded in the scene dict.
STYLES = {
    "classic": {"shapes": SHAPES, "sizes": SIZES},
    "bold": {"shapes": [s for s in SHAPES if s != "hexagon"],
             "sizes": {"small": 0.26, "medium": 0.35, "large": 0.46}},
}
DEFAULT_STYLE = "classic"
TEXTURES = ["solid", "striped", "dotted", "outlined"]
ROWS = ["top", "middle", "bottom"]
COLS = ["left", "centre", "right"]
KINDS = ["describe", "count", "where", "compare", "colour", "shape"]  # the long answers
# Short, image-dense answers (30-140 tokens: nearly every content word comes from the image), for
# teaching a language model to read its vision tower (issue 16, stage 1); not in the default mix.
# The focused inventories start with the answer to a question about one colour or shape (the
# first sentences of the long "colour" / "shape" answers), so the answer depends on the question
# too: in "inventory" it never does, and a language model trained on it learns to ignore the
# question (docs/embedded-model.md, "Stage 1 and stage 2 on the normalised position tower").
SHORT_KINDS = ["inventory", "colour_inventory", "shape_inventory"]
# The attribute a kind's question asks about (its answer starts with generator._focus).
FOCUS = {"colour": "colour", "shape": "shape", "colour_inventory": "colour",
         "shape_inventory": "shape"}
MIN_OBJECTS, MAX_OBJECTS = 3, 6

# How long answers list the objects (generator.sections): in sentences (the shipped data) or as
# the inventories do.
LISTINGS = ("sentences", "inventory")
DEFAULT_LISTING = LISTINGS[0]
NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"]
TEXTURE_PHRASES = {"solid": "filled with solid colour", "striped": "with horizontal stripes",
                   "dotted": "made of small dots", "outlined": "drawn only as an outline"}

# The words of an answer that only the image decides (function words and phrasing never are):
# what proj/scenes/target_eval.py's content accuracy and the trainer's scene_word_weight count.
SCENE_WORDS = frozenset(
    [*COLOURS, *BACKGROUNDS, *SIZES, *TEXTURES, *ROWS, *COLS, *NUMBERS, *SHAPES,
     *(s + ("es" if s.endswith("s") else "s") for s in SHAPES)])

QUESTIONS = {
    "describe": ["Describe the image in detail.", "What do you see in this picture?",
                 "Give a detailed description of the scene."],
    "count": ["How many objects are there of each colour and shape?",
              "Count the objects in the image.", "How many shapes does the picture contain?"],
    "where": ["Where is each object located?", "Describe the position of every shape.",
              "What is in each part of the grid?"],
    "compare": ["Compare the objects in the image.", "How do the shapes differ from each other?",
                "Which objects are alike and which are different?"],
    "colour": ["Are there any {colour} objects in the image?",
               "Tell me about the {colour} shapes in the picture."],
    "shape": ["Is there a {shape} in the image?", "Tell me about every {shape} in the picture."],
    "inventory": ["List the objects in the image.", "What objects does the picture contain?",
                  "Name every shape in the image with its place."],
    "colour_inventory": ["Are there any {colour} objects in the image? List the objects in the "
                         "image.",
                         "Tell me about the {colour} shapes in the picture. What objects does "
                         "the picture contain?"],
    "shape_inventory": ["Is there a {shape} in the image? List the objects in the image.",
                        "Tell me about every {shape} in the picture. Name every shape in the "
                        "image with its place."],
}


# Seed ranges of the dataset splits (disjoint: held-out scenes are never trained on). Example i of
# a split is sample(SPLIT_SEEDS[split] + i) (scenes_tfds builds the splits from them).
SPLIT_SEEDS = {"train": 0, "validation": 100_000_000, "test": 200_000_000}


def cell_name(row: int, col: int) -> str:
  if row == 1 and col == 1:
    return "centre"
  return f"{ROWS[row]} {COLS[col]}"


# --------------------------------------------------------------------------------- image


def _scene_rng(seed: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), 0x5CE7E])


def check_style(style: str) -> str:
  if style not in STYLES:
    raise ValueError(f"unknown scene style {style!r}; expected one of {sorted(STYLES)}")
  return style


def style_of(scene: dict) -> dict:
  """The shapes and sizes of the scene's style (STYLES)."""
  return STYLES[scene.get("style", DEFAULT_STYLE)]


def random_scene(seed: int, size: int = 224, style: str = DEFAULT_STYLE) -> dict:
  """The scene dict of `seed` (no drawing)."""
  shapes, sizes = STYLES[check_style(style)]["shapes"], STYLES[style]["sizes"]
  rng = _scene_rng(seed)
  n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
  cells = sorted(rng.choice(9, size=n, replace=False).tolist())
  cell = size / 3
  pairs = [(c, s) for c in COLOURS for s in shapes]
  chosen = rng.choice(len(pairs), size=n, replace=False)
  objects = []
  for k, idx in zip(cells, chosen):
    colour, shape = pairs[int(idx)]
    size_name = list(sizes)[int(rng.integers(len(sizes)))]
    radius = sizes[size_name] * cell
    slack = max(0.0, cell / 2 - radius - 2)
    row, col = divmod(k, 3)
    cx = (col + 0.5) * cell + float(rng.uniform(-slack, slack))
    cy = (row + 0.5) * cell + float(rng.uniform(-slack, slack))
    objects.append({"shape": shape, "colour": colour, "size": size_name,
                    "texture": TEXTURES[int(rng.integers(len(TEXTURES)))], "row": row, "col": col,
                    "cx": round(cx, 2), "cy": round(cy, 2), "radius": round(radius, 2)})
  background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
  scene = {"seed": int(seed), "size": int(size), "background": background, "objects": objects}
  if style != DEFAULT_STYLE:
    scene["style"] = style
  return scene


def _polygon(shape: str, cx: float, cy: float, r: float):
  if shape == "square":
    a = r * 0.85
    return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
  if shape == "diamond":
    return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
  if shape == "triangle":
    return [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in np.radians([-90, 30, 150])]
  if shape == "hexagon":
    return [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in np.radians(np.arange(0, 360, 60))]
  if shape == "star":
    pts = []
    for i in range(10):
      rr = r if i % 2 == 0 else r * 0.45
      t = np.radians(-90 + 36 * i)
      pts.append((cx + rr * np.cos(t), cy + rr * np.sin(t)))
    return pts
  if shape == "cross":
    a, b = r, r * 0.33
    return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
            (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
            (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
  raise ValueError(shape)


def _mask(shape: str, cx: float, cy: float, r: float, box: tuple[int, int, int, int],
          outline: int = 0) -> np.ndarray:
  """Boolean mask of a shape over the pixel box (x0, y0, x1, y1) of the image."""
  x0, y0, x1, y1 = box
  im = Image.new("L", (x1 - x0, y1 - y0), 0)
  d = ImageDraw.Draw(im)
  cx, cy = cx - x0, cy - y0
  if shape == "circle":
    ell = [cx - r, cy - r, cx + r, cy + r]
    if outline:
      d.ellipse(ell, outline=255, width=outline)
    else:
      d.ellipse(ell, fill=255)
  else:
    pts = [(float(x), float(y)) for x, y in _polygon(shape, cx, cy, r)]
    if outline:
      d.line(pts + [pts[0]], fill=255, width=outline, joint="curve")
    else:
      d.polygon(pts, fill=255)
  return np.asarray(im) > 127


def render(scene: dict) -> Image.Image:
  """The RGB image of a scene dict."""
  size = scene["size"]
  img = np.empty((size, size, 3), np.uint8)
  img[:] = np.array(BACKGROUNDS[scene["background"]], np.uint8)
  period = max(4, size // 28)  # stripe / dot spacing (8 px at 224)
  dots = max(4, size // 37)  # dot spacing (6 px at 224)
  for o in scene["objects"]:
    pad = o["radius"] + 4
    box = (max(0, int(o["cx"] - pad)), max(0, int(o["cy"] - pad)),
           min(size, int(o["cx"] + pad) + 1), min(size, int(o["cy"] + pad) + 1))
    if o["texture"] == "outlined":
      m = _mask(o["shape"], o["cx"], o["cy"], o["radius"], box, outline=max(2, size // 64))
    else:
      m = _mask(o["shape"], o["cx"], o["cy"], o["radius"], box)
      yy, xx = np.mgrid[box[1]:box[3], box[0]:box[2]]  # absolute pixel coordinates
      if o["texture"] == "striped":
        m &= (yy // (period // 2)) % 2 == 0
      elif o["texture"] == "dotted":
        m &= (yy % dots < dots // 2) & (xx % dots < dots // 2)
    img[box[1]:box[3], box[0]:box[2]][m] = COLOURS[o["colour"]]
  return Image.fromarray(img, "RGB")


def make_scene(seed: int, size: int = 224, style: str = DEFAULT_STYLE) -> tuple[Image.Image, dict]:
  """(PIL RGB image of `size` x `size`, scene dict) for `seed` in a style: deterministic."""
  scene = random_scene(seed, size, style)
  return render(scene), scene


# ---------------------------------------------------------------------------------- text


def _name(o: dict) -> str:
  return f"{o['colour']} {o['shape']}"


def _full(o: dict) -> str:
  return f"{o['size']} {o['colour']} {o['shape']}"


def join_words(items: list[str]) -> str:
  if not items:
    return "nothing"
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


def counted(n: int, noun: str) -> str:
  word = NUMBERS[n] if n < len(NUMBERS) else str(n)
  return f"{word} {noun if n == 1 else noun + ('es' if noun.endswith('s') else 's')}"


def with_article(word: str) -> str:
  return ("an " if word[0] in "aeiou" else "a ") + word


def _be(n: int) -> str:
  return "is" if n == 1 else "are"


def _the(objs: list[dict]) -> list[str]:
  return [f"the {_name(o)}" for o in objs]


def relation_of(a: dict, b: dict) -> str:
  """Where a is relative to b."""
  v = "above" if a["row"] < b["row"] else "below" if a["row"] > b["row"] else ""
  h = "to the left of" if a["col"] < b["col"] else "to the right of" if a["col"] > b["col"] else ""
  if v and h:
    return f"{v} and {h}"
  return v or h


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def s_intro(scene, rng) -> list[str]:
  n, bg = len(scene["objects"]), scene["background"]
  return [_pick(rng, [
      f"The image shows {counted(n, 'object')} on a {bg} background.",
      f"This picture contains {counted(n, 'shape')} arranged on a {bg} background.",
      f"In this image there {_be(n)} {counted(n, 'object')} placed on a {bg} background.",
  ]) + " The objects sit on an invisible grid of three rows and three columns."]


def s_objects(scene, rng) -> list[str]:
  out = []
  for i, o in enumerate(scene["objects"]):
    pos, tex = cell_name(o["row"], o["col"]), TEXTURE_PHRASES[o["texture"]]
    out.append(_pick(rng, [
        f"The {ORDINALS[i]} object, in the {pos}, is a {_full(o)} {tex}.",
        f"In the {pos} there is a {_full(o)} {tex}.",
        f"Next, in the {pos}, we see a {_full(o)}, {tex}.",
    ] if i else [f"The {ORDINALS[i]} object, in the {pos}, is a {_full(o)} {tex}.",
                 f"Starting from the top left, the {ORDINALS[i]} object is a {_full(o)} {tex} "
                 f"in the {pos}."]))
  return out


def s_cells(scene, rng) -> list[str]:
  by_cell = {(o["row"], o["col"]): o for o in scene["objects"]}
  out = []
  for r in range(3):
    for c in range(3):
      o = by_cell.get((r, c))
      pos = cell_name(r, c)
      if o is None:
        out.append(f"The {pos} cell is empty.")
      else:
        out.append(_pick(rng, [f"The {pos} cell holds a {_full(o)}, {TEXTURE_PHRASES[o['texture']]}.",
                               f"In the {pos} cell there is a {_full(o)}, "
                               f"{TEXTURE_PHRASES[o['texture']]}."]))
  return out


def _group_counts(scene, key: str, values: list[str], rng) -> list[str]:
  """One sentence per value of `key` present in the scene, then one naming the absent values."""
  out, missing = [], []
  for v in values:
    group = [o for o in scene["objects"] if o[key] == v]
    if not group:
      missing.append(v)
    elif key == "shape":
      out.append(f"There {_be(len(group))} {counted(len(group), v)}: "
                 f"{join_words([with_article(o['colour'] + ' one') for o in group])}.")
    else:
      out.append(f"There {_be(len(group))} {counted(len(group), v + ' object')}: "
                 f"{join_words(_the(group))}.")
  if len(missing) == 1:
    out.append(f"No object has the {key} {missing[0]}.")
  elif missing:
    out.append(_pick(rng, [f"No object has the {key} {join_words(missing).replace(' and ', ' or ')}.",
                           f"The {key}s {join_words(missing)} do not appear."]))
  return out


def s_colour_counts(scene, rng):
  return _group_counts(scene, "colour", list(COLOURS), rng)


def s_shape_counts(scene, rng):
  return _group_counts(scene, "shape", style_of(scene)["shapes"], rng)


def s_size_counts(scene, rng):
  return _group_counts(scene, "size", list(SIZES), rng)


def s_texture_counts(scene, rng):
  return _group_counts(scene, "texture", TEXTURES, rng)


def s_lines(scene, rng, axis: str) -> list[str]:
  key, names = ("row", ROWS) if axis == "row" else ("col", COLS)
  out = []
  for i, name in enumerate(names):
    group = [o for o in scene["objects"] if o[key] == i]
    what = f"the {name} {axis}" if axis == "row" else f"the {name} column"
    if group:
      out.append(f"{what.capitalize()} contains {counted(len(group), 'object')}: "
                 f"{join_words(_the(group))}.")
    else:
      out.append(f"{what.capitalize()} is empty.")
  return out


def s_relations(scene, rng, all_pairs: bool = False) -> list[str]:
  objs = scene["objects"]
  pairs = ([(a, b) for i, a in enumerate(objs) for b in objs[i + 1:]] if all_pairs
           else list(zip(objs, objs[1:])) + ([(objs[-1], objs[0])] if len(objs) > 2 else []))
  out = []
  for a, b in pairs:
    out.append(_pick(rng, [f"The {_name(a)} is {relation_of(a, b)} the {_name(b)}.",
                           f"The {_name(b)} is {relation_of(b, a)} the {_name(a)}."]))
  return out


def s_positions(scene, rng) -> list[str]:
  return [f"The {_name(o)} is in the {ROWS[o['row']]} row and the {COLS[o['col']]} column."
          for o in scene["objects"]]


def s_empty(scene, rng) -> list[str]:
  taken = {(o["row"], o["col"]) for o in scene["objects"]}
  empty = [cell_name(r, c) for r in range(3) for c in range(3) if (r, c) not in taken]
  return [f"{counted(len(empty), 'cell').capitalize()} of the grid {_be(len(empty))} empty: "
          f"{join_words(['the ' + e for e in empty])}."]


def s_extremes(scene, rng) -> list[str]:
  objs = scene["objects"]
  order = list(SIZES)
  big = max(order.index(o["size"]) for o in objs)
  small = min(order.index(o["size"]) for o in objs)
  bigs = [o for o in objs if order.index(o["size"]) == big]
  smalls = [o for o in objs if order.index(o["size"]) == small]
  if big == small:
    return [f"All the objects have the same size: they are all {order[big]}."]
  return [f"The biggest {'object is' if len(bigs) == 1 else 'objects are'} "
          f"{join_words(_the(bigs))}, which {_be(len(bigs))} {order[big]}.",
          f"The smallest {'object is' if len(smalls) == 1 else 'objects are'} "
          f"{join_words(_the(smalls))}, which {_be(len(smalls))} {order[small]}."]


def s_shared(scene, rng) -> list[str]:
  objs = scene["objects"]
  out = []
  for key, label in (("colour", "colour"), ("shape", "shape"), ("texture", "texture")):
    groups = {}
    for o in objs:
      groups.setdefault(o[key], []).append(o)
    shared = [(v, g) for v, g in groups.items() if len(g) > 1]
    if shared:
      for v, g in shared:
        out.append(f"{join_words(_the(g)).capitalize()} share the {label} {v}.")
    else:
      out.append(f"No two objects share the same {label}.")
  return out


def s_summary(scene, rng) -> list[str]:
  objs = scene["objects"]
  n = len(objs)
  colours = sorted({o["colour"] for o in objs}, key=list(COLOURS).index)
  shapes = sorted({o["shape"] for o in objs}, key=SHAPES.index)
  top = sum(o["row"] == 0 for o in objs)
  bottom = sum(o["row"] == 2 for o in objs)
  left = sum(o["col"] == 0 for o in objs)
  right = sum(o["col"] == 2 for o in objs)
  vert = ("more objects in the top row than in the bottom row" if top > bottom else
          "more objects in the bottom row than in the top row" if bottom > top else
          "as many objects in the top row as in the bottom row")
  horiz = ("more objects in the left column than in the right column" if left > right else
           "more objects in the right column than in the left column" if right > left else
           "as many objects in the left column as in the right column")
  return [
      _pick(rng, ["In summary,", "To sum up,", "Overall,"]) +
      f" the scene has {counted(n, 'object')} in {counted(len(colours), 'colour')} "
      f"({join_words(colours)}) and {counted(len(shapes), 'shape')} ({join_words(shapes)}) "
      f"on a {scene['background']} background, with {counted(9 - n, 'empty cell')}.",
      f"There are {vert}, and {horiz}.",
  ]


def _focus(scene, key: str, value: str, rng) -> list[str]:
  group = [o for o in scene["objects"] if o[key] == value]
  noun = f"{value} object" if key == "colour" else value
  if not group:
    other = [o[key] for o in scene["objects"]]
    uniq = sorted(set(other), key=other.index)
    label = "colours" if key == "colour" else "shapes"
    return [f"No, there is no {noun} in the image.",
            f"The {label} that do appear are {join_words(uniq)}."]
  out = [f"Yes, there {_be(len(group))} {counted(len(group), noun)} in the image."]
  for o in group:
    out.append(f"The {_full(o)} is in the {cell_name(o['row'], o['col'])}, "
               f"{TEXTURE_PHRASES[o['texture']]}.")
  return out


def s_rows(scene, rng):
  return s_lines(scene, rng, "row")


def s_columns(scene, rng):
  return s_lines(scene, rng, "column")


def s_compare_relations(scene, rng):
  """Every pair when there are few objects, else each object with the next."""
  return s_relations(scene, rng, all_pairs=len(scene["objects"]) <= 4)


# The sections of each kind's answer, in order ("colour" and "shape" start with the answer to
# the question asked).
def s_inventory(scene, rng) -> list[str]:
  """Every object, row by row, with its cell and all four attributes, then the object count."""
  del rng
  out = [f"{cell_name(o['row'], o['col']).capitalize()}: {with_article(o['size'])} {o['colour']} "
         f"{o['shape']}, {o['texture']}." for o in scene["objects"]]
  n = len(scene["objects"])
  return out + [f"That is {counted(n, 'object')} in all."]


_SECTIONS = {
    "inventory": [s_inventory],
    "colour_inventory": [s_inventory],
    "shape_inventory": [s_inventory],
    "describe": [s_intro, s_objects, s_colour_counts, s_shape_counts, s_extremes, s_rows,
                 s_relations, s_empty, s_summary],
    "count": [s_intro, s_colour_counts, s_shape_counts, s_size_counts, s_texture_counts, s_rows,
              s_columns, s_empty, s_summary],
    "where": [s_intro, s_cells, s_positions, s_rows, s_columns, s_relations, s_empty, s_summary],
    "compare": [s_intro, s_objects, s_extremes, s_size_counts, s_shared, s_texture_counts,
                s_rows, s_compare_relations, s_empty, s_summary],
    "colour": [s_intro, s_objects, s_colour_counts, s_size_counts, s_rows, s_relations, s_empty,
               s_summary],
    "shape": [s_intro, s_objects, s_shape_counts, s_size_counts, s_rows, s_relations, s_empty,
              s_summary],
}


def question_for(kind: str, rng, shapes=SHAPES) -> tuple[str, dict]:
  """(question text, its parameters) for a kind; parameters are drawn from the vocabulary
  (colours, the style's `shapes`), never from the scene."""
  params = {}
  if kind not in QUESTIONS:
    raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS + SHORT_KINDS}")
  if FOCUS.get(kind) == "colour":
    params["colour"] = _pick(rng, list(COLOURS))
  elif FOCUS.get(kind) == "shape":
    params["shape"] = _pick(rng, shapes)
  return _pick(rng, QUESTIONS[kind]).format(**params), params


def describe(scene: dict, question_kind: str, rng: np.random.Generator,
             listing: str = DEFAULT_LISTING) -> tuple[str, str]:
  """(question, long answer) of one kind about a scene; the question is drawn from `rng` alone
  and the answer depends on the scene (and, for phrasing, on `rng`)."""
  question, asked = question_for(question_kind, rng, style_of(scene)["shapes"])
  return question, answer_for(scene, question_kind, asked, rng, listing)


def sections(question_kind: str, listing: str = DEFAULT_LISTING) -> list:
  """The section functions of a kind's answer. listing "inventory": every long answer lists its
  objects right after the introduction as the inventories do ("Top right: a medium red star,
  solid."; s_inventory), in place of the object sentences (s_objects): the form a language model
  reads its image best in, after which the other sections restate what the text already holds
  (docs/embedded-model.md, "Long answers that list their objects as inventories")."""
  if listing not in LISTINGS:
    raise ValueError(f"unknown listing {listing!r}; expected one of {LISTINGS}")
  if listing == DEFAULT_LISTING or question_kind not in KINDS:
    return list(_SECTIONS[question_kind])
  out = [fn for fn in _SECTIONS[question_kind] if fn is not s_objects]
  return out[:1] + [s_inventory] + out[1:]


def answer_for(scene: dict, question_kind: str, asked: dict, rng: np.random.Generator,
               listing: str = DEFAULT_LISTING) -> str:
  """The answer to a question of that kind about `asked` (question_for's parameters), its objects
  listed as `listing` says (sections)."""
  key = FOCUS.get(question_kind)
  focus = [lambda s, r: _focus(s, key, asked[key], r)] if key else []
  sentences = []
  for fn in focus + sections(question_kind, listing):
    sentences.extend(fn(scene, rng))
  return " ".join(sentences)


def sample(seed: int, size: int = 224, kind: str | None = None, kinds=None,
           style: str = DEFAULT_STYLE, listing: str = DEFAULT_LISTING) -> dict:
  """One example: {"image": PIL, "scene", "question", "answer", "kind", "seed", "asked"} (asked:
  the colour or shape the question asks about, {} for the other kinds); the kind (unless given)
  and the phrasing are drawn from the seed too."""
  image, scene = make_scene(seed, size, style)
  rng = np.random.default_rng([int(seed), 0xA45])
  kinds = list(kinds or KINDS)
  if kind is None:
    kind = kinds[int(rng.integers(len(kinds)))]
  question, asked = question_for(kind, rng, style_of(scene)["shapes"])
  answer = answer_for(scene, kind, asked, rng, listing)
  return {"image": image, "scene": scene, "question": question, "answer": answer,
          "kind": kind, "seed": int(seed), "asked": asked}


# ----------------------------------------------------------------------------- tokenizer

# Prompt text the data generator and the demo put around the questions (configs/common.py):
# trained on too so it does not fall apart into bytes.
PROMPT_TEXTS = [
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions.",
    "You are a helpful assistant.", "Please answer with at least 1000 words.",
]


def corpus(samples: int, start: int = 0):
  """Questions and answers of `samples` scenes, every kind for each (the tokenizer corpus)."""
  for seed in range(start, start + samples):
    scene = random_scene(seed, 224)
    rng = np.random.default_rng([seed, 0x70C])
    for kind in KINDS:
      q, a = describe(scene, kind, rng)
      yield q
      yield a
  for _ in range(max(1, samples // 10)):
    yield from PROMPT_TEXTS


def train_tokenizer(samples: int = 2000, vocab_size: int = 2048, start: int = 0):
  """A byte-level BPE (any text encodes) trained on scene questions and answers, with Qwen's
  special tokens and the chat template of `vispec_jax.testing`, as a PreTrainedTokenizerFast.
  The vocabulary is at most `vocab_size`; it is smaller when the corpus has fewer words."""
  return testing.bpe_tokenizer(corpus(samples, start), vocab_size, SPECIAL_TOKENS, CHAT_TEMPLATE,
                               min_frequency=2, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", unk_token=None)


def save_tokenizer(tokenizer, out: str) -> str:
  """Saves atomically: into a temporary sibling folder, then renamed onto `out` (an existing
  `out` is replaced)."""
  return write_folder(out, tokenizer.save_pretrained)


def answer_lengths(tokenizer, seeds, kinds=None, style: str = DEFAULT_STYLE,
                   listing: str = DEFAULT_LISTING) -> dict[str, list[int]]:
  """Token counts of the answers of every kind for the given scene seeds."""
  texts = {k: [] for k in (kinds or KINDS)}
  for seed in seeds:
    scene = random_scene(seed, 224, style)
    rng = np.random.default_rng([seed, 0x57A7])
    for k, v in texts.items():
      v.append(describe(scene, k, rng, listing)[1])
  return {k: [len(ids) for ids in tokenizer(v)["input_ids"]] for k, v in texts.items()}


# -------------------------------------------------------------------------------- command line


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m proj.scenes.generator", description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("tokenizer", help="train the scenes BPE tokenizer and save it to --out")
  t.add_argument("--out", required=True)
  t.add_argument("--samples", type=int, default=4000, help="scenes in the corpus (x6 kinds)")
  t.add_argument("--vocab-size", type=int, default=2048)
  t.add_argument("--start", type=int, default=0, help="first corpus seed")
  s = sub.add_parser("show", help="write one scene image and print its question and answer")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--kind", choices=KINDS)
  s.add_argument("--size", type=int, default=224)
  s.add_argument("--style", choices=sorted(STYLES), default=DEFAULT_STYLE)
  s.add_argument("--listing", choices=LISTINGS, default=DEFAULT_LISTING)
  s.add_argument("--out", default=None, help="PNG path for the image")
  st = sub.add_parser("stats", help="answer length statistics (tokens) per question kind")
  st.add_argument("--tokenizer", required=True)
  st.add_argument("--samples", type=int, default=500)
  st.add_argument("--start", type=int, default=10_000_000)
  st.add_argument("--style", choices=sorted(STYLES), default=DEFAULT_STYLE)
  st.add_argument("--listing", choices=LISTINGS, default=DEFAULT_LISTING)
  args = ap.parse_args(argv)

  if args.cmd == "tokenizer":
    tok = train_tokenizer(args.samples, args.vocab_size, args.start)
    path = save_tokenizer(tok, args.out)
    print(f"tokenizer with {len(tok)} tokens (vocab limit {args.vocab_size}) saved to {path}")
  elif args.cmd == "show":
    ex = sample(args.seed, args.size, args.kind, style=args.style, listing=args.listing)
    if args.out:
      ex["image"].save(args.out)
      print(f"image: {args.out}")
    print(f"kind: {ex['kind']}\nQ: {ex['question']}\nA: {ex['answer']}")
  else:
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    lengths = answer_lengths(tok, range(args.start, args.start + args.samples), style=args.style,
                             listing=args.listing)
    allv = np.concatenate([np.asarray(v) for v in lengths.values()])
    print(f"{'kind':10s} {'min':>5s} {'p5':>5s} {'mean':>6s} {'p95':>5s} {'max':>5s}")
    for k, v in list(lengths.items()) + [("all", allv)]:
      v = np.asarray(v)
      print(f"{k:10s} {v.min():5d} {int(np.percentile(v, 5)):5d} {v.mean():6.1f} "
            f"{int(np.percentile(v, 95)):5d} {v.max():5d}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
