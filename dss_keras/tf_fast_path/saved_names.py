"""How T5's layers are named in saved files, so that a file written on one backend loads on another.

Keras names the layers of a functional model in a `.keras` or `.weights.h5`
file after their class: `t5_layer_norm`, `t5_layer_norm_1`, ... The lean
classes of `lean_t5` would name them `t5_layer_norm_keeping_input`, ..., which
no other backend has. `DistillStepByStep` therefore writes files with
KerasHub's classes (the lean ones come back when the fast path next traces a
step), and loads files written with the lean names (dss-keras 0.1, on
TensorFlow) into the lean classes. This module imports no TensorFlow.

Examples:

>>> saved_layer_class("t5_layer_norm_keeping_input_3")
't5_layer_norm_keeping_input'
>>> saved_layer_class("t5_layer_norm_3") in LEAN_SAVED_NAMES
False
"""

from __future__ import annotations

LEAN_SAVED_NAMES = frozenset({"t5_layer_norm_keeping_input",
                              "t5_attention_recomputing_probabilities",
                              "t5_layer_recomputing_feed_forward"})
"""The names Keras gives the lean classes' layers in a saved file (their numbers aside)."""


def saved_layer_class(name: str) -> str:
    """The class part of a layer's name in a saved file: `t5_layer_norm_3` -> `t5_layer_norm`."""
    base, _, number = name.rpartition("_")
    return base if number.isdigit() and base else name


def names_lean_layers(store) -> bool:
    """Whether a weights store being loaded names T5 layers by the lean classes.

    Args:
        store: What Keras hands `load_own_variables`: its H5 store (other
            stores, which never held lean names, give `False`).
    """
    h5_file = getattr(store, "h5_file", None)
    if h5_file is None:
        return False
    return bool(h5_file.visit(
        lambda path: saved_layer_class(path.rpartition("/")[2]) in LEAN_SAVED_NAMES or None))
