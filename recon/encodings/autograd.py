"""Backward plumbing shared by the CPU backends (pure-PyTorch and fused): the only home of
the private torch autograd APIs they rely on.

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
from typing import Any, NamedTuple

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
