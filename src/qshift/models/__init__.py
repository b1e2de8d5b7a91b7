"""Retrieval models behind one interface (:class:`RetrievalModel`) and their loaders."""

from .base import RetrievalModel, load_model, norm_layers  # noqa: F401
