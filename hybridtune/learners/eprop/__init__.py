"""``eprop``: a three-factor learner whose third factor is the error at the top of the residual stream.

* :mod:`.rule` — the pure e-prop math on one spiking LoRA layer (pseudo-derivative × presynaptic trace × signal);
* :mod:`.top` — the residual-stream error, by one backward through the final norm and ``lm_head`` only;
* :mod:`.feedback` — feedback path strategies (``residual``, ``one_hop``, ``random``) and their registry;
* :mod:`.depth` — how much learning rate each block gets (by default only the top 6 blocks learn);
* :mod:`.learner` — the stateful learner the trainer drives.
"""

from __future__ import annotations

from hybridtune.learners.depth import depth_weights

from .feedback import FEEDBACK_PATHS, FeedbackPath, feedback_path, register_feedback_path
from .learner import EpropLearner
from .rule import eprop_factor_grads
from .top import TopCapture, final_norm, top_error

__all__ = ["EpropLearner", "depth_weights", "FEEDBACK_PATHS", "FeedbackPath", "feedback_path", "register_feedback_path",
           "eprop_factor_grads", "TopCapture", "final_norm", "top_error"]
