"""One-sided communication between the processes of one node: shared-memory "symmetric buffers".

Every member of a node-local group owns a receive segment in POSIX shared memory, mapped by all
members. An all-to-all is a round of *puts*: member i writes its rows for member j straight into
j's segment, in slot i, then raises its flag there (``ready[i] = epoch``); j waits until every
flag shows the epoch, copies its rows out and acknowledges (``consumed[i] = epoch``) so that i may
reuse the slot. No matched send/receive, no copy through a socket. Each flag word has one writer.

Part of the comm layer (``comm.exchange`` uses it for groups built with ``transport="one_sided"``;
groups that span nodes keep the collective transport, and TAPA's intra-node phase uses this one).
The GPU counterpart (CUDA symmetric memory) is not written yet: there is no GPU to test it on.
"""

from __future__ import annotations

import atexit
import itertools
import math
import mmap
import os
import time

import numpy as np
import torch
import torch.distributed as dist

HEADER_WORDS = 2  # per sender: ready epoch, consumed epoch
SPIN_BEFORE_SLEEP = 200


SHM_DIR = "/dev/shm"
_segment_ids = itertools.count()


class _Segment:
    """A file in /dev/shm mapped into memory: created (and later unlinked) by its owner, mapped
    by its peers. Plain files rather than multiprocessing.shared_memory, whose resource tracker
    (shared by spawned processes) would unlink or double-count segments a peer only maps."""

    def __init__(self, name: str, size: int | None = None) -> None:
        self.name, self.path = name, os.path.join(SHM_DIR, name)
        self.owner = size is not None
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if self.owner else 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            if self.owner:
                os.ftruncate(fd, size)
            self.buf = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def unlink(self) -> None:
        if self.owner and os.path.exists(self.path):
            os.unlink(self.path)

    def close(self) -> None:
        try:
            self.buf.close()
        except BufferError:  # a tensor view still exists; the mapping goes with the process
            pass
        self.unlink()


class SharedMemoryTransport:
    def __init__(self, ranks: tuple[int, ...], index: int, process_group, timeout_s: float) -> None:
        self.ranks, self.index, self.size = ranks, index, len(ranks)
        self.process_group = process_group
        self.timeout_s = timeout_s
        self.epoch = 0
        self.slot_bytes = 0
        self.own: _Segment | None = None
        self.peers: list[_Segment] = []
        atexit.register(self.close)

    # -- set-up (collective over the group) -------------------------------------------------
    def _ensure_capacity(self, slot_bytes: int) -> None:
        """Every member calls this with the same number (derived from the shared split matrix)."""
        if slot_bytes <= self.slot_bytes:
            return
        slot_bytes = max(slot_bytes, 2 * self.slot_bytes, 1 << 16)
        dist.barrier(group=self.process_group)  # nobody still reads or writes the old segments
        self.close()
        name = f"swiftfusion-{os.getpid()}-{next(_segment_ids)}"
        self.own = _Segment(name, self._segment_bytes(slot_bytes))
        np.ndarray((self.size, HEADER_WORDS), np.int64, self.own.buf)[:] = 0
        names: list[str | None] = [None] * self.size
        dist.all_gather_object(names, name, group=self.process_group)
        self.peers = [self.own if i == self.index else _Segment(n) for i, n in enumerate(names)]
        self.slot_bytes = slot_bytes
        self.epoch = 0
        dist.barrier(group=self.process_group)
        self.own.unlink()  # every peer has it mapped: the name is no longer needed, and a crash leaves nothing

    def _segment_bytes(self, slot_bytes: int) -> int:
        return self.size * HEADER_WORDS * 8 + self.size * slot_bytes

    def _header(self, segment: _Segment) -> np.ndarray:
        return np.ndarray((self.size, HEADER_WORDS), np.int64, segment.buf)

    def _slot(self, segment: _Segment, sender: int, nbytes: int) -> torch.Tensor:
        offset = self.size * HEADER_WORDS * 8 + sender * self.slot_bytes
        return torch.frombuffer(segment.buf, dtype=torch.uint8, count=nbytes, offset=offset) if nbytes else \
            torch.empty(0, dtype=torch.uint8)

    # -- the all-to-all -------------------------------------------------------------------------
    def all_to_all(self, x: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
        """Rows ``rows[i][j]`` of dim 0 go from member i to member j (the same matrix on all)."""
        return self.start(x, rows)()

    def start(self, x: torch.Tensor, rows: list[list[int]]):
        """Puts this member's rows into every peer's segment now; returns the function that waits
        for the rows addressed to this member and returns them (in member order)."""
        x = x.contiguous()
        row_bytes = math.prod(x.shape[1:]) * x.element_size()
        self._ensure_capacity(max(max(r) for r in rows) * row_bytes)
        self.epoch += 1
        me, epoch = self.index, self.epoch
        flat = x.view(-1).view(torch.uint8) if x.numel() else torch.empty(0, dtype=torch.uint8)
        offset = 0
        for j in range(self.size):  # put my rows into j's segment, slot me
            nbytes = rows[me][j] * row_bytes
            if not nbytes:
                continue  # nothing for j: no flag either, so members without traffic stay uncoupled
            header = self._header(self.peers[j])
            self._wait(lambda header=header: header[me, 1] >= epoch - 1, f"member {j} to free slot {me}")
            self._slot(self.peers[j], me, nbytes).copy_(flat[offset : offset + nbytes])
            header[me, 0] = epoch  # the flag: written after the data (x86 stores are ordered)
            offset += nbytes
        senders = [i for i in range(self.size) if rows[i][me] * row_bytes]
        shape, dtype = x.shape[1:], x.dtype

        def finish() -> torch.Tensor:
            own = self._header(self.own)
            self._wait(lambda: bool((own[senders, 0] >= epoch).all()), "every member's data")
            chunks = [self._slot(self.own, i, rows[i][me] * row_bytes).clone() for i in range(self.size)]
            own[:, 1] = epoch  # acknowledge: senders may reuse their slots
            received = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
            return received.view(dtype).view(sum(rows[i][me] for i in range(self.size)), *shape)

        return finish

    def _wait(self, done, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        spins = 0
        while not done():
            spins += 1
            if spins > SPIN_BEFORE_SLEEP:
                time.sleep(20e-6)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"one-sided transport: rank {self.ranks[self.index]} waited "
                                       f"{self.timeout_s} s for {what}")

    def close(self) -> None:
        for segment in self.peers:
            if segment is not self.own:
                segment.close()
        self.peers = []
        if self.own is not None:
            self.own.close()
            self.own = None
        self.slot_bytes = 0
