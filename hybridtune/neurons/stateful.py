"""The base class of neurons that carry state from one call to the next, and the walker that resets a model.

State is registered by name (:meth:`StatefulNeuron.register_state`): a non-persistent buffer, so it follows
``.to()`` and is never saved, starts as None (rest) and is forgotten by the one :meth:`StatefulNeuron.reset_state`.
There is no class-level registry of instances: :func:`reset_state` walks ``model.modules()``.

Example:
    >>> import torch
    >>> class Counter(StatefulNeuron):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.register_state("total")
    ...     def forward(self, x):
    ...         self.total = x if self.total is None else self.total + x
    ...         return self.total
    >>> c = Counter()
    >>> c(torch.ones(1)).item(), c(torch.ones(1)).item()
    (1.0, 2.0)
    >>> reset_state(torch.nn.Sequential(c, torch.nn.Linear(1, 1))), c.total is None, c.state_names
    (1, True, ('total',))
"""

from __future__ import annotations

from torch import nn


class StatefulNeuron(nn.Module):
    """A neuron whose output depends on earlier calls through state tensors registered with :meth:`register_state`."""

    def __init__(self) -> None:
        super().__init__()
        self._state_names: tuple[str, ...] = ()

    def register_state(self, name: str) -> None:
        """Declare ``name`` as carried state: a non-persistent buffer, None until the first call sets it."""
        self.register_buffer(name, None, persistent=False)
        self._state_names += (name,)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self._state_names

    def reset_state(self) -> None:
        """Forget every registered state (the next call starts from rest)."""
        for name in self._state_names:
            setattr(self, name, None)


def reset_state(model: nn.Module) -> int:
    """Reset every :class:`StatefulNeuron` in ``model`` (itself included); returns how many.

    Example:
        >>> from hybridtune.neurons import IFNeuron, LIFNeuron
        >>> reset_state(nn.Sequential(IFNeuron(), nn.Linear(2, 2), LIFNeuron()))
        2
    """
    neurons = [m for m in model.modules() if isinstance(m, StatefulNeuron)]
    for m in neurons:
        m.reset_state()
    return len(neurons)
