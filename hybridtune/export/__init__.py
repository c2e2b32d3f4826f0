"""Exports of the spiking parts of a model to exchange formats (NIR), with the parts left out named.

``nir`` is optional (``pip install 'hybridtune[nir]'``); it is imported when an export runs.
"""

from __future__ import annotations

from .nir import BLOCK_LEFT_OUT, block_module, export_block, export_linear, export_model, read_info
from .nir_run import run_graph

__all__ = ["BLOCK_LEFT_OUT", "block_module", "export_block", "export_linear", "export_model", "read_info",
           "run_graph"]
