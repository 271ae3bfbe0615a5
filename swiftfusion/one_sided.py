"""One-sided communication between the processes of one node: shared-memory "symmetric buffers".

Every member of a node-local group owns a receive segment in shared memory, mapped by all members.
An all-to-all is a round of *puts*: member i writes its rows for member j straight into j's
segment (slot i), then raises its flag there (``ready = epoch``); j waits until the flags of the
members that send it anything show the epoch, copies its rows out and acknowledges
(``consumed = epoch``) so that i may reuse the slot. No matched send/receive, no socket. Each
flag word has exactly one writer; on x86 a store is never seen before an earlier one, so a
raised flag means the data before it is there.

Each sender has ``BUFFERS`` slots per receiver, used in turn by successive exchanges, so some can
stay in flight while the next start (V-First keeps V's in flight while Q/K's runs). Growing the
buffers is collective and deterministic: every member derives the size from the split matrix
that all of them know; an exchange keeps the segments it started on until it finishes.

Part of the comm layer: ``comm.exchange`` and ``comm.ring_shift`` use it for groups inside one
node when the config asks for ``transport="one_sided"``; traffic between nodes stays collective.
``transport_for`` picks the kind: these shared-memory segments for CPU tensors, or
``CudaSymmetricMemoryTransport`` on GPUs (the same puts into symmetric buffers allocated with
``torch.distributed._symmetric_memory``). The CUDA one has NOT run yet: no GPU was available to
any session so far; CI exercises only the CPU one.
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

SHM_DIR = "/dev/shm"
BUFFERS = 4  # exchanges in flight at once on one transport: V-First keeps V's TAPA pieces (2) out
#             while Q/K's start
READY, CONSUMED = 0, BUFFERS  # header columns: ready[b] then consumed[b], per sender
SPIN_BEFORE_SLEEP = 200
_segment_ids = itertools.count()


class _Segment:
    """A file in /dev/shm mapped into memory: created by its owner, mapped by its peers, unlinked
    as soon as all have mapped it. Plain files rather than multiprocessing.shared_memory, whose
    resource tracker (shared by spawned processes) would unlink segments a peer only maps."""

    def __init__(self, name: str, size: int | None = None) -> None:
        self.path = os.path.join(SHM_DIR, name)
        self.owner = size is not None
        fd = os.open(self.path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if self.owner else 0), 0o600)
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
        except BufferError:  # a tensor still views it; the mapping goes with the process
            pass
        self.unlink()


class _Generation:
    """One set of segments (this member's and its peers'), all with the same slot size."""

    def __init__(self, size: int, index: int, slot_bytes: int, process_group) -> None:
        self.size, self.slot_bytes = size, slot_bytes
        self.header_bytes = size * 2 * BUFFERS * 8
        own = _Segment(f"swiftfusion-{os.getpid()}-{next(_segment_ids)}",
                       self.header_bytes + BUFFERS * size * slot_bytes)
        self.header(own)[:] = 0
        names: list[str | None] = [None] * size
        dist.all_gather_object(names, os.path.basename(own.path), group=process_group)
        self.segments = [own if i == index else _Segment(n) for i, n in enumerate(names)]
        self.own = own
        dist.barrier(group=process_group)
        own.unlink()  # every member has it mapped: a crash now leaves nothing behind
        self.epoch = 0
        self.in_flight = 0
        self.retired = False

    def header(self, segment: _Segment) -> np.ndarray:
        return np.ndarray((self.size, 2 * BUFFERS), np.int64, segment.buf)

    def slot(self, segment: _Segment, buffer: int, sender: int, nbytes: int) -> torch.Tensor:
        if not nbytes:
            return torch.empty(0, dtype=torch.uint8)
        offset = self.header_bytes + (buffer * self.size + sender) * self.slot_bytes
        return torch.frombuffer(segment.buf, dtype=torch.uint8, count=nbytes, offset=offset)

    def close(self) -> None:
        for segment in self.segments:
            segment.close()
        self.segments = []


class SharedMemoryTransport:
    def __init__(self, ranks: tuple[int, ...], index: int, process_group, timeout_s: float) -> None:
        self.ranks, self.index, self.size = ranks, index, len(ranks)
        self.process_group = process_group
        self.timeout_s = timeout_s
        self.current: _Generation | None = None
        atexit.register(self.close)

    @property
    def own_path(self) -> str | None:
        return self.current.own.path if self.current else None

    def all_to_all(self, x: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
        """Rows ``rows[i][j]`` of dim 0 go from member i to member j (the same matrix on all)."""
        return self.start(x, rows)()

    def start(self, x: torch.Tensor, rows: list[list[int]]):
        """Puts this member's rows into every receiver's segment now; returns the function that
        waits for the rows addressed to this member and returns them in member order."""
        x = x.contiguous()
        row_bytes = math.prod(x.shape[1:]) * x.element_size()
        self._ensure_capacity(max(max(r) for r in rows) * row_bytes)
        gen = self.current
        if gen.in_flight >= BUFFERS:
            raise RuntimeError(f"more than {BUFFERS} one-sided exchanges in flight on one group")
        gen.epoch += 1
        gen.in_flight += 1
        me, epoch, buffer = self.index, gen.epoch, gen.epoch % BUFFERS
        flat = x.view(-1).view(torch.uint8) if x.numel() else torch.empty(0, dtype=torch.uint8)
        offset = 0
        for j in range(self.size):
            nbytes = rows[me][j] * row_bytes
            if not nbytes:
                continue  # no data, no flag: members without traffic stay uncoupled
            header = gen.header(gen.segments[j])
            self._wait(lambda h=header: h[me, CONSUMED + buffer] >= epoch - BUFFERS, f"member {j} to free a slot")
            gen.slot(gen.segments[j], buffer, me, nbytes).copy_(flat[offset : offset + nbytes])
            header[me, READY + buffer] = epoch  # the flag, after the data
            offset += nbytes
        senders = [i for i in range(self.size) if rows[i][me] * row_bytes]
        shape, dtype, total = x.shape[1:], x.dtype, sum(rows[i][me] for i in range(self.size))

        def finish() -> torch.Tensor:
            own = gen.header(gen.own)
            self._wait(lambda: bool((own[senders, READY + buffer] >= epoch).all()), "the members' data")
            chunks = [gen.slot(gen.own, buffer, i, rows[i][me] * row_bytes).clone() for i in range(self.size)]
            own[:, CONSUMED + buffer] = epoch  # senders may reuse this buffer
            gen.in_flight -= 1
            if gen.retired and gen.in_flight == 0:
                gen.close()
            received = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
            return received.view(dtype).view(total, *shape)

        return finish

    def _ensure_capacity(self, slot_bytes: int) -> None:
        """Collective: every member calls it with the same number, at the same exchange."""
        if self.current is not None and slot_bytes <= self.current.slot_bytes:
            return
        old = self.current
        slot_bytes = max(slot_bytes, 2 * (old.slot_bytes if old else 0), 1 << 16)
        self.current = _Generation(self.size, self.index, slot_bytes, self.process_group)
        if old is not None:  # exchanges in flight keep the old segments until they finish
            old.retired = True
            if old.in_flight == 0:
                old.close()

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
        if self.current is not None:
            self.current.close()
            self.current = None


class CudaSymmetricMemoryTransport:
    """The same one-sided all-to-all on GPUs of one node (UNTESTED: no GPU has been available).

    Every member's receive buffer is allocated with ``torch.distributed._symmetric_memory`` and
    mapped by its peers (NVLink P2P); a put is a device copy straight into the receiver's slot.
    GPU work is ordered per stream, so the flags of the CPU transport become two device-side
    barriers on a side stream: one before the puts (every member is past its reads of the slots
    about to be reused: all members issue exchanges in the same order) and one after them (every
    put has landed). ``finish`` makes the caller's stream wait for the side stream and copies the
    rows out, so compute issued between ``start`` and ``finish`` overlaps the transfer.
    """

    def __init__(self, ranks: tuple[int, ...], index: int, process_group, timeout_s: float) -> None:
        self.ranks, self.index, self.size = ranks, index, len(ranks)
        self.process_group = process_group
        self.timeout_ms = int(timeout_s * 1000)
        self.buffer: torch.Tensor | None = None
        self.handle = None
        self.slot_bytes = 0
        self.epoch = 0
        self.stream = None
        self.backend_rank = [sorted(ranks).index(r) for r in ranks]  # torch's groups sort their ranks

    def start(self, x: torch.Tensor, rows: list[list[int]]):
        import torch.distributed._symmetric_memory as symm_mem

        x = x.contiguous()
        row_bytes = math.prod(x.shape[1:]) * x.element_size()
        needed = max(max(r) for r in rows) * row_bytes
        if needed > self.slot_bytes:  # collective and deterministic, as in the CPU transport
            torch.cuda.current_stream().synchronize()  # exchanges in flight finish on the old buffer
            self.slot_bytes = max(needed, 2 * self.slot_bytes, 1 << 20)
            self.buffer = symm_mem.empty(BUFFERS * self.size * self.slot_bytes, dtype=torch.uint8, device=x.device)
            self.handle = symm_mem.rendezvous(self.buffer, self.process_group)
            self.stream = self.stream or torch.cuda.Stream(device=x.device)
        self.epoch += 1
        me, buffer, handle = self.index, self.epoch % BUFFERS, self.handle
        flat = x.view(-1).view(torch.uint8) if x.numel() else torch.empty(0, dtype=torch.uint8, device=x.device)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            handle.barrier(channel=0, timeout_ms=self.timeout_ms)
            offset = 0
            for j in range(self.size):
                nbytes = rows[me][j] * row_bytes
                if nbytes:
                    slot = (buffer * self.size + me) * self.slot_bytes
                    peer = self.backend_rank[j]
                    handle.get_buffer(peer, (nbytes,), torch.uint8, slot).copy_(flat[offset : offset + nbytes])
                    offset += nbytes
            handle.barrier(channel=0, timeout_ms=self.timeout_ms)
        x.record_stream(self.stream)
        shape, dtype = x.shape[1:], x.dtype
        total = sum(rows[i][me] for i in range(self.size))
        own = self.buffer

        def finish() -> torch.Tensor:
            torch.cuda.current_stream().wait_stream(self.stream)
            chunks = [own[(buffer * self.size + i) * self.slot_bytes:][: rows[i][me] * row_bytes]
                      for i in range(self.size)]
            return torch.cat(chunks).view(dtype).view(total, *shape)

        return finish

    def close(self) -> None:
        self.buffer = self.handle = None


def transport_for(device: torch.device, ranks: tuple[int, ...], index: int, process_group, timeout_s: float):
    """The one-sided transport for tensors on ``device``: shared memory (CPU) or CUDA symmetric memory."""
    kind = CudaSymmetricMemoryTransport if device.type == "cuda" else SharedMemoryTransport
    return kind(ranks, index, process_group, timeout_s)
