"""notebooks/colab_tpu_demo.ipynb runs top to bottom on CPU (nbclient): the install cell is
skipped (the package imports), the built-in demo runs the shipped scenes models (models/scenes),
the checkpoint and draft folders are absent, so the tiny random model and a random draft stand in
and every cell runs."""

import os
import re

import nbformat
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "colab_tpu_demo.ipynb")


def _text(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))


def test_notebook_runs_on_cpu(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the kernel inherits the environment
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": REPO}}).execute()
  text = _text(nb)
  assert "(cpu); weights in float32" in text
  assert "skipped: no checkpoint folder" in text and "a random ViSpec draft stands in" in text
  assert "same tokens as vanilla: True" in text
  # The shipped target and ViSpec draft (infer.demo): identical answers, and the trained draft
  # is accepted (a broken checkpoint or loader gives tau ~0).
  tau = re.search(r"tokens; tau ([0-9.]+) .*identical: True", text)
  assert tau and float(tau.group(1)) > 1.0, text
