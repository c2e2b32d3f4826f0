"""Peak CPU heap of a block of code, for the benchmarks: glibc's ``mallinfo2`` sampled by a background thread.

``heap_in_use()`` counts every live allocation (arena + mmapped): CPU tensors, autograd's saved activations, spike
records. The sampler thread holds the GIL and glibc's arena locks while it reads, so it slows the code it watches:
time a step and measure its memory in separate runs.

Usage (from a script in ``benchmarks/``, whose folder is on ``sys.path``):
    from heap import PeakSampler
    with PeakSampler() as mem:
        step()
    extra_bytes = mem.peak - mem.start
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakSampler:
    """Highest ``heap_in_use()`` seen while the block runs (``interval`` seconds between reads); ``start`` is the
    level on entry, after a garbage collection."""

    def __init__(self, interval: float = 2e-4):
        self.interval, self.start, self.peak, self._stop = interval, 0, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, heap_in_use())
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        gc.collect()
        self.start = self.peak = heap_in_use()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, heap_in_use())
