"""Image loading: odd formats are converted, bad files give one clear InputError."""

import numpy as np
import pytest
from PIL import Image

import vispec_jax as vj
from vispec_jax import processing
from tests.folders import png_header_only


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "L", "LA", "P", "RGBA", "F"])
def test_modes_convert_to_rgb(tmp_path, mode):
  a = np.random.default_rng(0).integers(0, 255, (20, 30, 4 if mode == "CMYK" else 1), np.uint8)
  if mode == "CMYK":
    img = Image.fromarray(a, "CMYK")
  elif mode == "I;16":
    img = Image.fromarray(a[..., 0].astype(np.uint16) * 257)
  elif mode == "F":
    img = Image.fromarray(a[..., 0].astype(np.float32) / 7.0, "F")
  else:
    img = Image.fromarray(a[..., 0], "L").convert(mode)
  path = tmp_path / ("x.tif" if mode in ("I;16", "F", "CMYK") else "x.png")
  img.save(path)
  out = vj.load_image(str(path))
  assert out.mode == "RGB" and out.size == (30, 20)
  assert np.asarray(out).std() > 0  # 16-bit and float images are rescaled, not clipped to white


@pytest.mark.parametrize("case,msg", [
    ("missing", "image not found"),
    ("empty", "empty"),
    ("text", "cannot read image"),
    ("truncated", "cannot read image"),
    ("huge", "too large"),
    ("zero-width", "cannot read image"),
    ("directory", "not a file"),
])
def test_bad_images(tmp_path, case, msg):
  path = tmp_path / "x.png"
  if case == "empty":
    path.write_bytes(b"")
  elif case == "text":
    path.write_text("this is not a picture")
  elif case == "truncated":
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(path)
    path.write_bytes(path.read_bytes()[:60])
  elif case == "huge":
    png_header_only(path, 20000, 20000)
  elif case == "zero-width":
    png_header_only(path, 0, 10)
  elif case == "directory":
    path.mkdir()
  with pytest.raises(vj.InputError, match=msg):
    processing.load_image(str(path))


def test_zero_size_pil_image():
  with pytest.raises(vj.InputError, match="zero size: 0x5"):
    vj.load_image(Image.new("RGB", (0, 5)))


def _animated(path, n, size=(40, 30)):
  frames = [Image.fromarray(np.full(size[::-1] + (3,), 40 * i, np.uint8)) for i in range(n)]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
  return path


@pytest.mark.parametrize("name", ["clip.gif", "clip.webp", "clip.tif"])
def test_multi_frame_file_is_a_video(tmp_path, name):
  frames = processing.load_frames(str(_animated(tmp_path / name, 3)))
  assert [(f.mode, f.size) for f in frames] == [("RGB", (40, 30))] * 3
  assert len({np.asarray(f).tobytes() for f in frames}) == 3  # three different frames


def test_bad_video_files(tmp_path, monkeypatch):
  path = _animated(tmp_path / "clip.gif", 4)
  data = path.read_bytes()
  (tmp_path / "cut.gif").write_bytes(data[:len(data) * 2 // 3])
  with pytest.raises(vj.InputError, match="cannot read frame"):
    processing.load_frames(str(tmp_path / "cut.gif"))
  monkeypatch.setattr(processing, "MAX_IMAGE_PIXELS", 3 * 40 * 30)  # one frame fits, four do not
  with pytest.raises(vj.InputError, match="4 frames of 40x30"):
    processing.load_frames(str(path))
