"""Parity stamps: the record that the CUDA kernel matched the PyTorch reference on a class of device.

``ops.backend: auto`` picks the kernel only on a device class with a stamp; until then the reference runs and
:func:`~hybridtune.ops.backend.backend_info` (and ``hybridtune doctor``) says why. A stamp is written by
``benchmarks/gpu_check.sh`` after the parity tests pass (``python -m hybridtune.ops.parity stamp --junit FILE``)
into the machine's cache (``$HYBRIDTUNE_CACHE/parity/``); stamps committed with the package live in
``verified_devices.json`` beside this file. The device class is the compute capability (``sm_90``): the kernel is
compiled per architecture, and parity on one card of an architecture stands for the others.

Example:
    >>> import tempfile, os
    >>> os.environ["HYBRIDTUNE_CACHE"] = tempfile.mkdtemp()
    >>> find_stamp("sm_75") is None
    True
    >>> _ = write_stamp("sm_75", {"tests": 12, "failures": 0, "errors": 0}, device="test card")
    >>> find_stamp("sm_75")["device"]
    'test card'
    >>> del os.environ["HYBRIDTUNE_CACHE"]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

from ..paths import cache_root

PACKAGE_STAMPS = Path(__file__).with_name("verified_devices.json")


def device_class(index: int = 0) -> str:
    """``sm_XY`` of CUDA device ``index``."""
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def _user_stamp(cls: str) -> Path:
    return cache_root() / "parity" / f"{cls}.json"


def find_stamp(cls: str) -> dict[str, Any] | None:
    """The stamp for device class ``cls`` (the machine's cache first, then the package's), or None."""
    user = _user_stamp(cls)
    if user.is_file():
        try:
            return json.loads(user.read_text())
        except (OSError, ValueError):
            return None  # an unreadable stamp verifies nothing
    if PACKAGE_STAMPS.is_file():
        return json.loads(PACKAGE_STAMPS.read_text()).get("devices", {}).get(cls)
    return None


def write_stamp(cls: str, tests: dict[str, int], *, device: str) -> Path:
    """Record that the parity tests passed on ``cls``; refuses a run with failures, errors or no test."""
    if tests.get("tests", 0) - tests.get("skipped", 0) <= 0 or tests.get("failures") or tests.get("errors"):
        raise ValueError(f"parity tests did not pass ({tests}); no stamp written")
    stamp = {"device_class": cls, "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
             "tests": tests, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = _user_stamp(cls)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    tmp.replace(path)
    return path


def junit_counts(path: str | Path) -> dict[str, int]:
    """Totals of a pytest ``--junitxml`` file: tests, failures, errors, skipped."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridtune.ops.parity", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    stamp = sub.add_parser("stamp", help="write this device's stamp from a passing parity run")
    stamp.add_argument("--junit", required=True, help="pytest --junitxml output of tests/ops/test_cuda_parity.py")
    stamp.add_argument("--copy", help="also write the stamp here (e.g. beside the check's results)")
    stamp.add_argument("--package", action="store_true",
                       help=f"also record it in {PACKAGE_STAMPS.name} of this checkout, to be committed")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device visible: nothing to stamp", file=sys.stderr)
        return 2
    try:
        path = write_stamp(device_class(), junit_counts(args.junit), device=torch.cuda.get_device_name())
    except (OSError, ValueError, ET.ParseError) as exc:
        print(f"{args.junit}: {exc}", file=sys.stderr)
        return 2
    print(f"parity stamp written: {path}")
    record = json.loads(path.read_text())
    if args.copy:
        Path(args.copy).write_text(json.dumps(record, indent=2) + "\n")
        print(f"copied to {args.copy}")
    if args.package:
        stamps = json.loads(PACKAGE_STAMPS.read_text()) if PACKAGE_STAMPS.is_file() else {"devices": {}}
        stamps.setdefault("devices", {})[record["device_class"]] = record
        PACKAGE_STAMPS.write_text(json.dumps(stamps, indent=2, sort_keys=True) + "\n")
        print(f"recorded in {PACKAGE_STAMPS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
