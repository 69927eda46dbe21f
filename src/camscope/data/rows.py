"""Rows of a prepared dataset taken for a run: in memory when small, into a mapped scratch file
when large.

Training and the analyses index the rows they use (a split, in the run's channels) as one tensor.
For a prepared file larger than RAM that copy cannot live in memory, so above ``IN_MEMORY_BYTES``
it is gathered a block at a time into an unlinked file beside the prepared one and mapped: the
kernel keeps the pages it can and reads the rest back, the process's own memory stays small.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from camscope.data.channels import to_channels
from camscope.errors import CamscopeError

IN_MEMORY_BYTES = 2**30  # a selection larger than this goes to a scratch file when it can
BLOCK_BYTES = 64 * 2**20


def select_rows(
    images: torch.Tensor,
    index: torch.Tensor | list[int],
    channels: int | None = None,
    scratch: str | Path | None = None,
) -> torch.Tensor:
    """``to_channels(images[index], channels)``; above IN_MEMORY_BYTES, and with a ``scratch``
    folder (the prepared file's), the result is memory-mapped from an unlinked file there."""
    index = torch.as_tensor(index, dtype=torch.long)
    c = images.shape[1] if channels is None else channels
    row = c * images.shape[2] * images.shape[3]
    if scratch is None or len(index) * row <= IN_MEMORY_BYTES:
        return to_channels(images[index], channels)
    shape = (len(index), c, *images.shape[2:])
    # removed from the folder at once: the mapping keeps it alive, the process's end frees it
    with _scratch_file(Path(scratch), len(index) * row) as f:
        out = np.memmap(f, dtype=np.uint8, mode="w+", shape=shape)
    step = max(1, BLOCK_BYTES // row)
    for i in range(0, len(index), step):
        out[i : i + step] = to_channels(images[index[i : i + step]], channels).numpy()
    return torch.from_numpy(out)


def _scratch_file(folder: Path, nbytes: int):
    """An unlinked file in ``folder`` (the prepared file's), else in the system's temporary folder
    (a read-only dataset folder); an error says where room is needed."""
    for where in (folder, None):
        try:
            return tempfile.TemporaryFile(dir=where, prefix=".camscope-rows-")
        except OSError:
            continue
    raise CamscopeError(
        f"no folder to write {nbytes / 2**30:.1f} GB of selected rows to ({folder} and the "
        "temporary folder are not writable)",
        "make room in the prepared file's folder, or set TMPDIR to a writable folder with room",
    )
