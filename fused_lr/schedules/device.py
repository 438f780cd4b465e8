"""``DeviceSchedule``: one optimizer's schedule on its device (rows, table, int64 step counter),
the host's CPU mirror of it, and the update protocol of the Triton path."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import _device
from .lambdas import eval_lambda_on_device
from .lr_at import lr_at, lr_table
from .rows import DESC_WIDTH, EDIT_COLS, Col, Kind, col

__all__ = ["DeviceSchedule", "HOST_BLOCK"]

# Steps the host evaluates at once from the CPU mirror (DeviceSchedule._host_values).
HOST_BLOCK = 256
_INT64_MAX = 2**63 - 1


def _copy_to_device(dst: Tensor, src: Tensor) -> None:
    """``dst.copy_(src)`` from host memory without blocking the host on an accelerator: the values
    go through a pinned staging tensor (the caching host allocator keeps it alive until the copy
    has run), so the host never waits for the device's queue. Not inside a CUDA-graph capture."""
    if _device.capturing(dst.device):
        raise RuntimeError(
            "fused_lr: a schedule was edited (an assigned LR, a composed scheduler moved, a cooldown started) "
            "while a CUDA graph is being captured; its rows are uploaded from the host, which a capture cannot "
            "hold. Edit the schedule outside the captured region."
        )
    _device.copy_into(dst, src)


class DeviceSchedule:
    """Description rows, multiplier table and int64 step counter of one optimizer, on its device.

    ``desc``/``table``/``counter`` live on the device and are what ``lr_at`` (torch ops) and the
    Triton kernel read. ``desc_host``/``table_host`` are CPU mirrors, so the host can answer
    ``get_last_lr()`` from its own step count without reading the device.

    ``direct_fns`` maps a group index to a LambdaLR callable evaluated on the device counter
    (``Kind.DIRECT`` rows): ``write_lr`` stores ``base_lr * fn(t)`` in the row's ``lr`` column.

    The update protocol (the Triton path): a scheduler step advances the counter at once on the
    device (``defer_advance``: one tiny launch, capturable, so a launch captured in a CUDA graph
    reads the counter at replay time whether the scheduler steps inside or outside the graph) and
    leaves the LR buffer for the next update kernel to write back (``pending`` counts those steps).
    The optimizer brackets each update with ``begin_update()`` (returns ``pending``: whether the
    kernel is to write the LRs back) and ``end_update(applied, lr_buf)`` (whether it did; if not,
    torch ops write them).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.counter = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.desc_host = torch.zeros(0, DESC_WIDTH, dtype=torch.float64)
        self.n_groups = 0
        self.desc = self.desc_host.to(self.device)
        self.table_host = torch.zeros(1, dtype=torch.float64)
        self.table = self.table_host.to(self.device)
        self.kinds: frozenset[Kind] = frozenset()
        self.direct_fns: dict[int, Callable] = {}
        self.momentum_rows: dict[int, int] = {}
        self.edited = False  # some group row has a non-empty edit (see set_edit)
        self.dirty = False  # desc_host changed since desc was last copied (see set_starts_host)
        # Scheduler steps taken since the LR buffer was last written: on the Triton path the next
        # update kernel writes it back (the counter itself is already advanced).
        self.pending = 0
        # The counter's value as the host knows it (kept beside every change the host makes): a
        # CPU device answers its LRs without reading the counter.
        self.host_step = 0
        # CPU mirror values for a block of steps (start, [block, rows] tensor, the same as lists):
        # the host answers get_last_lr(), momenta and (on a CPU device) the LR itself from it.
        self._block: tuple[int, Tensor, list, list] | None = None

    def set_rows(
        self,
        rows: Sequence[Sequence[float]],
        table: Sequence[float] | None = None,
        direct_fns: dict[int, Callable] | None = None,
        n_groups: int | None = None,
        momentum_rows: dict[int, int] | None = None,
    ) -> None:
        """Replace the description (a host-to-device copy: done at construction, load and table growth).

        ``rows`` holds one row per group, then any piece rows (``n_groups`` says how many are groups),
        then any momentum rows (``momentum_rows`` maps a group to its momentum row)."""
        desc_host = torch.tensor([list(r) for r in rows], dtype=torch.float64).reshape(-1, DESC_WIDTH)
        table_host = torch.tensor(list(table) if table else [1.0], dtype=torch.float64)
        self.desc_host = desc_host
        self.table_host = table_host
        self.desc = desc_host.to(self.device)
        self.table = table_host.to(self.device)
        self.kinds = frozenset(Kind(int(k)) for k in desc_host[:, Col.KIND].tolist())
        self.direct_fns = dict(direct_fns or {})
        self.n_groups = desc_host.shape[0] if n_groups is None else n_groups
        self._block = None
        self.momentum_rows = dict(momentum_rows or {})
        for g, r in self.momentum_rows.items():
            if not (0 <= g < self.n_groups and self.n_groups <= r < desc_host.shape[0]):
                raise AssertionError(f"momentum row {r} of group {g} outside the description")
        self._note_edits()

    def invalidate(self) -> None:
        """Forget host values computed ahead: call after editing ``desc`` in place."""
        self._block = None

    def set_edit(self, group: int, start: float, stop: float, a: float, b: float) -> None:
        """Group ``group``'s LR is ``a + b * (lr - a)`` (``a`` when ``b == 0``) for steps in
        ``[start, stop)`` (the edit columns; see the module docstring). One small host-to-device
        copy, asynchronous on an accelerator; nothing is read back."""
        row = self.desc_host[group]
        row[EDIT_COLS] = torch.tensor([float(start), float(stop), float(a), float(b)], dtype=torch.float64)
        _copy_to_device(self.desc[group, EDIT_COLS], row[EDIT_COLS])
        self._block = None
        self._note_edits()

    def set_edits(self, edits: dict[int, tuple[float, float, float, float]]) -> None:
        """Several groups' edits (``{group: (from, to, a, b)}``) in one host-to-device copy."""
        if not edits:
            return
        for g, values in edits.items():
            self.desc_host[g, EDIT_COLS] = torch.tensor([float(v) for v in values], dtype=torch.float64)
        n = self.n_groups
        _copy_to_device(self.desc[:n, EDIT_COLS], self.desc_host[:n, EDIT_COLS])
        self._block = None
        self._note_edits()

    def _note_edits(self) -> None:
        n = self.n_groups
        self.edited = bool((self.desc_host[:n, Col.EDIT_TO] > self.desc_host[:n, Col.EDIT_FROM]).any())

    def set_starts_host(self, rows: Sequence[int], starts: Sequence[float]) -> None:
        """Move pieces' ``start`` on the CPU mirror only (the host's values follow at once);
        ``sync()`` copies the description to the device before the device next reads it."""
        for r, v in zip(rows, starts):
            self.desc_host[r, Col.START] = float(v)
        self._block = None
        self.dirty = True

    def sync(self) -> None:
        """Copy the CPU mirror's description to the device if it changed there (one copy)."""
        if self.dirty:
            _copy_to_device(self.desc, self.desc_host)
            self.dirty = False

    def edits(self) -> dict[int, tuple[float, float, float, float]]:
        """The groups' non-empty edits: ``{group: (from, to, a, b)}`` (to carry them into a rebuilt
        description)."""
        out = {}
        for g in range(self.n_groups):
            frm, to, a, b = self.desc_host[g, EDIT_COLS].tolist()
            if to > frm:
                out[g] = (frm, to, a, b)
        return out

    def raw_host_lrs(self, step: int) -> list[float]:
        """The schedule's own LRs at ``step`` (CPU mirror), ignoring the edit columns."""
        desc = self.desc_host
        if self.direct_fns:
            desc = desc.clone()
            self._direct_values(desc, step)
        return lr_at(torch.tensor([step], dtype=torch.int64), desc, self.table_host, self.kinds, self.n_groups,
                     edits=False).tolist()

    def _direct_values(self, desc: Tensor, step: Tensor | int) -> None:
        """Device-mode lambdas' rows of ``desc`` at ``step``: ``lr = base_lr * fn(step)`` (torch ops
        on the device counter, or host floats at a host step)."""
        lr, base = col(Kind.DIRECT, "lr"), Col.BASE
        for g, fn in self.direct_fns.items():
            if isinstance(step, Tensor):
                desc[g, lr].copy_(desc[g, base] * eval_lambda_on_device(fn, step))
            else:
                desc[g, lr] = desc[g, base] * float(fn(step))

    def _host_values(self, step: int) -> tuple[tuple[int, Tensor, list], int]:
        """Every row's value at ``step`` from the CPU mirror, computed ``HOST_BLOCK`` steps at a
        time with ``lr_table`` (one evaluation answers the next steps too)."""
        blk = self._block
        if blk is None or not blk[0] <= step < blk[0] + len(blk[2]):  # (no tensor op on a hit)
            count = max(1, min(HOST_BLOCK, _INT64_MAX - step))
            vals = lr_table(torch.arange(step, step + count, dtype=torch.int64), self.desc_host, self.table_host,
                            self.kinds, edits=self.edited)
            blk = self._block = (step, vals, vals.tolist(), [None])
        return blk, step - blk[0]

    def _host_answers(self) -> bool:
        """Whether the LR is taken from the host's block of values (computed ahead from the CPU
        mirror, ``HOST_BLOCK`` steps at a time) instead of ``lr_at``'s ~10-40 tiny ops on the
        device counter: one copy per step (on an accelerator, of the block uploaded once per
        ``HOST_BLOCK`` steps). Not with device-mode lambdas (Kind.DIRECT rows change the
        description every step), inside torch.compile (host step numbers would be guarded on and
        recompile every step), nor while a CUDA graph is being captured (replays must read the
        device counter)."""
        if self.direct_fns or torch.compiler.is_compiling():
            return False
        return self.device.type in ("cpu", "cuda") and not _device.capturing(self.device)

    def set_step(self, step: int) -> None:
        self.counter.fill_(step)
        self.pending = 0
        self.host_step = step

    def advance(self) -> None:
        self.counter.add_(1)
        self.host_step += 1

    def kernel_applied(self) -> None:
        """The update kernel wrote the LRs at the counter back."""
        self.pending = 0

    def defer_advance(self) -> None:
        """A scheduler step on the Triton path: the counter advances on the device now (one tiny
        launch, no host read, capturable); the LRs are left for the next update kernel to write
        (``pending``), and device-mode lambdas (``Kind.DIRECT`` rows) are re-evaluated at the new
        counter (torch ops)."""
        self.counter.add_(1)
        self.host_step += 1
        self.pending += 1
        if self.direct_fns:
            self._direct_values(self.desc, self.counter)

    def begin_update(self) -> int:
        """Before an update kernel reads the schedule: the description is on the device; returns
        the scheduler steps since the LRs were last written (nonzero: the kernel is to write them
        back)."""
        if self.dirty:
            self.sync()
        return self.pending

    def end_update(self, applied: bool, lr_buf: Tensor) -> None:
        """After the update: the kernel wrote the LRs back (``applied``), or no kernel did and
        torch ops write them now."""
        if applied:
            self.kernel_applied()
        else:
            self.apply_pending(lr_buf)

    def apply_pending(self, lr_buf: Tensor) -> None:
        """Write the LRs at the counter with torch ops (when no kernel ran to write them back)."""
        self.pending = 0
        self.write_lr(lr_buf)

    def write_lr(self, lr_buf: Tensor) -> None:
        """``lr_buf[:] = lr_at(counter)`` on the device: no host read, capturable."""
        if self.dirty:
            self.sync()
        if self._host_answers():
            blk, k = self._host_values(self.host_step)
            values = blk[1]
            if self.device.type != "cpu":
                if blk[3][0] is None:  # the block on the device: one asynchronous upload per block
                    blk[3][0] = _device.to_device(values.clone(), self.device)
                values = blk[3][0]
            lr_buf.copy_(values[k, : self.n_groups])
            return
        self._direct_values(self.desc, self.counter)
        lr_buf.copy_(lr_at(self.counter, self.desc, self.table, self.kinds, self.n_groups, self.edited))

    def host_lrs(self, step: int) -> list[float]:
        """The same ``lr_at`` evaluated on the CPU mirror at a host-known step."""
        if not self.direct_fns:
            blk, k = self._host_values(step)
            return blk[2][k][: self.n_groups]
        # Device-mode lambdas: their rows' values at this step, on a copy of the mirror.
        desc = self.desc_host.clone()
        self._direct_values(desc, step)
        return lr_at(torch.tensor([step], dtype=torch.int64), desc, self.table_host, self.kinds, self.n_groups,
                     self.edited).tolist()

    def host_momenta(self, step: int) -> dict[int, float]:
        """Momentum of every group with a momentum schedule at a host-known step (CPU mirror)."""
        if not self.momentum_rows:
            return {}
        blk, k = self._host_values(step)
        return {g: blk[2][k][r] for g, r in self.momentum_rows.items()}
