"""Timing on a device: ``python -m edgeslim.evaluators.remote MODEL --threads N`` prints the
artifact's latency as one JSON line: an ONNX file in onnxruntime (``measure_latency``), a LiteRT
file with ``--runtime litert`` or ``litert-micro`` and its ``--input-shape`` (``litert_latency``).
``--check`` prints the host's description instead, and with ``--runtime`` fails, naming the
package, when that runtime is not installed. The ``ssh`` latency source runs this on the
device, so the device needs only this package and the runtime installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeslim.errors import CandidateError, ConfigError
from edgeslim.evaluators.latency import host_description, measure_latency
from edgeslim.runtimes import RUNTIMES, check_installed

# The exit status when the runtime refuses or fails to run the file: the candidate's problem,
# not the device's (any other failure is the device's: ``DeviceError`` on the host).
REFUSED_EXIT = 3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edgeslim.evaluators.remote",
        description="Time a deployable file at batch 1; print the result as JSON.")
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-spread", type=float, default=0.25)
    parser.add_argument("--runtime", choices=tuple(RUNTIMES), default="onnxruntime")
    parser.add_argument("--input-shape", help="CxHxW of one input (LiteRT files)")
    parser.add_argument("--check", action="store_true", help="print this host's description")
    args = parser.parse_args(argv)
    if args.check or args.model is None:
        try:
            check_installed(args.runtime, to_run=True)
        except ConfigError as exc:
            sys.exit(f"{exc} on {host_description()['node']}")
        print(json.dumps(host_description()))
        return
    try:
        if args.runtime == "onnxruntime":
            result = measure_latency(args.model, None, args.threads,
                                     max_spread=args.max_spread)
        else:
            from edgeslim.evaluators.litert import litert_latency

            shape = tuple(int(v) for v in args.input_shape.split("x"))
            result = litert_latency(args.model, shape, args.runtime, args.threads)
    except CandidateError as exc:
        print(exc, file=sys.stderr)
        sys.exit(REFUSED_EXIT)
    print(json.dumps(result.to_dict()))


if __name__ == "__main__":
    main()
