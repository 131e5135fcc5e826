"""notebooks/quickstart.ipynb runs end to end in its small setting.

The notebook picks its own backend (JAX unless KERAS_BACKEND is set), so
running it once per CI backend would repeat the same work: it runs once,
with the PyTorch suite and on PyTorch, where the tiny setting trains in
seconds (JAX spends minutes compiling it on a 2-core CPU).
"""

import os
from pathlib import Path

import keras
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the quickstart notebook runs once, with the PyTorch suite (it chooses its own backend)",
)


def _text_outputs(cell) -> str:
    return "".join(
        output.get("text", "") + "".join(output.get("data", {}).get("text/plain", ""))
        for output in cell.get("outputs", [])
    )


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {**os.environ, "CORA_QUICKSTART_SMALL": "1", "KERAS_BACKEND": "torch"}
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path_factory.mktemp("notebook"))}},
    ).execute(env=env)
    return "\n".join(_text_outputs(cell) for cell in notebook.cells if cell.cell_type == "code")


def test_notebook_runs_every_stage(executed) -> None:
    for expected in (
        "backend: torch, small setting: True",
        "a swap_",
        "epoch 2: loss",
        "test: i2t_r1",
        "probes: swap_attribute",
        "events.out.tfevents",
        "'encode_image', 'encode_text'",
        "SavedModel: top images for",
        "  1. image",
    ):
        assert expected in executed, f"missing output {expected!r}"
