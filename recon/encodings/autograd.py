"""Backward plumbing shared by the backends (pure-PyTorch, fused CPU, Triton): the only home of
the private torch autograd APIs they rely on, and the autograd nodes of every backend whose
passes are four kernel calls (``GridKernel``: the fused CPU kernel and the Triton kernels).

Each backend has three nodes: an interpolation node (points, table -> features), a grad-x
node (d features / dx, for normals and the eikonal term) and a grad-table node. Their
``ctx`` carries ``backend`` (whatever the backend's passes need: a layout, a kernel) and
``derivatives`` (kept by the interpolation forward for the grad-x passes).

Deferred table gradient: in a training step the table gets two scatters, one from the
features' own gradient (the interpolation node's backward) and one from the eikonal term
(the grad-x node's backward). When the grad-x backward can tell that the interpolation node
runs later in the same backward pass and needs the table gradient too, it leaves its part in
``ctx.deferred`` and both are scattered in one pass, which halves the dominant cost of the
step. Telling that needs ``torch._C._will_engine_execute_node`` and
``torch._C._current_graph_task_id``; without them nothing is deferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch.autograd.function import FunctionCtx, once_differentiable


class Needs(NamedTuple):
    """Which gradients of a grad-x node's inputs (output gradient, points, table) a pass needs."""

    go: bool
    x: bool
    table: bool


GradXCompute = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, Needs], tuple[torch.Tensor | None, ...]]
"""(ctx, ggx, go, x, needs) -> gradients w.r.t. (go, x, table), None where not needed."""


def will_run(ctx: FunctionCtx, index: int) -> bool:
    """Whether the current backward pass needs the gradient of input ``index``."""
    if not ctx.needs_input_grad[index]:  # type: ignore[attr-defined]
        return False
    node = ctx.next_functions[index][0]  # type: ignore[attr-defined]
    return node is not None and _will_execute(node)


def _will_execute(node: object, unknown: bool = True) -> bool:
    """Whether autograd's current pass runs ``node`` (``unknown`` when that cannot be told)."""
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError, TypeError):  # private API absent, or a leaf under autograd.grad
        return unknown


def _current_task() -> int:
    """Id of the backward pass running now (-1 outside one, or when unknown)."""
    try:
        return int(torch._C._current_graph_task_id())
    except AttributeError:
        return -1


def save_interp(ctx: FunctionCtx, x: torch.Tensor, table: torch.Tensor, backend: object, derivatives: list) -> None:
    """Keep what ``interp_backward`` needs on an interpolation node's ``ctx``."""
    ctx.save_for_backward(x, table)
    ctx.backend, ctx.derivatives = backend, derivatives  # type: ignore[attr-defined]
    ctx.deferred, ctx.ran_in_task = [], None  # type: ignore[attr-defined]


def interp_backward(ctx: Any, go: torch.Tensor, grad_x: type, grad_table: type, owner: str) -> tuple[Any, ...]:
    """Backward of an interpolation node (``save_interp``): the points' gradient through
    ``grad_x`` and the table's through ``grad_table``, which also scatters the table
    gradients that this pass's ``grad_x`` backward deferred to it."""
    x, table = ctx.saved_tensors
    task = _current_task()
    ctx.ran_in_task = task
    deferred = [(ggx, go2) for t, ggx, go2 in ctx.deferred if t == task]
    ctx.deferred.clear()
    gx = grad_x.apply(go, x, table, ctx) if will_run(ctx, 0) else None
    gt = None
    if will_run(ctx, 1):
        gt = grad_table.apply(go, x, table, ctx.backend, deferred)
    elif deferred:
        raise RuntimeError(f"{owner}: a deferred table gradient found no table to go to")
    return gx, gt, None, None


def save_grad_x(ctx: FunctionCtx, go: torch.Tensor, x: torch.Tensor, table: torch.Tensor, interp: Any) -> None:
    """Keep what ``grad_x_backward`` needs on a grad-x node's ``ctx`` (``interp``: the
    interpolation node's ``ctx``, which holds the backend and the derivatives)."""
    ctx.save_for_backward(go, x, table)
    ctx.backend, ctx.derivatives, ctx.interp = interp.backend, interp.derivatives, interp  # type: ignore[attr-defined]


def _can_defer(interp: Any) -> bool:
    """Whether the interpolation node's backward (``interp``) runs later in this pass and scatters."""
    task = _current_task()
    return task != -1 and interp.ran_in_task != task and _will_execute(interp, unknown=False) and will_run(interp, 1)


def _defer_table_part(ctx: Any, ggx: torch.Tensor, go: torch.Tensor, need_table: bool, may_defer: bool) -> bool:
    """Hand the table part of a grad-x backward to the interpolation node's own backward when it
    runs later in this pass (one scatter for both); return whether the table part must still run here."""
    if need_table and may_defer and _can_defer(ctx.interp):
        ctx.interp.deferred.append((_current_task(), ggx, go))
        return False
    return need_table


def grad_x_backward(compute: GradXCompute) -> Callable[[Any, torch.Tensor], tuple[Any, ...]]:
    """The backward of a grad-x node (``save_grad_x``; inputs go, x, table, the interpolation ctx).

    It finds which gradients the pass needs, defers the table part when it can, and has
    ``compute`` do the rest. Once differentiable: the eikonal term needs no third order.
    """

    @once_differentiable
    def run(ctx: Any, ggx: torch.Tensor, may_defer: bool) -> tuple[Any, ...]:
        go, x, _ = ctx.saved_tensors
        need_go, need_x, need_table = (will_run(ctx, i) for i in range(3))
        needs = Needs(need_go, need_x, _defer_table_part(ctx, ggx, go, need_table, may_defer))
        return (*compute(ctx, ggx, go, x, needs), None)

    def backward(ctx: Any, ggx: torch.Tensor) -> tuple[Any, ...]:
        return run(ctx, ggx, not torch.is_grad_enabled())  # a deferred part would have no graph

    return backward


# ----------------------------------------------------------------------------------------
# Backends whose passes are kernels: the three autograd nodes, written once.


class GridKernel(Protocol):
    """The four passes of a compiled grid backend, on (N, 3) points and (N, L F) features.

    ``forward`` -> [features] or [features, d/ds (L, N, F, 3), mixed d2/ds2 (L, N, F, 3)];
    ``grad_x`` -> (N, 3) from the output gradient and d/ds; ``grad_x_back`` -> the gradients
    of ``grad_x`` w.r.t. the output gradient and the points (None where not needed);
    ``scatter`` -> the (P,) table gradient of ``go`` (None: none) plus each (ggx, go2)
    eikonal term. ``owner`` names the encoding in error messages.
    """

    owner: str

    def forward(self, x: torch.Tensor, table: torch.Tensor, want_derivatives: bool) -> list[torch.Tensor]: ...

    def grad_x(self, go: torch.Tensor, x: torch.Tensor, dgrad: torch.Tensor) -> torch.Tensor: ...

    def grad_x_back(
        self, ggx: torch.Tensor, go: torch.Tensor, x: torch.Tensor, derivatives: list[torch.Tensor],
        need_go: bool, need_x: bool,
    ) -> list[torch.Tensor | None]: ...

    def scatter(
        self, x: torch.Tensor, go: torch.Tensor | None, directional: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor: ...


def kernel_encode(points: torch.Tensor, table: torch.Tensor, kernel: GridKernel) -> torch.Tensor:
    """(N, 3) contiguous points, the flat table -> (N, L F) features through ``kernel``'s passes.

    The forward keeps d/ds and the mixed second derivatives only when the points need a gradient.
    """
    want_derivatives = torch.is_grad_enabled() and points.requires_grad
    return _KernelInterp.apply(points, table, kernel, want_derivatives)


class _KernelInterp(torch.autograd.Function):
    """(N, 3) points, (P,) table -> (N, L F) features (see ``torch_backend._GridInterp``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, table: torch.Tensor, kernel: GridKernel, want_derivatives: bool) -> torch.Tensor:
        out, *derivatives = kernel.forward(x, table, want_derivatives)
        save_interp(ctx, x, table, kernel, derivatives)
        return out

    @staticmethod
    def backward(ctx, go: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return interp_backward(ctx, go.contiguous(), _KernelGradX, _KernelGradTable, ctx.backend.owner)


def _kernel_grad_x_back(ctx, ggx: torch.Tensor, go: torch.Tensor, x: torch.Tensor, needs: Needs) -> tuple:
    """Gradients of ``_KernelGradX`` w.r.t. (go, x, table) given ``ggx`` (N, 3)."""
    ggx = ggx.contiguous()
    g_go = g_x = g_table = None
    if needs.go or needs.x:
        g_go, g_x = ctx.backend.grad_x_back(ggx, go, x, ctx.derivatives, needs.go, needs.x)
    if needs.table:
        g_table = ctx.backend.scatter(x, None, [(ggx, go)])
    return g_go, g_x, g_table


class _KernelGradX(torch.autograd.Function):
    """(N, L F) output gradient -> (N, 3) gradient w.r.t. the points; twice differentiable."""

    @staticmethod
    def forward(ctx, go: torch.Tensor, x: torch.Tensor, table: torch.Tensor, interp) -> torch.Tensor:
        save_grad_x(ctx, go, x, table, interp)
        return interp.backend.grad_x(go, x, interp.derivatives[0])

    backward = staticmethod(grad_x_backward(_kernel_grad_x_back))


class _KernelGradTable(torch.autograd.Function):
    """(N, L F) output gradient -> (P,) table gradient (plus deferred eikonal terms)."""

    @staticmethod
    def forward(ctx, go, x, table, kernel: GridKernel, deferred: list[tuple[torch.Tensor, torch.Tensor]]):
        ctx.save_for_backward(go, x)
        ctx.kernel = kernel
        return kernel.scatter(x, go, deferred)

    @staticmethod
    @once_differentiable
    def backward(ctx, gg_table: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        go, x = ctx.saved_tensors
        need_go, need_x = will_run(ctx, 0), will_run(ctx, 1)
        if not (need_go or need_x):
            return None, None, None, None, None
        out, *derivatives = ctx.kernel.forward(x, gg_table.contiguous(), need_x)
        g_x = ctx.kernel.grad_x(go, x, derivatives[0]) if need_x else None
        return (out if need_go else None), g_x, None, None, None
