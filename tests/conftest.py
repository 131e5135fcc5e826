"""Shared pytest setup.

- `tf_only` tests run only on the TensorFlow backend.
- Tests of code that never touches Keras (the framework-free text side,
  NumPy retrieval metrics, the NumPy reference) are `backend_free`: they
  run once, in the TensorFlow pass of `make test`, not three times.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest


BACKEND_FREE = (
    "tests/scene_graph/",
    "tests/test_retrieval.py",
    "tests/test_reference_cora.py",
    "tests/test_cli_parse.py",
)


def pytest_collection_modifyitems(config, items):
    root = str(config.rootpath)
    for item in items:
        path = str(item.path).replace(root + os.sep, "").replace(os.sep, "/")
        if path.startswith(BACKEND_FREE):
            item.add_marker(pytest.mark.backend_free)
    if keras.backend.backend() == "tensorflow":
        return
    tf_only = pytest.mark.skip(reason="needs the TensorFlow backend (tf_only)")
    once = pytest.mark.skip(reason="backend-free: runs in the TensorFlow pass")
    for item in items:
        if "tf_only" in item.keywords:
            item.add_marker(tf_only)
        elif "backend_free" in item.keywords:
            item.add_marker(once)


def pytest_configure(config):
    """On torch, one intra-op thread: the tests' tensors are tiny and the CI
    cores are shared, where thread hand-offs cost more than they save (a
    train step of the test model measured 3.7 s with 2 threads, 0.06 s with 1)."""
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
