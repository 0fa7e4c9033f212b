"""Merge the per-host GPU frames of one rack and instant into one rack frame.

An NVL144-class rack is read by 18 host collectors (NVML or dcgm-exporter on each compute
tray), each sending its 4 GPUs under the rack's key with its ``--gpu-offset``: 18 messages
per rack and second where a rack-level collector sends one. Everything downstream of the
decoder (rack state, thermal fits) costs per frame, so a batch's frames of one rack and one
instant are applied as one: the same rows, fewer calls. Frames of other instants stay apart
and in order (the fits take each instant as a step), and so does any frame that would repeat
a GPU already in its group (a resend): merging it would feed that GPU twice in one step.
"""

from __future__ import annotations

import numpy as np

from streams.codec import GpuFrame


def merge_host_frames(frames: list[GpuFrame]) -> list[GpuFrame]:
    """Frames grouped by (rack, first sample instant [ms]), each group merged into one.

    The order of the groups is the order of their first frames. A group whose frames share
    a GPU index is left as separate frames (in arrival order).
    """
    groups: dict[tuple[str, int], list[GpuFrame]] = {}
    for f in frames:
        groups.setdefault((f.rack, int(f.ts_ms[0])), []).append(f)
    if len(groups) == len(frames):
        return frames
    out: list[GpuFrame] = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        gpu = np.concatenate([f.gpu for f in group])
        if np.bincount(gpu).max() > 1:  # a GPU twice: keep them apart
            out.extend(group)
            continue
        first = group[0]
        out.append(
            GpuFrame(
                rack=first.rack,
                ts_ms=np.concatenate([f.ts_ms for f in group]),
                columns={n: np.concatenate([f.columns[n] for f in group]) for n in first.columns},
                batch=first.batch,  # the first host's rows: nothing after the decoder reads it
                raw=None,  # no one message holds these rows
            )
        )
    return out
