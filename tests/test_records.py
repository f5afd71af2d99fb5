"""train/data.py:Records on in-memory datasets: the train/held-out split and `data.mix` (a second
dataset giving a fraction of the train rows)."""

import ml_collections
import numpy as np
import pytest

from configs import common
from train import data

MAIN, OTHER = 40, 30  # records; the other dataset's are told apart by their first token


def dataset(n, first_token, image_hw=(28, 28)):
  rows = [{"tokens": np.array([first_token, 5 + i % 3, 6]), "loss_mask": np.array([0, 1, 1]),
           "positions": np.arange(3)[None], "index": i} for i in range(n)]
  return rows, {"lengths": [3] * n, "image_hw": list(image_hw), "position_rows": 1,
                "family": "qwen2_5_vl", "feature_dim": 0}


@pytest.fixture
def folders(monkeypatch):
  sets = {"main": dataset(MAIN, 1), "/d/vispec_draft_data/inv/1.0.0": dataset(OTHER, 2),
          "/d/vispec_draft_data/small/1.0.0": dataset(OTHER, 2, image_hw=(14, 14))}
  monkeypatch.setattr(data, "open_dataset", lambda path: sets[path])


def config(**mix):
  c = common.base_config()
  c.data.dir, c.batch_size, c.total_steps, c.data.eval_fraction = "/d", 10, 4, 0.25
  if mix:
    c.data.mix = ml_collections.ConfigDict(mix)
  return c


COLLATE = data.Collator(pad_id=0, vision_token_ids=(99,), max_len=8)


def first_tokens(records, batches, train=True):
  ds = records.dataset(COLLATE, train=train)
  return np.concatenate([ds[i]["ids"][:, 0] for i in range(batches)])


def test_without_mix_each_epoch_is_the_train_split_once(folders):
  records = data.Records(config(), "main")
  assert len(records.train_idx) == 30 and list(records.eval_idx) == list(range(30, 40))
  ds = records.dataset(COLLATE, train=True)
  seen = np.concatenate([ds[i]["index"] for i in range(3)])  # 3 batches of 10 = one epoch
  assert sorted(seen) == list(range(30))
  assert set(first_tokens(records, 6)) == {1}


def test_mix_gives_its_weight_of_the_train_rows_and_none_held_out(folders):
  records = data.Records(config(name="inv", weight=0.5), "main")
  tokens = first_tokens(records, 40)  # 400 rows
  share = np.mean(tokens == 2)
  assert 0.4 < share < 0.6, share
  assert set(tokens) == {1, 2}
  assert set(first_tokens(records, 2, train=False)) == {1}  # held-out: the main dataset's
  ds = records.dataset(COLLATE, train=True)
  mixed = np.concatenate([ds[i]["global_index"] for i in range(40)])
  assert set(mixed[tokens == 2]) == set(range(MAIN, MAIN + OTHER))  # every mixed record used
  assert set(mixed[tokens == 1]) == set(range(30))                  # main's held-out never


def test_mix_with_a_small_weight(folders):
  tokens = first_tokens(data.Records(config(name="inv", weight=0.1), "main"), 40)
  assert 0.04 < np.mean(tokens == 2) < 0.16


def test_mix_errors(folders):
  with pytest.raises(ValueError, match="data.mix.name is unset"):
    common.check(config(name=None, weight=0.5))
  with pytest.raises(ValueError, match="image_hw"):
    data.Records(config(name="small", weight=0.5), "main")
  with pytest.raises(ValueError, match="data.mix.weight"):
    common.check(config(name="inv", weight=1.0))
  with pytest.raises(ValueError, match=r"unknown datagen keys \['inptu'\]"):
    common.check(config(name="inv", weight=0.5, datagen={"inptu": "tfds:x"}))
