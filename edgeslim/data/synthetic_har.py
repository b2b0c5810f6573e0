"""Synthetic motion-sensor windows shaped like UCI-HAR (Anguita et al., 2013): 9 channels of
128 steps (2.56 s at 50 Hz) and 6 activities, for tests and examples without the real data.

Channels in UCI-HAR's order: body acceleration x/y/z, gyroscope x/y/z, total acceleration x/y/z
(in g). Each window is drawn from a simple model of its activity:

- walking, walking upstairs, walking downstairs: a gait oscillation at 1.9, 1.5 and 2.2 Hz
  (with its second harmonic) on the body acceleration and gyroscope, each activity with its own
  amplitude per axis; stairs add a slow vertical trend;
- sitting, standing, laying: no gait, small tremor; the device's orientation sets how gravity
  splits over the total-acceleration axes (standing: along x; sitting: tilted 40 degrees;
  laying: along z).

Every window has its own phase, a +-10% frequency and +-25% amplitude jitter, a +-15 degree
orientation jitter and Gaussian sensor noise, so the classes overlap a little (sitting and
standing most) but are learnable. The same seed gives the same arrays.

    python -m edgeslim.data.synthetic_har --out har.npz [--train 2000] [--test 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ACTIVITIES = ("walking", "walking_upstairs", "walking_downstairs", "sitting", "standing",
              "laying")
CHANNELS, STEPS, RATE_HZ = 9, 128, 50.0
GAIT_HZ = (1.9, 1.5, 2.2, 0.0, 0.0, 0.0)
# Gait amplitude (g) of body acceleration x/y/z per walking activity; the gyroscope follows
# with its own gains.
GAIT_AMPLITUDE = ((0.30, 0.12, 0.10), (0.22, 0.10, 0.18), (0.42, 0.15, 0.12))
TILT_DEG = (0.0, 0.0, 0.0, 40.0, 0.0, 90.0)  # device tilt from upright
NOISE = 0.03


def synthetic_har(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` windows, as float32 (samples, 9, 128), and their labels 0 to 5 (int64),
    classes balanced (round robin) and drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    y = np.arange(samples, dtype=np.int64) % len(ACTIVITIES)
    t = np.arange(STEPS) / RATE_HZ
    x = np.zeros((samples, CHANNELS, STEPS), dtype=np.float64)
    for i, label in enumerate(y):
        body = np.zeros((3, STEPS))
        gyro = np.zeros((3, STEPS))
        if GAIT_HZ[label]:
            freq = GAIT_HZ[label] * rng.uniform(0.9, 1.1)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * freq * t + phase)
            wave += 0.4 * np.sin(4 * np.pi * freq * t + 2 * phase)
            amp = np.array(GAIT_AMPLITUDE[label]) * rng.uniform(0.75, 1.25, 3)
            body = amp[:, None] * wave
            gyro = np.array([0.8, 0.5, 0.3])[:, None] * amp[:, None] * np.roll(wave, 6)
            if label in (1, 2):  # stairs: climbing or descending shows as a vertical trend
                body[0] += (0.05 if label == 1 else -0.05) * (t - t.mean())
        else:
            tremor = 0.01 * rng.standard_normal((3, STEPS))
            body, gyro = tremor, 0.5 * tremor
        tilt = np.radians(TILT_DEG[label] + rng.uniform(-15, 15))
        turn = rng.uniform(0, 2 * np.pi)
        gravity = np.array([np.cos(tilt), np.sin(tilt) * np.cos(turn), np.sin(tilt) *
                            np.sin(turn)])
        total = body + gravity[:, None]
        x[i] = np.concatenate([body, gyro, total]) + NOISE * rng.standard_normal((CHANNELS,
                                                                                   STEPS))
    return x.astype(np.float32), y


def write_npz(path: Path, train: int, test: int, seed: int = 0) -> Path:
    """Writes ``x_train``, ``y_train``, ``x_test``, ``y_test`` and ``class_names`` to
    ``path`` (the ``npz:PATH`` dataset format); train and test are drawn independently."""
    x_train, y_train = synthetic_har(train, seed)
    x_test, y_test = synthetic_har(test, seed + 1)
    with open(path, "wb") as f:  # np.savez appends .npz to a bare name; a file object keeps it
        np.savez_compressed(f, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                            class_names=np.array(ACTIVITIES))
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgeslim.data.synthetic_har",
        description="Write synthetic UCI-HAR-shaped sensor windows (9 x 128, 6 activities) "
        "to an .npz file for --dataset npz:PATH.")
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument("--train", type=int, default=2000, help="training windows")
    parser.add_argument("--test", type=int, default=500, help="test windows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 2 * len(ACTIVITIES) or args.test < 0:
        parser.error(f"--train must be >= {2 * len(ACTIVITIES)} and --test >= 0")
    path = write_npz(args.out, args.train, args.test, args.seed)
    print(f"wrote {args.train} training and {args.test} test windows of {CHANNELS} x {STEPS} "
          f"to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
