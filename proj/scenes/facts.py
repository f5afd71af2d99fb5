"""Facts stated in an answer about a scene, checked against the scene (issue 16: what "sees" means).

    report = check(scene, answer)    # scene: the dict of scenes.make_scene / scenes.sample
    report.precision, report.recall, report.false_facts, report.verdict()

The answer is split into sentences and each sentence is parsed with the sentence templates of
`proj.scenes.generator` (the vocabulary is imported from there, so a new colour or shape is parsed
without an edit here). A sentence yields atomic facts, each a hashable tuple whose first element is
its class:

  cell         the object in a cell has a colour, a shape, a size or a texture (one fact each:
               "In the top left there is a large yellow cross ..." states four), from the object
               descriptions, the cell contents and the answer to a colour/shape question; the
               class is reported per attribute ("cell colour", "cell shape", ...)
  empty        a cell is empty; the number of empty cells
  object       an object with this colour and shape exists (every object named: "the yellow
               cross", "a yellow one" in "There are two crosses: ...", a described object)
  colour, shape  the number of objects of a colour / shape (0 included: "The colours red and
               cyan do not appear", "No, there is no star in the image")
  size, texture  the number of objects of a size / texture, and the size / texture of a named
               object ("There is one small object: the blue triangle")
  row, column  the number of objects in a row / column, and the row / column of a named object
               (the row and column contents, "The yellow cross is in the top row and ...")
  relation     where one named object is relative to another (one fact per unordered pair)
  extremes     the biggest and the smallest objects with their size, or "all the same size"
  shared       the objects that share a colour, shape or texture, or that no two share it
  summary      the number of objects, the background, the set and number of colours and of
               shapes, which of the top / bottom rows and left / right columns holds more

The truth is computed from the scene dict alone (never from the generator's text), so the tests
that parse the generator's reference answers check parser and truth against each other.

Scoring (distinct facts: a fact stated twice counts once, so a model that repeats itself gains
nothing):
  stated     the number of distinct facts in the answer
  correct    how many of them are true of the scene
  precision  correct / stated (0.0 when nothing is stated)
  recall     over the classes the answer states at least one fact of: the scene's true facts of
             those classes that the answer states / all the scene's true facts of those classes.
             A class the answer never touches does not count (a "count" answer has no object
             descriptions and is not penalised for it), so recall measures completeness within
             what the answer talks about. The true facts of a class are all of them: every
             colour's count (absent colours included), every unordered pair's relation, every
             empty cell. The reference answers reach recall 1.0 in every class but `relation`,
             where they state n of the n (n - 1) / 2 pairs (all pairs for 3 objects, and for
             compare answers with at most 4 objects).
A sentence that matches no template (a model's garbled sentence, a list with a malformed item)
states nothing, true or false, and is counted in `unparsed`; an answer that ends without a
full stop (cut at the token limit) has its last fragment counted there too (`truncated`).
"""

from __future__ import annotations

import dataclasses
import re

from proj.scenes import generator as scenes

ATTRIBUTES = ("colour", "shape", "size", "texture")
SHARED_KEYS = ("colour", "shape", "texture")  # what "share the <key> <value>" sentences name
CELLS = {scenes.cell_name(r, c): (r, c) for r in range(len(scenes.ROWS))
         for c in range(len(scenes.COLS))}
_VALUES = {"colour": list(scenes.COLOURS), "shape": list(scenes.SHAPES),
           "size": list(scenes.SIZES), "texture": list(scenes.TEXTURES)}
_KEY_OF = {v: k for k, values in _VALUES.items() for v in values}
_PHRASE_TEXTURE = {p: t for t, p in scenes.TEXTURE_PHRASES.items()}
_CMP = {"row": ("top", "bottom"), "column": ("left", "right")}


# ---------------------------------------------------------------------------- the truth


def _name(o: dict) -> tuple[str, str]:
  return o["colour"], o["shape"]


def _rel(phrase: str) -> tuple[str, str]:
  """'above and to the left of' -> ('above', 'left'); either part may be ''."""
  m = re.fullmatch(r"(above|below)?(?: and )?(?:to the (left|right) of)?", phrase)
  if not m or not phrase:
    raise ValueError(f"not a relation: {phrase!r}")
  return m.group(1) or "", m.group(2) or ""


_FLIP = {"above": "below", "below": "above", "left": "right", "right": "left", "": ""}


def _relation_fact(a: tuple, b: tuple, v: str, h: str) -> tuple:
  """One fact per unordered pair: the names in sorted order, the relation turned to match."""
  if b < a:
    a, b, v, h = b, a, _FLIP[v], _FLIP[h]
  return ("relation", a, b, v, h)


def _balance(objs, key: str, first: int, last: int) -> str:
  names = _CMP["row" if key == "row" else "column"]
  a, b = (sum(o[key] == i for o in objs) for i in (first, last))
  return names[0] if a > b else names[1] if b > a else "equal"


def true_facts(scene: dict) -> set[tuple]:
  """Every true fact of every class about `scene` (the module docstring lists the classes)."""
  objs = scene["objects"]
  facts = set()
  for o in objs:
    name = _name(o)
    facts.add(("object",) + name)
    facts.update(("cell", o["row"], o["col"], a, o[a]) for a in ATTRIBUTES)
    facts.update({("size", "of") + name + (o["size"],), ("texture", "of") + name + (o["texture"],),
                  ("row", "of") + name + (o["row"],), ("column", "of") + name + (o["col"],)})
  for key, values in _VALUES.items():
    facts.update((key, "count", v, sum(o[key] == v for o in objs)) for v in values)
  for key, field, names in (("row", "row", scenes.ROWS), ("column", "col", scenes.COLS)):
    facts.update((key, "count", i, sum(o[field] == i for o in objs)) for i in range(len(names)))
  taken = {(o["row"], o["col"]) for o in objs}
  empty = [rc for rc in CELLS.values() if rc not in taken]
  facts.update(("empty", "cell") + rc for rc in empty)
  facts.add(("empty", "count", len(empty)))
  for i, a in enumerate(objs):
    for b in objs[i + 1:]:
      facts.add(_relation_fact(_name(a), _name(b), *_rel(scenes.relation_of(a, b))))
  order = list(scenes.SIZES)
  ranks = [order.index(o["size"]) for o in objs]
  if ranks and max(ranks) == min(ranks):
    facts.add(("extremes", "same", order[ranks[0]]))
  elif ranks:
    for which, rank in (("biggest", max(ranks)), ("smallest", min(ranks))):
      group = tuple(sorted(_name(o) for o, r in zip(objs, ranks) if r == rank))
      facts.add(("extremes", which, group, order[rank]))
  for key in SHARED_KEYS:
    groups = {}
    for o in objs:
      groups.setdefault(o[key], []).append(_name(o))
    shared = [(v, tuple(sorted(g))) for v, g in groups.items() if len(g) > 1]
    facts.update(("shared", key, v, g) for v, g in shared)
    if not shared:
      facts.add(("shared", key, "none", ()))
  colours, shapes = frozenset(o["colour"] for o in objs), frozenset(o["shape"] for o in objs)
  facts.update({("summary", "objects", len(objs)), ("summary", "background", scene["background"]),
                ("summary", "colours", colours), ("summary", "n_colours", len(colours)),
                ("summary", "shapes", shapes), ("summary", "n_shapes", len(shapes)),
                ("summary", "rows", _balance(objs, "row", 0, len(scenes.ROWS) - 1)),
                ("summary", "columns", _balance(objs, "col", 0, len(scenes.COLS) - 1))})
  return facts


def fact_class(fact: tuple) -> str:
  """The class a fact is reported under ("cell colour", "empty", "relation", ...)."""
  return f"cell {fact[3]}" if fact[0] == "cell" else fact[0]


# ----------------------------------------------------------------------------- parsing


class _Unparsed(Exception):
  pass


def _alt(words) -> str:
  return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_COLOUR, _SHAPE = _alt(scenes.COLOURS), _alt(scenes.SHAPES)
_PIECES = {  # placeholder -> regex (each becomes a named group)
    "num": _alt(scenes.NUMBERS) + r"|\d+", "colour": _COLOUR, "size": _alt(scenes.SIZES),
    "shape": _SHAPE, "shapes": _SHAPE + "(?:es|s)?", "phrase": _alt(scenes.TEXTURE_PHRASES.values()),
    "cell": _alt(CELLS), "row": _alt(scenes.ROWS), "col": _alt(scenes.COLS),
    "bg": _alt(scenes.BACKGROUNDS), "texture": _alt(scenes.TEXTURES), "ord": _alt(scenes.ORDINALS), "name": f"{_COLOUR} {_SHAPE}",
    "full": f"{_alt(scenes.SIZES)} {_COLOUR} {_SHAPE}", "value": _alt(_KEY_OF),
    "key": _alt(ATTRIBUTES), "list": ".+?", "which": "biggest|smallest",
    "opening": "in summary|to sum up|overall",
    "rel": r"(?:above|below)(?: and to the (?:left|right) of)?|to the (?:left|right) of",
}
_TEMPLATES = []  # (compiled fullmatch regex, handler(groups) -> list of facts)
_BARE = {"s": "(?:es|s)?", "be": "(?:is|are)", "a": "an?", ",": ",?"}  # pieces without a group


def _template(*patterns):
  """Registers a handler for sentence patterns: literal text with {piece} or {group:piece}
  placeholders (a named group each), and {s} (an optional plural ending), {be} (is / are),
  {a} (a / an), {,} (an optional comma, where the generator's phrasings differ)."""
  def register(handler):
    for pattern in patterns:
      regex, pos = "", 0
      for m in re.finditer(r"\{(?:(\w+):)?(\w+|,)\}", pattern):
        regex += re.escape(pattern[pos:m.start()]).replace(r"\ ", " ")
        piece = m.group(2)
        regex += (_BARE[piece] if piece in _BARE else
                  f"(?P<{m.group(1) or piece}>{_PIECES[piece]})")
        pos = m.end()
      regex += re.escape(pattern[pos:]).replace(r"\ ", " ")
      _TEMPLATES.append((re.compile(regex.replace(" ,?", ",?"), re.IGNORECASE), handler))
    return handler
  return register


def _num(word: str) -> int:
  return int(word) if word.isdigit() else scenes.NUMBERS.index(word)


def _items(text: str, item: str) -> list[re.Match]:
  """A list as scenes.join_words writes it ('a', 'a and b', 'a, b and c'; 'or' for 'and' where the
  generator says so), each item matched in full against `item`, else _Unparsed."""
  out = []
  for part in re.split(r", | and | or ", text):
    m = re.fullmatch(item, part)
    if not m:
      raise _Unparsed(part)
    out.append(m)
  return out


def _names(text: str) -> list[tuple[str, str]]:
  return [(m.group(1), m.group(2)) for m in _items(text, f"the ({_COLOUR}) ({_SHAPE})")]


def _split(name: str) -> tuple[str, str]:
  m = re.fullmatch(f"({_COLOUR}) ({_SHAPE})", name)
  return m.group(1), m.group(2)


def _plural_shape(word: str) -> str:
  return re.fullmatch(f"({_SHAPE})(?:es|s)?", word).group(1)


def _described(g) -> list[tuple]:
  m = re.fullmatch(f"({_PIECES['size']}) ({_COLOUR}) ({_SHAPE})", g["full"])
  size, colour, shape = m.groups()
  r, c = CELLS[g["cell"].lower()]
  texture = g["texture"] if "texture" in g else _PHRASE_TEXTURE[g["phrase"]]
  return [("object", colour, shape)] + [("cell", r, c, a, v) for a, v in
                                        zip(ATTRIBUTES, (colour, shape, size, texture))]


@_template("The image shows {num} object{s} on {a} {bg} background",
           "This picture contains {num} shape{s} arranged on {a} {bg} background",
           "In this image there {be} {num} object{s} placed on {a} {bg} background")
def _intro(g):
  return [("summary", "objects", _num(g["num"])), ("summary", "background", g["bg"])]


@_template("The objects sit on an invisible grid of three rows and three columns")
def _grid(g):
  return []


@_template("The {ord} object, in the {cell}, is {a} {full}{,} {phrase}",
           "In the {cell} there is {a} {full}{,} {phrase}",
           "Next, in the {cell}, we see {a} {full}{,} {phrase}",
           "Starting from the top left, the {ord} object is {a} {full}{,} {phrase} in the {cell}",
           "The {cell} cell holds {a} {full}{,} {phrase}",
           "In the {cell} cell there is {a} {full}{,} {phrase}",
           "The {full} is in the {cell}{,} {phrase}")
def _object(g):
  return _described(g)


@_template("{cell}: {a} {full}, {texture}")  # the inventory answers
def _inventory_item(g):
  return _described(g)


@_template("That is {num} object{s} in all")
def _inventory_count(g):
  return [("summary", "objects", _num(g["num"]))]


@_template("The {cell} cell is empty")
def _empty_cell(g):
  return [("empty", "cell") + CELLS[g["cell"]]]


@_template("There {be} {num} {shapes_word:shapes}: {list}")
def _shape_group(g):
  shape = _plural_shape(g["shapes_word"])
  colours = [m.group(1) for m in _items(g["list"], f"an? ({_COLOUR}) one")]
  return [("shape", "count", shape, _num(g["num"]))] + [("object", c, shape) for c in colours]


@_template("There {be} {num} {value} object{s}: {list}")
def _value_group(g):
  value = g["value"]
  key = _KEY_OF[value]
  if key == "shape":  # "There are two cross objects" is no template
    raise _Unparsed(value)
  facts = [(key, "count", value, _num(g["num"]))]
  for name in _names(g["list"]):
    facts.append(("object",) + name)
    if key == "colour":
      if name[0] != value:  # "one yellow object: the red circle" calls the red circle yellow
        facts.append(("colour", "of") + name + (value,))
    else:
      facts.append((key, "of") + name + (value,))
  return facts


@_template("No object has the {key} {list}", "The {key}s {list} do not appear")
def _absent(g):
  key = g["key"]
  values = [m.group(0) for m in _items(g["list"], _alt(_VALUES[key]))]
  return [(key, "count", v, 0) for v in values]


@_template("No, there is no {colour} object in the image", "No, there is no {shape} in the image")
def _focus_no(g):
  key = "colour" if g.get("colour") else "shape"
  return [(key, "count", g[key], 0)]


@_template("Yes, there {be} {num} {colour} object{s} in the image",
           "Yes, there {be} {num} {shapes_word:shapes} in the image")
def _focus_yes(g):
  if g.get("colour"):
    return [("colour", "count", g["colour"], _num(g["num"]))]
  return [("shape", "count", _plural_shape(g["shapes_word"]), _num(g["num"]))]


@_template("The {key}s that do appear are {list}")
def _appear(g):
  key = g["key"]
  if key not in ("colour", "shape"):
    raise _Unparsed(key)
  values = frozenset(m.group(0) for m in _items(g["list"], _alt(_VALUES[key])))
  return [("summary", key + "s", values)]


def _line(axis: str, index: int, g) -> list[tuple]:
  if g.get("list") is None:
    return [(axis, "count", index, 0)]
  facts = [(axis, "count", index, _num(g["num"]))]
  for name in _names(g["list"]):
    facts += [("object",) + name, (axis, "of") + name + (index,)]
  return facts


@_template("The {row} row contains {num} object{s}: {list}", "The {row} row is empty")
def _row(g):
  return _line("row", scenes.ROWS.index(g["row"]), g)


@_template("The {col} column contains {num} object{s}: {list}", "The {col} column is empty")
def _column(g):
  return _line("column", scenes.COLS.index(g["col"]), g)


@_template("The {a:name} is {rel} the {b:name}")
def _relation(g):
  a, b = _split(g["a"]), _split(g["b"])
  return [("object",) + a, ("object",) + b, _relation_fact(a, b, *_rel(g["rel"]))]


@_template("The {name} is in the {row} row and the {col} column")
def _position(g):
  name = _split(g["name"])
  return [("object",) + name, ("row", "of") + name + (scenes.ROWS.index(g["row"]),),
          ("column", "of") + name + (scenes.COLS.index(g["col"]),)]


@_template("{num} cell{s} of the grid {be} empty: {list}")
def _empty(g):
  cells = [] if g["list"] == "nothing" else [
      CELLS[m.group(1)] for m in _items(g["list"], f"the ({_PIECES['cell']})")]
  return [("empty", "count", _num(g["num"]))] + [("empty", "cell") + rc for rc in cells]


@_template("All the objects have the same size: they are all {size}")
def _same_size(g):
  return [("extremes", "same", g["size"])]


@_template("The {which} object is {list}, which is {size}",
           "The {which} objects are {list}, which are {size}")
def _extremes(g):
  names = _names(g["list"])
  return [("object",) + n for n in names] + [("extremes", g["which"], tuple(sorted(names)), g["size"])]


@_template("{list} share the {key} {value}")
def _shared(g):
  names = _names(g["list"])
  if g["key"] not in SHARED_KEYS:
    raise _Unparsed(g["key"])
  return [("object",) + n for n in names] + [("shared", g["key"], g["value"], tuple(sorted(names)))]


@_template("No two objects share the same {key}")
def _shared_none(g):
  if g["key"] not in SHARED_KEYS:
    raise _Unparsed(g["key"])
  return [("shared", g["key"], "none", ())]


@_template("{opening}, the scene has {n:num} object{s} in {nc:num} colour{s} ({colours:list}) "
           "and {ns:num} shape{s} ({shapes:list}) on {a} {bg} background, with {ne:num} empty cell{s}")
def _summary(g):
  colours = frozenset(m.group(0) for m in _items(g["colours"], _COLOUR))
  shapes = frozenset(m.group(0) for m in _items(g["shapes"], _SHAPE))
  return [("summary", "objects", _num(g["n"])), ("summary", "n_colours", _num(g["nc"])),
          ("summary", "colours", colours), ("summary", "n_shapes", _num(g["ns"])),
          ("summary", "shapes", shapes), ("summary", "background", g["bg"]),
          ("empty", "count", _num(g["ne"]))]


def _comparison(axis: str, text: str) -> tuple:
  a, b = _CMP[axis]
  options = {f"more objects in the {a} {axis} than in the {b} {axis}": a,
             f"more objects in the {b} {axis} than in the {a} {axis}": b,
             f"as many objects in the {a} {axis} as in the {b} {axis}": "equal"}
  if text not in options:
    raise _Unparsed(text)
  return ("summary", axis + "s", options[text])


@_template("There are {rows:list}, and {cols:list}")
def _balance_sentence(g):
  return [_comparison("row", g["rows"]), _comparison("column", g["cols"])]


def sentences(text: str) -> tuple[list[str], str]:
  """(full sentences without their full stop, the trailing fragment without one or '')."""
  parts = re.split(r"(?<=\.)\s+", " ".join(text.split()))
  tail = "" if not parts or parts[-1].endswith(".") else parts.pop()
  return [p[:-1].strip() for p in parts if p[:-1].strip()], tail


def parse_sentence(sentence: str) -> list[tuple] | None:
  """The facts of one sentence (no full stop), or None when no template matches it."""
  for regex, handler in _TEMPLATES:
    m = regex.fullmatch(sentence)
    if m:
      try:
        return handler({k: (v.lower() if v is not None else None) for k, v in m.groupdict().items()})
      except _Unparsed:
        continue  # a later template may still match (e.g. a list that is not a name list)
  return None


def parse(text: str) -> tuple[list[tuple], list[str]]:
  """(the distinct facts stated in `text` in order of first mention, the sentences no template
  matched, the truncated last fragment included)."""
  full, tail = sentences(text)
  facts, seen, unparsed = [], set(), []
  for s in full:
    got = parse_sentence(s)
    if got is None:
      unparsed.append(s)
      continue
    for f in got:
      if f not in seen:
        seen.add(f)
        facts.append(f)
  if tail:
    unparsed.append(tail)
  return facts, unparsed


# ----------------------------------------------------------------------------- scoring


def render(fact: tuple) -> str:
  """A fact in words, for display."""
  kind = fact[0]
  names = lambda ns: scenes.join_words([f"the {c} {s}" for c, s in ns])
  if kind == "cell":
    _, r, c, attr, v = fact
    return f"the object in the {scenes.cell_name(r, c)} is " + (scenes.with_article(v) if attr == "shape" else v)
  if kind == "object":
    return scenes.with_article(f"{fact[1]} {fact[2]}")
  if kind == "empty":
    return (f"the {scenes.cell_name(*fact[2:])} cell is empty" if fact[1] == "cell"
            else f"{scenes.counted(fact[2], 'empty cell')}")
  if kind in ("row", "column") and fact[1] == "count":
    line = (scenes.ROWS if kind == "row" else scenes.COLS)[fact[2]]
    return f"{scenes.counted(fact[3], 'object')} in the {line} {kind}"
  if kind in ("row", "column"):
    line = (scenes.ROWS if kind == "row" else scenes.COLS)[fact[4]]
    return f"the {fact[2]} {fact[3]} is in the {line} {kind}"
  if fact[1] == "count":
    return scenes.counted(fact[3], fact[2] if kind == "shape" else f"{fact[2]} object")
  if fact[1] == "of":
    return f"the {fact[2]} {fact[3]} is {fact[4]}"
  if kind == "relation":
    _, a, b, v, h = fact
    rel = " and ".join([p for p in (v, f"to the {h} of" if h else "") if p]) or "beside"
    return f"the {a[0]} {a[1]} is {rel} the {b[0]} {b[1]}"
  if kind == "extremes":
    if fact[1] == "same":
      return f"all the objects are {fact[2]}"
    return f"the {fact[1]}: {names(fact[2])} ({fact[3]})"
  if kind == "shared":
    return (f"no two objects share the {fact[1]}" if fact[2] == "none"
            else f"{names(fact[3])} share the {fact[1]} {fact[2]}")
  what, v = fact[1], fact[2]  # summary
  if what in ("colours", "shapes"):
    return f"the {what} are {scenes.join_words(sorted(v))}"
  if what in ("rows", "columns"):
    a, b = _CMP[what[:-1]]
    return (f"as many objects in the {a} as in the {b} {what[:-1]}" if v == "equal" else
            f"more objects in the {v} {what[:-1]} than in the {b if v == a else a} {what[:-1]}")
  if what == "background":
    return f"a {v} background"
  return scenes.counted(v, {"objects": "object", "n_colours": "colour", "n_shapes": "shape"}[what])


@dataclasses.dataclass
class FactReport:
  """The facts of one answer scored against its scene (module docstring: the definitions)."""
  stated: int
  correct: int
  true: int  # the scene's true facts in the classes the answer states (recall's denominator)
  precision: float
  recall: float
  false_facts: list[str]  # rendered, in order of first mention
  unparsed: int  # sentences no template matched (the truncated fragment included)
  unparsed_sentences: list[str]
  truncated: bool  # the answer ends without a full stop
  by_class: dict[str, dict[str, int]]  # class -> {"stated", "correct", "true"}

  def verdict(self, max_false: int = 4) -> str:
    """'facts: 41 of 43 correct (precision 0.95, recall 0.88); false: 'a purple cross', ...'"""
    line = (f"facts: {self.correct} of {self.stated} correct (precision {self.precision:.2f}, "
            f"recall {self.recall:.2f})")
    if self.unparsed:
      line += f"; {self.unparsed} sentence{'s' if self.unparsed != 1 else ''} not parsed"
    if self.false_facts:
      shown = ", ".join(repr(f) for f in self.false_facts[:max_false])
      more = len(self.false_facts) - max_false
      line += f"; false: {shown}" + (f" and {more} more" if more > 0 else "")
    return line


def score(scene: dict, facts: list[tuple], unparsed: list[str] = (), truncated: bool = False
          ) -> FactReport:
  """Scores already parsed facts against `scene`."""
  truth = true_facts(scene)
  by_class = {}
  for f in facts:
    c = by_class.setdefault(fact_class(f), {"stated": 0, "correct": 0, "true": 0})
    c["stated"] += 1
    c["correct"] += f in truth
  for f in truth:
    if fact_class(f) in by_class:
      by_class[fact_class(f)]["true"] += 1
  stated = len(facts)
  correct = sum(c["correct"] for c in by_class.values())
  true = sum(c["true"] for c in by_class.values())
  return FactReport(stated=stated, correct=correct, true=true,
                    precision=correct / stated if stated else 0.0,
                    recall=correct / true if true else 0.0,
                    false_facts=[render(f) for f in facts if f not in truth],
                    unparsed=len(unparsed), unparsed_sentences=list(unparsed),
                    truncated=truncated, by_class=by_class)


def check(scene: dict, answer: str) -> FactReport:
  """Every fact `answer` states about `scene`, scored (module docstring)."""
  facts, unparsed = parse(answer)
  return score(scene, facts, unparsed, truncated=bool(sentences(answer)[1]))


def answers_question(scene: dict, asked: dict, answer: str) -> tuple[bool, bool]:
  """(addressed, correct) for a question about one colour or shape (`asked`: {"colour": "red"}
  or {"shape": "star"}, generator.sample's "asked"): addressed iff the answer's first sentence
  states how many objects of that value the scene has (as the reference answers do: "No, there is
  no red object in the image."), correct iff that count is the scene's."""
  (key, value), = asked.items()
  full, _ = sentences(answer)
  stated = [f for f in (parse_sentence(full[0]) if full else None) or ()
            if f[:3] == (key, "count", value)]
  return bool(stated), bool(stated) and stated[0] in true_facts(scene)


def pool(reports: list[FactReport]) -> dict:
  """Totals over several answers: pooled precision and recall (sums over all answers), the mean
  of the per-answer precisions, and per class {"stated", "correct", "true", "precision"}."""
  by_class = {}
  for r in reports:
    for name, c in r.by_class.items():
      t = by_class.setdefault(name, {"stated": 0, "correct": 0, "true": 0})
      for k in t:
        t[k] += c[k]
  for c in by_class.values():
    c["precision"] = c["correct"] / c["stated"] if c["stated"] else 0.0
  stated = sum(r.stated for r in reports)
  correct = sum(r.correct for r in reports)
  true = sum(r.true for r in reports)
  n = max(len(reports), 1)
  return {"answers": len(reports), "stated": stated, "correct": correct, "true": true,
          "precision": correct / stated if stated else 0.0, "recall": correct / true if true else 0.0,
          "mean_precision": sum(r.precision for r in reports) / n,
          "mean_recall": sum(r.recall for r in reports) / n,
          "unparsed": sum(r.unparsed for r in reports),
          "truncated": sum(r.truncated for r in reports),
          "by_class": dict(sorted(by_class.items()))}
