"""CORA scene-graph dual encoder for image-text retrieval, in Keras 3."""

__version__ = "0.1.0"
