"""hybridtune: PEFT/STDP hybrid fine-tuning for spiking language models.

The public names are imported lazily so that ``import hybridtune`` stays cheap and a missing optional part
(CUDA extension, wandb, matplotlib) only fails when it is used.

Example:
    >>> import hybridtune as ht
    >>> ht.__version__  # doctest: +ELLIPSIS
    '...'
"""

from __future__ import annotations

from ._version import __version__
from .lazy import lazy_attributes

# public name -> "module:attribute"
_LAZY = {
    "load_model": "hybridtune.models:load_model",
    "load_tokenizer": "hybridtune.models:load_tokenizer",
    "corpus": "hybridtune.data:corpus",
    "RunConfig": "hybridtune.config:RunConfig",
    "load_config": "hybridtune.config:load_config",
    "ConversionConfig": "hybridtune.conversion:ConversionConfig",
    "convert": "hybridtune.conversion:convert",
    "register_recipe": "hybridtune.conversion:register_recipe",
    "load_spiking": "hybridtune.conversion:load_spiking",
    "energy_report": "hybridtune.accounting:energy_report",
    "SpikingLoraConfig": "hybridtune.adapters:SpikingLoraConfig",
    "get_spiking_peft_model": "hybridtune.adapters:get_spiking_peft_model",
    "load_adapter": "hybridtune.adapters:load",
    "learner": "hybridtune.learners:learner",
    "register_learner": "hybridtune.learners:register_learner",
    "Trainer": "hybridtune.trainers:Trainer",
    "TrainConfig": "hybridtune.config:TrainConfig",
}

__all__ = ["__version__", *_LAZY]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
