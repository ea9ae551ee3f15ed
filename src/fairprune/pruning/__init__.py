"""Pruning methods behind one interface, registered by name.

A method takes a trained model, a target sparsity and a context (data, device, seed) and
returns the model pruned: masked (unstructured) or physically smaller (structured).
Importing this package registers every built-in method.
"""
from fairprune.pruning.base import (
    PruneContext,
    PruningMethod,
    available_methods,
    get_method,
    make_permanent,
    measure_sparsity,
    prunable_weights,
    register,
)
from fairprune.pruning import bifp, ceag, fairgrape, iterative, structured, unstructured  # noqa: F401  (registers the methods)

__all__ = [
    "PruneContext", "PruningMethod", "available_methods", "get_method", "make_permanent",
    "measure_sparsity", "prunable_weights", "register",
]
