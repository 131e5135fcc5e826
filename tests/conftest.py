"""Shared pytest setup: `tf_only` tests run only on the TensorFlow backend."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason="needs the TensorFlow backend (tf_only)")
    for item in items:
        if "tf_only" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    """On torch, one intra-op thread: the tests' tensors are tiny and the CI
    cores are shared, where thread hand-offs cost more than they save (a
    train step of the test model measured 3.7 s with 2 threads, 0.06 s with 1)."""
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
