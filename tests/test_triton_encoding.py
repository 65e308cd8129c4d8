"""The Triton grid kernels against the pure-PyTorch reference: every pass, both grid kinds.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``conftest.py`` sets
``TRITON_INTERPRET=1`` before anything imports them), on small grids and a few hundred points:
the interpreter's cost is per operation and program. With a GPU the same tests run the compiled
kernels on CUDA; ``tests/test_cuda.py`` adds realistic sizes there.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from encoding_checks import assert_float32_close, run_pass, training_step_grads
from recon.config import EncodingConfig
from recon.encodings import (
    AUTO,
    TorchGridEncoding,
    TritonGridEncoding,
    backend_class,
    make_encoding,
    triton_backend,
)
from recon.encodings.tcnn_backend import TcnnGridEncoding
from recon.errors import InputError

pytest.importorskip("triton", reason="the Triton backend needs the triton package (pip install triton)")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# 3 levels (resolutions 3, 6, 12), 2^6 rows: level 0 dense, levels 1-2 hashed.
HASH = EncodingConfig(n_levels=3, base_resolution=3, finest_resolution=12, log2_hashmap_size=6, init_scale=1.0)


def variant(base: EncodingConfig, **changes: object) -> EncodingConfig:
    return EncodingConfig(**{**base.__dict__, **changes})


CONFIGS = {  # name: (config, grid kind)
    "hashgrid": (HASH, "hashgrid"),
    "hashgrid-smoothstep": (variant(HASH, interpolation="smoothstep"), "hashgrid"),
    "densegrid": (EncodingConfig(dense_resolution=7, dense_features=8, init_scale=1.0), "densegrid"),
}
WIDTHS = {  # feature widths, padded in the kernels to a power of two
    "hashgrid-F1": (variant(HASH, n_features_per_level=1), "hashgrid"),
    "hashgrid-F4": (variant(HASH, n_features_per_level=4), "hashgrid"),
    "hashgrid-F8-smoothstep": (variant(HASH, n_features_per_level=8, interpolation="smoothstep"), "hashgrid"),
    "densegrid-F3": (EncodingConfig(dense_resolution=5, dense_features=3, init_scale=1.0), "densegrid"),
    "densegrid-F16": (EncodingConfig(dense_resolution=4, dense_features=16, init_scale=1.0), "densegrid"),
}
N_POINTS = 300


def twins(cfg: EncodingConfig, kind: str, seed: int) -> tuple[TorchGridEncoding, TritonGridEncoding]:
    """Reference and Triton encodings sharing one random table."""
    torch.manual_seed(seed)
    ref = TorchGridEncoding(cfg, kind).to(DEVICE)
    fast = TritonGridEncoding(cfg, kind, DEVICE)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def random_points(seed: int, n: int = N_POINTS) -> torch.Tensor:
    """Points in [-0.05, 1.05]^3: a few outside the cube, clamped by both."""
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 1.1 - 0.05).to(DEVICE)


def compare_passes(name: str, cfg: EncodingConfig, kind: str, second_order: bool) -> None:
    ref, fast = twins(cfg, kind, seed=len(name))
    x = random_points(seed=7)
    head = torch.randn(ref.out_dim, device=DEVICE)
    for got, want in zip(run_pass(fast, x, head, second_order), run_pass(ref, x, head, second_order)):
        assert_float32_close(got, want)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "eikonal"])
def test_matches_reference(name: str, second_order: bool) -> None:
    """Forward, both gradients (first order), and the eikonal double backward to table and points."""
    compare_passes(name, *CONFIGS[name], second_order)


@pytest.mark.parametrize("name", list(WIDTHS))
def test_feature_widths_match_reference(name: str) -> None:
    """1, 3, 4, 8 and 16 features per vertex: every pass (the eikonal one runs them all)."""
    compare_passes(name, *WIDTHS[name], second_order=True)


def test_levels_are_dense_then_hashed() -> None:
    ref, _ = twins(*CONFIGS["hashgrid"], seed=0)
    assert [lv.hashed for lv in ref.layout()] == [False, True, True]


@pytest.mark.parametrize("name", ["hashgrid", "densegrid"])
def test_training_step_merged_scatter_matches_reference(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Features loss + eikonal loss in one backward: both table gradients in one scatter launch."""
    ref, fast = twins(*CONFIGS[name], seed=3)
    x = random_points(seed=11)
    head = torch.randn(ref.out_dim, device=DEVICE)
    launches: list[int] = []
    scatter = triton_backend._TritonKernel.scatter

    def spy(self, x, go, directional):
        launches.append(len(directional) + (go is not None))
        return scatter(self, x, go, directional)

    monkeypatch.setattr(triton_backend._TritonKernel, "scatter", spy)
    grads = [training_step_grads(enc, x, head) for enc in (ref, fast)]
    assert launches == [2]  # one scatter, of the features' term and the deferred eikonal term
    for got, want in zip(grads[1], grads[0]):
        assert_float32_close(got, want)


def test_eikonal_table_gradient_matches_finite_differences() -> None:
    """The eikonal loss's table gradient (the second-order scatter) against central differences
    of the loss computed by the kernels' forward passes alone, along random table directions."""
    _, fast = twins(variant(HASH, interpolation="smoothstep"), "hashgrid", seed=9)
    x = random_points(seed=5, n=200).clamp(0.02, 0.98)
    head = torch.randn(fast.out_dim, device=DEVICE, dtype=torch.float64)

    def loss(params: torch.Tensor) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        out = torch.func.functional_call(fast, {"params": params}, (xg,))
        (gx,) = torch.autograd.grad(out.double() @ head, xg, torch.ones(len(x), device=DEVICE), create_graph=True)
        return ((gx.double().norm(dim=-1) - 1.0) ** 2).mean()

    params = fast.params.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(params), params)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = torch.randn(params.shape, generator=gen).to(DEVICE)
        step = 1e-2
        with torch.enable_grad():
            numeric = (loss(params.detach() + step * direction) - loss(params.detach() - step * direction)) / (2 * step)
        analytic = (grad.double() * direction.double()).sum()
        torch.testing.assert_close(analytic, numeric.detach(), rtol=2e-3, atol=1e-3 * abs(analytic.item()))


def test_table_gradient_is_differentiable() -> None:
    """A loss on the table gradient (create_graph) back to the output gradient and the points."""
    ref, fast = twins(*CONFIGS["hashgrid"], seed=5)
    x = random_points(seed=13, n=200)
    results = []
    for enc in (ref, fast):
        xg = x.clone().requires_grad_(True)
        go = torch.randn(len(x), enc.out_dim, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        go.requires_grad_(True)
        (gt,) = torch.autograd.grad(enc(xg), enc.params, go, create_graph=True)
        weights = torch.cos(torch.arange(gt.numel(), device=DEVICE) * 0.1)
        results.append(torch.autograd.grad((gt * weights).sum(), [go, xg]))
    for got, want in zip(results[1], results[0]):
        assert_float32_close(got, want)


@pytest.mark.parametrize("name", ["hashgrid", "densegrid"])
def test_points_outside_the_cube_and_nan_are_clamped(name: str) -> None:
    """Called directly, the kernels read only inside the table, whatever the points (NaN: 0)."""
    _, fast = twins(*CONFIGS[name], seed=4)
    kernel = triton_backend._TritonKernel(fast.grid, DEVICE)
    wild = torch.tensor([[-5.0, 0.5, 7.0], [float("nan"), float("inf"), -float("inf")], [1.0, 1.0, 1.0]] * 20)
    wild = wild.to(DEVICE)
    clamped = torch.nan_to_num(wild, nan=0.0).clamp(0, 1)
    table = fast.params.detach()
    torch.testing.assert_close(kernel.forward(wild, table, False)[0], kernel.forward(clamped, table, False)[0])
    go = torch.ones(len(wild), fast.out_dim, device=DEVICE)
    torch.testing.assert_close(kernel.scatter(wild, go, []), kernel.scatter(clamped, go, []))


def test_no_points_and_no_gradient() -> None:
    ref, fast = twins(*CONFIGS["hashgrid"], seed=6)
    empty = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    assert fast(empty).shape == (0, ref.out_dim)
    with torch.no_grad():
        x = random_points(seed=2, n=50).view(5, 10, 3)
        assert_float32_close(fast(x), ref(x))
        assert fast(x).shape == (5, 10, ref.out_dim)


def test_interface_and_checkpoints_match_every_backend() -> None:
    ref, fast = twins(*CONFIGS["hashgrid"], seed=0)
    assert fast.out_dim == ref.out_dim and fast.n_params() == ref.n_params()
    assert fast.layout() == ref.layout() and fast.describe() == ref.describe()
    assert list(fast.state_dict()) == ["params"]
    with pytest.raises(RuntimeError, match="float32"):
        TritonGridEncoding(*CONFIGS["hashgrid"], DEVICE).double()(random_points(seed=1, n=4).double())


def test_unavailable_off_its_devices() -> None:
    with pytest.raises(InputError, match="triton"):
        make_encoding(EncodingConfig(backend="triton"), "hashgrid", "meta")
    assert type(make_encoding(variant(HASH, backend="triton"), "hashgrid", DEVICE)) is TritonGridEncoding


@pytest.mark.parametrize(
    ("tcnn_ok", "triton_ok", "picked"),
    [(True, True, TcnnGridEncoding), (False, True, TritonGridEncoding), (False, False, TorchGridEncoding)],
)
def test_auto_on_cuda_prefers_tcnn_then_triton_then_torch(
    tcnn_ok: bool, triton_ok: bool, picked: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``backend=auto`` on a CUDA device (the choice only asks each backend whether it can run)."""
    for cls, ok in ((TcnnGridEncoding, tcnn_ok), (TritonGridEncoding, triton_ok)):
        monkeypatch.setattr(cls, "unavailable", classmethod(lambda c, device, ok=ok: None if ok else "absent"))
    assert backend_class("auto", torch.device("cuda")) is picked
    assert AUTO["cuda"] == ("tcnn", "triton", "torch") and "triton" not in AUTO["cpu"]


def test_importing_recon_never_imports_triton() -> None:
    code = (
        "import sys\n"
        "import recon, recon.encodings, recon.fields, recon.train\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("interpreted", [False, True])
def test_cpu_only_under_the_interpreter_and_cuda_only_without(
    interpreted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernels, _ = triton_backend._import_kernels()
    monkeypatch.setattr(kernels, "interpreted", interpreted)
    on_cpu, on_cuda = (TritonGridEncoding.unavailable(torch.device(d)) for d in ("cpu", "cuda"))
    assert (on_cpu is None) == interpreted and (on_cuda is None) == (not interpreted)
    assert "TRITON_INTERPRET=1" in (on_cuda if interpreted else on_cpu)


COMPILE_FOR_HOPPER = """
import os, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from recon.encodings import triton_kernels as k

base = {"N_LEVELS": 16, "F": 2, "F_PAD": 2, "SMOOTH": True, "BLOCK": 128}
jobs = [
    (k.forward_kernel, {**base, "DERIVATIVES": True}),
    (k.grad_x_kernel, base),
    (k.grad_x_back_kernel, {**base, "NEED_GO": True, "NEED_X": True}),
    (k.scatter_kernel, {**base, "WEIGHTED": True, "DIRECTIONAL": True}),
]
for fn, consts in jobs:
    types = {name: "constexpr" if name in consts else {"levels_i": "*i64", "n": "i32"}.get(name, "*fp32")
             for name in fn.arg_names}
    compiled = triton.compile(ASTSource(fn=fn, signature=types, constexprs=consts), target=GPUTarget("cuda", 90, 32))
    assert "atom" in compiled.asm["ptx"] or fn is not k.scatter_kernel
    print(fn.__name__, "ok")
"""


def test_kernels_compile_for_a_hopper_gpu_without_one() -> None:
    """The compiled path, not the interpreter's: every kernel through Triton's compiler to sm_90 code
    (the H100 / H200), which needs no GPU; the interpreter accepts code the compiler may refuse."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["forward_kernel", "ok", "grad_x_kernel", "ok", "grad_x_back_kernel", "ok",
                                  "scatter_kernel", "ok"]
