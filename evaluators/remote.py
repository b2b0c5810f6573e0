"""Timing on a device: ``python -m edgeslim.evaluators.remote MODEL.onnx --threads N`` prints the
artifact's latency (``measure_latency``) as one JSON line; ``--check`` prints the host's
description instead. The ``ssh`` latency source runs this on the device, so the device needs
only this package (and onnxruntime) installed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeslim.evaluators.latency import host_description, measure_latency


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edgeslim.evaluators.remote",
        description="Time an ONNX file in onnxruntime at batch 1; print the result as JSON.")
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-spread", type=float, default=0.25)
    parser.add_argument("--check", action="store_true", help="print this host's description")
    args = parser.parse_args(argv)
    if args.check or args.model is None:
        print(json.dumps(host_description()))
        return
    result = measure_latency(args.model, None, args.threads, max_spread=args.max_spread)
    print(json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
