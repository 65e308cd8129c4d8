"""The fused CPU grid kernel against the pure-PyTorch reference, its build, and its fallback."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoding_checks import assert_float32_close, run_pass, training_step_grads
from recon.config import EncodingConfig
from recon.encodings import FusedGridEncoding, GridEncoding, TorchGridEncoding, cpp_build, fused, make_encoding
from recon.errors import InputError

if shutil.which(os.environ.get("CXX", "c++")) is None:
    pytest.skip("no C++ compiler: the fused kernel cannot be built here", allow_module_level=True)

# 4 levels (resolutions 3..24), 2^8 rows: levels 0-1 dense, 2-3 hashed.
HASH = EncodingConfig(n_levels=4, base_resolution=3, finest_resolution=24, log2_hashmap_size=8, init_scale=1.0)
CONFIGS = {  # name: (config, grid kind)
    "hashgrid": (HASH, "hashgrid"),
    "hashgrid-smoothstep": (EncodingConfig(**{**HASH.__dict__, "interpolation": "smoothstep"}), "hashgrid"),
    "hashgrid-F4": (EncodingConfig(**{**HASH.__dict__, "n_features_per_level": 4}), "hashgrid"),
    "densegrid": (EncodingConfig(dense_resolution=11, dense_features=8, init_scale=1.0), "densegrid"),
    "densegrid-F3": (EncodingConfig(dense_resolution=7, dense_features=3, init_scale=1.0), "densegrid"),
}
N_POINTS = 3000  # enough for several parallel chunks


@pytest.fixture(scope="module", autouse=True)
def extension() -> None:
    """Build (or load the cached) kernel; with a compiler present the build must succeed."""
    assert cpp_build.load_extension() is not None, f"build failed: {cpp_build.extension_failure()}"


def twins(cfg: EncodingConfig, kind: str, seed: int) -> tuple[GridEncoding, FusedGridEncoding]:
    """Reference and fused encodings sharing one random table."""
    torch.manual_seed(seed)
    ref = TorchGridEncoding(cfg, kind)
    fast = FusedGridEncoding(cfg, kind)
    fast.load_state_dict(ref.state_dict())  # the same parameter, the same layout
    return ref, fast


def random_points(seed: int, n: int = N_POINTS) -> torch.Tensor:
    """Points in [-0.05, 1.05]^3: a few outside the cube, clamped by both."""
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 1.1 - 0.05


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("second_order", [False, True], ids=["first-order", "eikonal"])
def test_matches_reference(name: str, second_order: bool) -> None:
    ref, fast = twins(*CONFIGS[name], seed=len(name))
    if name == "hashgrid":
        assert [lv.hashed for lv in ref.layout()] == [False, False, True, True]
    x = random_points(seed=7)
    head = torch.randn(ref.out_dim)
    for got, want in zip(run_pass(fast, x, head, second_order), run_pass(ref, x, head, second_order)):
        assert_float32_close(got, want)


@pytest.mark.parametrize("name", ["hashgrid", "densegrid"])
def test_training_step_merged_scatter_matches_reference(name: str) -> None:
    """Features loss + eikonal loss in one backward: both table gradients in one scatter."""
    ref, fast = twins(*CONFIGS[name], seed=3)
    x = random_points(seed=11)
    head = torch.randn(ref.out_dim)
    grads = [training_step_grads(enc, x, head) for enc in (ref, fast)]
    for got, want in zip(grads[1], grads[0]):
        assert_float32_close(got, want)


def test_table_gradient_is_differentiable() -> None:
    """A loss on the table gradient (create_graph) back to the output gradient and the points."""
    ref, fast = twins(HASH, "hashgrid", seed=5)
    x = random_points(seed=13, n=600)
    results = []
    for enc in (ref, fast):
        xg = x.clone().requires_grad_(True)
        go = torch.randn(len(x), enc.out_dim, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        (gt,) = torch.autograd.grad(enc(xg), enc.params, go, create_graph=True)
        results.append(torch.autograd.grad((gt * torch.cos(torch.arange(gt.numel()) * 0.1)).sum(), [go, xg]))
    for got, want in zip(results[1], results[0]):
        assert_float32_close(got, want)


@pytest.mark.parametrize("name", ["hashgrid", "densegrid"])
def test_scatter_strategies_agree(name: str) -> None:
    """Rows owned by one thread each and atomic adds give the same table gradient."""
    _, fast = twins(*CONFIGS[name], seed=2)
    x = random_points(seed=17)
    go = torch.randn(len(x), fast.out_dim)
    kernels = [fused._Kernel(fast.grid, mode) for mode in ("owned", "atomic")]
    owned, atomic = (k.scatter(x.clamp(0, 1), go, [(x, go)]) for k in kernels)
    assert_float32_close(atomic, owned)


@pytest.mark.parametrize("name", ["hashgrid", "densegrid"])
def test_kernel_clamps_points_itself(name: str) -> None:
    """Called directly, the kernel reads only inside the table, whatever the points (NaN: 0)."""
    _, fast = twins(*CONFIGS[name], seed=4)
    kernel = fused._Kernel(fast.grid)
    wild = torch.tensor([[-5.0, 0.5, 7.0], [float("nan"), float("inf"), -float("inf")], [1.0, 1.0, 1.0]] * 200)
    clamped = torch.nan_to_num(wild, nan=0.0).clamp(0, 1)
    table = fast.params.detach()
    torch.testing.assert_close(kernel.forward(wild, table, False)[0], kernel.forward(clamped, table, False)[0])
    go = torch.ones(len(wild), fast.out_dim)
    torch.testing.assert_close(kernel.scatter(wild, go, []), kernel.scatter(clamped, go, []))


def test_interface_and_checkpoints_match_grid_encoding() -> None:
    ref, fast = twins(*CONFIGS["hashgrid"], seed=0)
    assert fast.out_dim == ref.out_dim and fast.n_params() == ref.n_params()
    assert fast.layout() == ref.layout() and fast.describe() == ref.describe()
    assert list(fast.state_dict()) == ["params"]
    x = random_points(seed=1, n=10).view(2, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x))
        assert fast(x).shape == (2, 5, ref.out_dim)
    with pytest.raises(ValueError, match="shape"):
        fast(torch.zeros(4, 2))
    double = FusedGridEncoding(HASH, "hashgrid").double()  # CPU float32 only: make_encoding picks per device
    with pytest.raises(RuntimeError, match="float32 only"):
        double(x.double())


def test_factory_chooses_the_fused_kernel_on_cpu() -> None:
    assert type(make_encoding(EncodingConfig(), "hashgrid", "cpu")) is FusedGridEncoding
    assert type(make_encoding(EncodingConfig(backend="fused"), "densegrid", "cpu")) is FusedGridEncoding
    assert type(make_encoding(EncodingConfig(backend="torch"), "hashgrid", "cpu")) is TorchGridEncoding
    with pytest.raises(InputError, match="CPU only"):
        make_encoding(EncodingConfig(backend="fused"), "hashgrid", "meta")


def test_failed_build_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Error building extension 'recon_fused_grid': c++: command not found")

    monkeypatch.setattr(cpp_build, "_extension", None)
    monkeypatch.setattr(cpp_build, "_failure", None)
    monkeypatch.setattr(cpp_build, "_build", no_compiler)
    with caplog.at_level(logging.WARNING, logger="recon.encodings.cpp_build"):
        for _ in range(2):
            assert type(make_encoding(EncodingConfig(), "hashgrid", "cpu")) is TorchGridEncoding
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "pure-PyTorch" in warnings[0].getMessage()
    assert "command not found" in warnings[0].getMessage()
    with pytest.raises(InputError, match="could not be built"):
        make_encoding(EncodingConfig(backend="fused"), "hashgrid", "cpu")


def test_cache_dir_outside_the_working_tree_and_no_build_at_import(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("RECON_EXTENSIONS_DIR", None)
    code = (
        "import sys, recon, recon.encodings, recon.fields, recon.train\n"
        "from recon.encodings import cpp_build\n"
        "assert cpp_build._extension is None and cpp_build._failure is None, 'built at import'\n"
        "assert 'recon_fused_grid' not in sys.modules\n"
        "print(cpp_build.extensions_dir())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, timeout=120)
    where = Path(out.stdout.strip())
    assert where.is_relative_to(tmp_path / "cache" / "recon" / "torch_extensions")
    assert not where.exists()  # nothing was built or created
