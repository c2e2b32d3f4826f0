"""What every results file says about where it was measured: platform, cores, torch threads, load, versions."""

from __future__ import annotations

import os
import platform
import sys

import torch


def machine_info() -> dict:
    """The machine and software a measurement ran on (load averages: was the machine idle?)."""
    from hybridtune import __version__

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {"hybridtune": __version__, "torch": torch.__version__, "python": sys.version.split()[0]},
    }


def command_line() -> str:
    """The command that produced a results file, as a user would type it."""
    return " ".join(["python", *sys.argv])
