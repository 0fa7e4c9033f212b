"""Print what the NVML collector reads from each local GPU, for a handful of samples.

    .venv/bin/python scripts/nvml_check.py [--samples 10] [--interval 1.0] [--rack host]

For a quick check on a machine with NVIDIA GPUs: every sample is also run through the
telemetry.gpu decoder (the worker's validation), so a frame that would be dead-lettered
shows up here. Exits 1 with a one-line reason where there is no GPU or driver.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.codec import decode_gpu_frame, encode_frame
from streams.collect_nvml import NvmlCollector, open_nvml
from twin.errors import NoGpuError, TwinError

COLUMNS = (
    ("gpu", "{:>3}"),
    ("power_w", "{:>8.1f}"),
    ("energy_mj", "{:>14}"),
    ("temp_gpu_c", "{:>6.0f}"),
    ("temp_mem_c", "{:>6.0f}"),
    ("sm_clock_mhz", "{:>6}"),
    ("util_pct", "{:>5.0f}"),
    ("clock_event_reasons", "{:>#8x}"),
    ("xid", "{:>4}"),
    ("power_limit_w", "{:>8.1f}"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--rack", default=socket.gethostname())
    args = parser.parse_args()
    try:
        nvml = open_nvml()
    except NoGpuError as exc:
        print(f"nvml_check: {exc}")
        return 1
    print(f"driver {nvml.driver}; {len(nvml.handles)} GPU(s):")
    for i, name in enumerate(nvml.names):
        print(f"  {i}: {name}")
    widths = [max(len(name), len(fmt.format(0))) for name, fmt in COLUMNS]
    header = " ".join(name.rjust(w) for (name, _), w in zip(COLUMNS, widths, strict=True))
    with NvmlCollector(nvml, rack=args.rack) as collector:
        for n in range(args.samples):
            started = time.monotonic()
            try:
                batch = collector.read()
                decode_gpu_frame(
                    encode_frame(batch), key=args.rack.encode(), now_ms=round(time.time() * 1000)
                )
            except TwinError as exc:
                print(f"sample {n}: {exc}")
            else:
                took_ms = (time.monotonic() - started) * 1000
                print(f"sample {n} at {batch.column('ts')[0]} (read+validate {took_ms:.1f} ms)")
                print(header)
                cols = batch.to_pydict()
                for row in range(batch.num_rows):
                    cells = (fmt.format(cols[name][row]) for name, fmt in COLUMNS)
                    print(" ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
        print(f"memory temp taken from the GPU sensor: {collector.mem_temp_fallback}")
        print(f"energy integrated from power (no counter): {collector.energy_integrated}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
