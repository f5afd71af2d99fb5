"""Load-side validation: every malformed config.json, chat template, safetensors header and shard
index is a ConfigError / CheckpointError naming the file and the field, never a TypeError from
deep inside a parser; the CLI prints it as one `error:` line with exit status 2."""

import json
import os
import struct

import jax
import pytest

import vispec_jax as vj
from tests.folders import copy_folder
from tests.test_cli import cli
from tests.test_draft import official_config, official_state_dict, write_official
from vispec_jax import checkpoints, draft, testing


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
  return testing.make_tiny_llava(str(tmp_path_factory.mktemp("tiny_llava")))


def _raw(folder):
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


def _config_folder(tmp_path, raw) -> str:
  """A folder holding only config.json: config errors come before any weight is read."""
  folder = tmp_path / "cfg"
  folder.mkdir(exist_ok=True)
  with open(folder / "config.json", "w") as f:
    json.dump(raw, f)
  return str(folder)


def _set(raw, path, value):
  *parents, last = path.split(".")
  for p in parents:
    raw = raw[p]
  if value is _DELETE:
    del raw[last]
  else:
    raw[last] = value


_DELETE = object()

# (JSON path, bad value, the words the message must hold after the path)
QWEN_BAD = [
    ("text_config.hidden_size", None, "must not be null"),
    ("text_config.num_attention_heads", 0, "must be a positive integer, got 0"),
    ("text_config.num_key_value_heads", -2, "must be a positive integer"),
    ("text_config.intermediate_size", "128", "must be a positive integer"),
    ("text_config.num_hidden_layers", 2.5, "must be a positive integer"),
    ("text_config.vocab_size", True, "must be a positive integer"),
    ("text_config.rms_norm_eps", "1e-6", "must be a positive finite number"),
    ("text_config.rope_parameters", ["default"], "must be a JSON object"),
    ("text_config.rope_parameters.mrope_section", "2,3,3", "must be a non-empty list"),
    ("text_config.rope_parameters.rope_theta", 0, "must be a positive finite number"),
    ("text_config", [1, 2], "must be a JSON object"),
    ("vision_config", [], "must be a JSON object"),
    ("vision_config", "big", "must be a JSON object"),
    ("vision_config.depth", 0, "must be a positive integer"),
    ("vision_config.num_heads", None, "must not be null"),
    ("vision_config.patch_size", {"h": 14}, "must be a positive integer"),
    ("vision_config.fullatt_block_indexes", [1, "x"], "must be a list of non-negative integers"),
    ("vision_config.tokens_per_second", -1, "must be a positive finite number"),
    ("vision_config.hidden_act", 3, "must be a string"),
    ("image_token_id", -1, "must be a non-negative integer"),
    ("eos_token_id", "</s>", "must be a token id"),
    ("pad_token_id", 1.5, "must be an integer"),
    ("architectures", "Qwen2_5_VLForConditionalGeneration", "must be a list of strings"),
    ("tie_word_embeddings", "yes", "must be true or false"),
]


@pytest.mark.parametrize("path, value, words", QWEN_BAD, ids=[f"{p}={v!r}" for p, v, _ in QWEN_BAD])
def test_qwen_config_bad_value_names_file_and_field(tiny_qwen_dir, tmp_path, path, value, words):
  raw = _raw(tiny_qwen_dir)
  _set(raw, path, value)
  folder = _config_folder(tmp_path, raw)
  with pytest.raises(vj.ConfigError) as e:
    vj.load_target(folder)
  assert str(e.value).startswith(os.path.join(folder, "config.json") + f": {path} {words}"), e.value


def test_flat_layout_top_level_value(tiny_qwen_dir, tmp_path):
  """Older checkpoints keep the LM keys at the top level: checked there too."""
  raw = _raw(tiny_qwen_dir)
  raw.update(raw.pop("text_config"))
  raw["num_attention_heads"] = None
  with pytest.raises(vj.ConfigError, match="config.json: num_attention_heads must not be null"):
    vj.load_target(_config_folder(tmp_path, raw))


# Values of the right type that cannot work together: named too.
QWEN_INCONSISTENT = [
    ("text_config.num_key_value_heads", 3, "num_attention_heads 4 is not a multiple of "
                                           "num_key_value_heads 3"),
    ("vision_config.num_heads", 3, "vision_config hidden_size 32 / num_heads 3"),
    ("vision_config.fullatt_block_indexes", [5], "name blocks beyond depth 2"),
    ("vision_config.window_size", 14, "window_size 14 is smaller than one merged patch"),
    ("image_token_id", 999, "image_token_id 999 is outside the vocabulary"),
    ("text_config.hidden_act", "relu6", "text hidden_act 'relu6' is not supported"),
    ("vision_config.hidden_act", "swish", "vision_config.hidden_act 'swish' is not supported"),
    ("vision_config", _DELETE, "missing key 'vision_config'"),
]


@pytest.mark.parametrize("path, value, words", QWEN_INCONSISTENT,
                         ids=[p for p, _, _ in QWEN_INCONSISTENT])
def test_qwen_config_inconsistent_sizes(tiny_qwen_dir, tmp_path, path, value, words):
  raw = _raw(tiny_qwen_dir)
  _set(raw, path, value)
  folder = _config_folder(tmp_path, raw)
  with pytest.raises(vj.ConfigError, match=words) as e:
    vj.load_target(folder)
  assert str(e.value).startswith(os.path.join(folder, "config.json")), e.value


LLAVA_BAD = [
    ("text_config.hidden_size", None, "must not be null"),
    ("text_config.num_attention_heads", 0, "must be a positive integer"),
    ("vision_config.num_attention_heads", 0, "must be a positive integer"),
    ("vision_config.image_size", "28", "must be a positive integer"),
    ("vision_config", [32], "must be a JSON object"),
    ("vision_feature_layer", "last", "must be an integer or a non-empty list"),
    ("image_token_index", None, "must not be null"),
    ("text_config.rope_parameters", "default", "must be a JSON object"),
]


@pytest.mark.parametrize("path, value, words", LLAVA_BAD, ids=[f"{p}={v!r}" for p, v, _ in LLAVA_BAD])
def test_llava_config_bad_value_names_file_and_field(tiny_llava_dir, tmp_path, path, value, words):
  raw = _raw(tiny_llava_dir)
  _set(raw, path, value)
  folder = _config_folder(tmp_path, raw)
  with pytest.raises(vj.ConfigError) as e:
    vj.load_target(folder)
  assert str(e.value).startswith(os.path.join(folder, "config.json") + f": {path} {words}"), e.value


def test_llava_clip_heads_must_divide_hidden(tiny_llava_dir, tmp_path):
  raw = _raw(tiny_llava_dir)
  raw["vision_config"]["num_attention_heads"] = 5
  with pytest.raises(vj.ConfigError, match="hidden_size 32 is not a multiple of num_attention_heads 5"):
    vj.load_target(_config_folder(tmp_path, raw))


@pytest.mark.parametrize("text", ["[1, 2]", '"qwen"', "null"])
def test_config_json_not_an_object(tmp_path, text):
  folder = tmp_path / "m"
  folder.mkdir()
  (folder / "config.json").write_text(text)
  with pytest.raises(vj.CheckpointError, match=r"config\.json must hold a JSON object"):
    vj.load_target(str(folder))


def test_valid_configs_still_load(tiny_qwen_dir, tiny_llava_dir):
  """The checks refuse nothing the tiny (transformers-5 layout) folders hold; null where
  transformers allows it (kv heads, head_dim, rope_scaling) still means the default."""
  vj.load_target(tiny_llava_dir)
  raw = _raw(tiny_qwen_dir)
  base = vj.models.config_from_hf(raw)
  raw["text_config"].update(num_key_value_heads=None, head_dim=None, rope_scaling=None)
  raw["pad_token_id"] = None
  cfg = vj.models.config_from_hf(raw)
  assert cfg.text.num_kv_heads == cfg.text.num_heads and cfg.text.head_dim == base.text.head_dim


# --------------------------------------------------------------------- chat templates


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json",
                                   "chat_template.json"])
def test_broken_chat_template_names_its_file(tiny_qwen_dir, tmp_path, where):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  broken = "{% for message in messages %}{{ message['content'] }}"  # no endfor
  os.remove(os.path.join(folder, "chat_template.jinja"))
  if where == "chat_template.jinja":
    with open(os.path.join(folder, where), "w") as f:
      f.write(broken)
  elif where == "tokenizer_config.json":
    path = os.path.join(folder, where)
    with open(path) as f:
      tc = json.load(f)
    tc["chat_template"] = broken
    with open(path, "w") as f:
      json.dump(tc, f)
  else:  # the processor-level template of older saves
    with open(os.path.join(folder, where), "w") as f:
      json.dump({"chat_template": broken}, f)
  with pytest.raises(vj.CheckpointError, match=r"the chat template is not valid Jinja") as e:
    vj.load_target(folder)
  assert os.path.join(folder, where) in str(e.value)


def test_chat_template_json_wrong_type(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  os.remove(os.path.join(folder, "chat_template.jinja"))
  with open(os.path.join(folder, "chat_template.json"), "w") as f:
    json.dump({"chat_template": ["{{ x }}"]}, f)
  with pytest.raises(vj.CheckpointError, match=r'chat_template\.json: "chat_template" must be a string'):
    vj.load_target(folder)


def test_corrupt_tokenizer_file_is_named(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  with open(os.path.join(folder, "tokenizer.json"), "w") as f:
    f.write('{"version": "1.0", "model": 3}')
  with pytest.raises(vj.CheckpointError, match="cannot load the tokenizer"):
    vj.load_target(folder)


PREPROCESSOR_BAD = [
    ("{bad", "preprocessor_config.json is not valid JSON"),
    ("[1]", "preprocessor_config.json must hold a JSON object"),
    ('{"min_pixels": "many"}', "preprocessor_config.json: min_pixels must be a positive integer"),
    ('{"max_pixels": 0}', "preprocessor_config.json: max_pixels must be a positive integer"),
    ('{"image_std": [0.5, 0, 0.5]}', "preprocessor_config.json: image_std must be a positive"),
    ('{"size": [1, 2]}', "preprocessor_config.json: size must be a positive integer or an object"),
    ('{"do_resize": "no"}', "preprocessor_config.json: do_resize must be true or false"),
    ('{"min_pixels": 9000, "max_pixels": 100}', "min_pixels 9000 is larger than max_pixels 100"),
]


@pytest.mark.parametrize("text, words", PREPROCESSOR_BAD, ids=[t for t, _ in PREPROCESSOR_BAD])
def test_bad_preprocessor_config(tiny_qwen_dir, tmp_path, text, words):
  """Checked at load (transformers would only fail at the first image, with a TypeError)."""
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
    f.write(text)
  with pytest.raises(vj.CheckpointError, match=words):
    vj.load_target(folder)


def test_deeply_nested_config_json(tmp_path):
  folder = tmp_path / "m"
  folder.mkdir()
  (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
  with pytest.raises(vj.CheckpointError, match="config.json is not usable JSON: nested too deeply"):
    vj.load_target(str(folder))


# ----------------------------------------------------------------- safetensors headers


def _write_raw_safetensors(path, header, data=b"\0" * 16):
  blob = header if isinstance(header, bytes) else json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + data)


GOOD = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
HEADER_BAD = [
    ("not-json", b"{nope", "not JSON"),
    ("list", [GOOD], "a JSON list, not an object"),
    ("entry-not-object", {"w": [1, 2]}, "tensor 'w': entry is a JSON list"),
    ("missing-dtype", {"w": {"shape": [2, 2], "data_offsets": [0, 16]}}, "missing field 'dtype'"),
    ("missing-shape", {"w": {"dtype": "F32", "data_offsets": [0, 16]}}, "missing field 'shape'"),
    ("missing-offsets", {"w": {"dtype": "F32", "shape": [2, 2]}}, "missing field 'data_offsets'"),
    ("dtype-number", {"w": {**GOOD, "dtype": 4}}, "dtype must be a string"),
    ("dtype-unknown", {"w": {**GOOD, "dtype": "F128"}}, "unsupported dtype 'F128'"),
    ("shape-string", {"w": {**GOOD, "shape": "2x2"}}, "shape must be a list of non-negative"),
    ("shape-negative", {"w": {**GOOD, "shape": [-2, -2]}}, "shape must be a list of non-negative"),
    ("offsets-strings", {"w": {**GOOD, "data_offsets": ["0", "16"]}}, "data_offsets must be"),
    ("offsets-reversed", {"w": {**GOOD, "data_offsets": [16, 0]}}, "data_offsets must be"),
    ("offsets-one", {"w": {**GOOD, "data_offsets": [16]}}, "data_offsets must be"),
    ("offsets-past-end", {"w": {**GOOD, "data_offsets": [0, 1 << 40]}}, "truncated"),
    ("offsets-wrong-span", {"w": {**GOOD, "data_offsets": [0, 12]}}, "span 12 bytes but shape"),
]


@pytest.mark.parametrize("header, words", [h[1:] for h in HEADER_BAD], ids=[h[0] for h in HEADER_BAD])
def test_malformed_safetensors_header(tmp_path, header, words):
  path = str(tmp_path / "model.safetensors")
  _write_raw_safetensors(path, header)
  with pytest.raises(vj.CheckpointError, match="corrupt|truncated|unsupported") as e:
    checkpoints.SafetensorsFile(path)
  assert str(e.value).startswith(path) and words in str(e.value), e.value


def test_malformed_header_through_load_target(tiny_qwen_dir, tmp_path):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  _write_raw_safetensors(os.path.join(folder, "model.safetensors"), {"w": {**GOOD, "shape": None}})
  with pytest.raises(vj.CheckpointError, match="model.safetensors: corrupt safetensors header: "
                     "tensor 'w': shape must be"):
    vj.load_target(folder)


# ----------------------------------------------------------------------- shard indexes


INDEX_BAD = [
    ("not-json", "{weight_map", "is not valid JSON"),
    ("list", [], "must hold a JSON object"),
    ("no-weight-map", {"metadata": {}}, '"weight_map" must be an object'),
    ("weight-map-list", {"weight_map": ["model.safetensors"]}, '"weight_map" must be an object'),
    ("shard-int", {"weight_map": {"a": 3}}, "entries must name a shard file"),
    ("shard-null", {"weight_map": {"a": None}}, "entries must name a shard file"),
    ("shard-escapes", {"weight_map": {"a": "../model.safetensors"}}, "entries must name a shard"),
    ("empty", {"weight_map": {}}, '"weight_map" is empty'),
    ("shard-missing", {"weight_map": {"a": "model-00002-of-00002.safetensors"}}, "are missing"),
]


@pytest.mark.parametrize("index, words", [i[1:] for i in INDEX_BAD], ids=[i[0] for i in INDEX_BAD])
@pytest.mark.parametrize("name", ["model.safetensors.index.json", "pytorch_model.bin.index.json"])
def test_malformed_shard_index(tiny_qwen_dir, tmp_path, name, index, words):
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  if name.startswith("pytorch"):  # a .bin index is read only when there is no safetensors file
    os.rename(os.path.join(folder, "model.safetensors"), os.path.join(folder, "x.st"))
  path = os.path.join(folder, name)
  with open(path, "w") as f:
    f.write(index if isinstance(index, str) else json.dumps(index))
  with pytest.raises(vj.CheckpointError) as e:
    checkpoints.weight_files(folder)
  assert path in str(e.value) and words in str(e.value), e.value


# ------------------------------------------------------------------------ draft folders


DRAFT_BAD = [
    ("hidden_size", None, "must not be null"),
    ("num_attention_heads", 0, "must be a positive integer"),
    ("intermediate_size", "48", "must be a positive integer"),
    ("qkv_bias", "false", "must be true or false"),
    ("rope_scaling", [], "must be a JSON object"),
    ("num_q", 0, "must be a positive integer"),
    ("rms_norm_eps", None, "must not be null"),
]


@pytest.mark.parametrize("key, value, words", DRAFT_BAD, ids=[f"{k}={v!r}" for k, v, _ in DRAFT_BAD])
def test_official_draft_config_bad_value(tmp_path, key, value, words):
  raw = official_config()
  raw[key] = value
  folder = write_official(tmp_path / "d", official_state_dict(), raw)
  with pytest.raises(vj.CheckpointError) as e:
    vj.load_draft(folder)
  assert str(e.value).startswith(os.path.join(folder, "config.json") + f": {key} {words}"), e.value


@pytest.mark.parametrize("field, value, words", [
    ("hidden_act", "relu6", "draft hidden_act 'relu6' is not supported"),
    ("num_kv_heads", 3, "not a multiple of num_key_value_heads 3"),
    ("head_dim", 4, "x head_dim 4 != hidden_size 32"),
])
def test_draft_sizes_checked_without_a_target(tmp_path, field, value, words):
  """Checked at load even with no target to compare with (it would fail at the first step)."""
  cfg = vj.DraftConfig(kind="eagle", hidden_size=32, intermediate_size=48, num_heads=4,
                       num_kv_heads=4, head_dim=8, vocab_size=40)
  folder = str(tmp_path / "d")
  vj.save_draft(folder, cfg, draft.init_params(cfg, jax.random.PRNGKey(0)))
  raw = _raw(folder)
  raw["vispec_jax_draft"][field] = value
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(raw, f)
  with pytest.raises(vj.CheckpointError, match=words) as e:
    vj.load_draft(folder)
  assert str(e.value).startswith(os.path.join(folder, "config.json")), e.value


NATIVE_BAD = [
    ("hidden_size", "32", "must be a positive integer"),
    ("num_heads", 0, "must be a positive integer"),
    ("rope_theta", None, "must be a positive finite number"),
    ("qkv_bias", 1, "must be true or false"),
    ("kind", 3, "must be a string"),
]


@pytest.mark.parametrize("key, value, words", NATIVE_BAD, ids=[f"{k}={v!r}" for k, v, _ in NATIVE_BAD])
def test_native_draft_config_bad_value(tmp_path, key, value, words):
  cfg = vj.DraftConfig(kind="vispec", hidden_size=32, intermediate_size=48, num_heads=4,
                       num_kv_heads=4, head_dim=8, vocab_size=40)
  folder = str(tmp_path / "d")
  vj.save_draft(folder, cfg, draft.init_params(cfg, jax.random.PRNGKey(0)))
  path = os.path.join(folder, "config.json")
  raw = _raw(folder)
  raw["vispec_jax_draft"][key] = value
  with open(path, "w") as f:
    json.dump(raw, f)
  with pytest.raises(vj.CheckpointError) as e:
    vj.load_draft(folder)
  assert str(e.value).startswith(f"{path}: vispec_jax_draft.{key} {words}"), e.value
  raw["vispec_jax_draft"] = [1]
  with open(path, "w") as f:
    json.dump(raw, f)
  with pytest.raises(vj.CheckpointError, match="vispec_jax_draft must be a JSON object"):
    vj.load_draft(folder)


# ---------------------------------------------------------------------------- the CLI


def _cli_error(folder, *extra):
  r = cli("--model", folder, "--prompt", "Describe.", "--max-new-tokens", 2, *extra)
  assert r.returncode == 2, (r.stdout, r.stderr)
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
  return lines[0]


def test_cli_one_error_line(tiny_qwen_dir, tmp_path):
  """A bad config value, a broken shard index and a broken chat template, through
  `python -m infer.generate`: one line naming the file and field, exit status 2."""
  raw = _raw(tiny_qwen_dir)
  raw["text_config"]["num_attention_heads"] = 0
  line = _cli_error(_config_folder(tmp_path, raw))
  assert "config.json: text_config.num_attention_heads must be a positive integer" in line
  folder = copy_folder(tiny_qwen_dir, tmp_path / "m")
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": {"a": 7}}, f)
  assert "model.safetensors.index.json" in _cli_error(folder)
  folder = copy_folder(tiny_qwen_dir, tmp_path / "t")
  with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
    f.write("{% if %}")
  assert "chat_template.jinja: the chat template is not valid Jinja" in _cli_error(folder)
