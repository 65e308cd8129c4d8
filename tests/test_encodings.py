"""Grid encodings: tiny-cuda-nn's layout and hash, values, gradients, backend choice."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from recon.errors import InputError

from recon.config import EncodingConfig
from recon.encodings import GridEncoding, TorchGridEncoding, make_encoding, matched_dense_resolution, torch_backend
from recon.encodings import workers as pool
from recon.encodings.tcnn_backend import TcnnGridEncoding, tcnn_encoding_config

UINT32 = 0xFFFFFFFF
PRIMES = (1, 2654435761, 805459861)

# Two levels whose scales are powers of two (2 and 4), so vertices sit at exact binary
# fractions: level 0 is 3^3 = 27 vertices stored densely (size 32), level 1 is 5^3 = 125
# vertices hashed into 2^6 = 64 rows.
TINY = EncodingConfig(n_levels=2, base_resolution=3, finest_resolution=5, log2_hashmap_size=6, init_scale=1.0)
# Three levels (resolutions 3, 6, 12): one dense, two hashed.
SMALL = EncodingConfig(n_levels=3, base_resolution=3, finest_resolution=12, log2_hashmap_size=6, init_scale=1.0)


def reference_encode(enc: GridEncoding, x: np.ndarray, smooth: bool = False) -> np.ndarray:
    """Slow per-point, per-corner transcription of tiny-cuda-nn's lookup (the test oracle).

    Arithmetic on positions follows the input's precision (float32 or float64), indices
    use Python integers masked to uint32.
    """
    table = enc.params.detach().cpu().numpy().astype(np.float64)
    n_features = enc.n_features
    real = x.dtype.type
    out = np.zeros((len(x), enc.out_dim))
    for p, point in enumerate(np.clip(x, 0, 1)):
        for index, level in enumerate(enc.layout()):
            pos = [real(c) * real(level.scale) + real(0.5) for c in point]
            cell = [math.floor(c) for c in pos]
            frac = [float(c - g) for c, g in zip(pos, cell)]
            if smooth:
                frac = [t * t * (3 - 2 * t) for t in frac]
            for corner in range(8):
                offs = [(corner >> d) & 1 for d in range(3)]
                i, j, k = (cell[d] + offs[d] for d in range(3))
                res = level.resolution
                if level.hashed:
                    vertex = (i * PRIMES[0] ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) & UINT32
                else:
                    vertex = i + j * res + k * res * res
                vertex %= level.size
                weight = np.prod([frac[d] if offs[d] else 1 - frac[d] for d in range(3)])
                row = (level.offset + vertex) * n_features
                out[p, index * n_features : (index + 1) * n_features] += weight * table[row : row + n_features]
    return out


def encode_np(enc: GridEncoding, x: torch.Tensor) -> np.ndarray:
    """enc(x) as a NumPy array."""
    with torch.no_grad():
        return enc(x).numpy()


def arange_encoding(cfg: EncodingConfig, kind: str = "hashgrid") -> GridEncoding:
    """Encoding in float64 whose table holds 0, 1, 2, ... (so values name their row)."""
    enc = TorchGridEncoding(cfg, kind).double()
    with torch.no_grad():
        enc.params.copy_(torch.arange(enc.n_params(), dtype=torch.float64))
    return enc


def vertex_point(ijk: tuple[int, int, int], scale: float) -> torch.Tensor:
    """The point x with x * scale + 0.5 == (i, j, k): a grid vertex, weight 1."""
    return torch.tensor([[(c - 0.5) / scale for c in ijk]], dtype=torch.float64)


# ---------------------------------------------------------------------------------- layout


def test_monosdf_default_layout() -> None:
    enc = TorchGridEncoding(EncodingConfig(), "hashgrid")
    layout = enc.layout()
    assert enc.n_params() == 12_196_240
    assert enc.out_dim == 32
    resolutions = [16, 23, 31, 43, 59, 81, 112, 154, 213, 295, 407, 562, 777, 1073, 1483, 2048]
    assert [lv.resolution for lv in layout] == resolutions
    # 59^3 = 205,379 fits in 2^19 rows; 81^3 = 531,441 does not.
    assert [lv.hashed for lv in layout] == [False] * 5 + [True] * 11
    assert layout[0].size == 4096 and layout[1].size == 12168  # 23^3 = 12,167 -> next multiple of 8
    assert all(lv.size == 2**19 for lv in layout[5:])
    assert [lv.offset for lv in layout[:3]] == [0, 4096, 4096 + 12168]
    assert layout[-1].offset + layout[-1].size == enc.n_params() // 2
    assert dict(enc.named_parameters()).keys() == {"params"}
    assert float(enc.params.detach().abs().max()) <= 1e-4


def test_tiny_layout_is_dense_then_hashed() -> None:
    enc = TorchGridEncoding(TINY, "hashgrid")
    layout = enc.layout()
    assert enc.describe().splitlines()[1:] == [
        "    0     3     2.000        32         0  dense",
        "    1     5     4.000        64        32  hashed",
        "2 features per vertex, 192 parameters",
    ]
    assert [(lv.scale, lv.resolution, lv.size, lv.offset, lv.hashed) for lv in layout] == [
        (2.0, 3, 32, 0, False),
        (4.0, 5, 64, 32, True),
    ]


# ---------------------------------------------------------------------------------- values


def test_dense_vertex_reads_its_row() -> None:
    enc = arange_encoding(TINY)
    # level 0 (scale 2, res 3): vertex (1, 2, 1) is row 1 + 2*3 + 1*9 = 16 -> params 32, 33
    out = enc(vertex_point((1, 2, 1), 2.0))
    assert out[0, :2].tolist() == [32.0, 33.0]


def test_hashed_vertex_reads_hashed_row() -> None:
    enc = arange_encoding(TINY)
    # level 1 (scale 4, res 5, hashed into 64 rows, offset 32):
    # hash(1, 1, 1) = 1 ^ 2654435761 ^ 805459861 = 2922720805 (uint32); mod 64 = 37
    # -> row 32 + 37 = 69 -> params 138, 139
    assert (1 ^ 2654435761 ^ 805459861) & UINT32 == 2922720805 and 2922720805 % 64 == 37
    out = enc(vertex_point((1, 1, 1), 4.0))
    assert out[0, 2:].tolist() == [138.0, 139.0]


def test_hash_wraps_like_uint32() -> None:
    # hash(2047, 1500, 1999): the products overflow 32 bits many times over.
    expected = (2047 ^ (1500 * 2654435761) ^ (1999 * 805459861)) & UINT32
    assert expected == 4014271128
    cfg = EncodingConfig(n_levels=1, base_resolution=4096, finest_resolution=4096, log2_hashmap_size=19, init_scale=1.0)
    enc = arange_encoding(cfg)
    scale = enc.layout()[0].scale
    assert scale == 4095.0
    row = expected % 2**19
    out = enc(vertex_point((2047, 1500, 1999), scale))
    assert out[0].tolist() == [2.0 * row, 2.0 * row + 1]


def test_far_face_corners_wrap_like_tiny_cuda_nn() -> None:
    # x = 1 at scale 2: pos 2.5, cell 2, the +1 corner is coordinate 3 = res: tiny-cuda-nn reads
    # index (3 + 3*3 + 3*9) mod 32 = 39 mod 32 = 7 there, with weight 1/8.
    enc = arange_encoding(TINY)
    x = torch.ones(1, 3, dtype=torch.float64)
    np.testing.assert_allclose(encode_np(enc, x), reference_encode(enc, x.numpy()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cfg", [SMALL, EncodingConfig()], ids=["small", "monosdf"])
def test_matches_reference_on_random_points(cfg: EncodingConfig) -> None:
    torch.manual_seed(0)
    enc = TorchGridEncoding(cfg, "hashgrid")
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = torch.cat([torch.rand(24, 3), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5]])])
    np.testing.assert_allclose(encode_np(enc, x), reference_encode(enc, x.numpy()), rtol=0, atol=2e-6)


def test_smoothstep_matches_reference() -> None:
    torch.manual_seed(1)
    enc = TorchGridEncoding(EncodingConfig(**{**vars(SMALL), "interpolation": "smoothstep"}), "hashgrid").double()
    x = torch.rand(30, 3, dtype=torch.float64)
    np.testing.assert_allclose(encode_np(enc, x), reference_encode(enc, x.numpy(), smooth=True), rtol=0, atol=1e-12)
    linear = TorchGridEncoding(SMALL, "hashgrid").double()
    linear.load_state_dict(enc.state_dict())
    assert not torch.allclose(enc(x), linear(x))


def test_points_outside_the_cube_are_clamped() -> None:
    enc = TorchGridEncoding(SMALL, "hashgrid").double()
    x = torch.tensor([[-0.5, 0.3, 1.7], [2.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(enc(x), enc(x.detach().clamp(0, 1)))
    (grad,) = torch.autograd.grad(enc(x).sum(), x)
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[1, 0] == 0 and grad[1, 1] == 0


def test_shapes_and_input_checks() -> None:
    enc = TorchGridEncoding(SMALL, "hashgrid")
    assert enc(torch.rand(2, 5, 3)).shape == (2, 5, enc.out_dim)
    assert enc(torch.rand(0, 3)).shape == (0, enc.out_dim)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        enc(torch.rand(4, 2))


# ---------------------------------------------------------------------------------- dense grid


def test_matched_dense_resolution_for_monosdf_defaults() -> None:
    cfg = EncodingConfig()
    r = matched_dense_resolution(cfg)
    target = 12_196_240
    assert r == 115  # 115^3 * 8 = 12,167,000
    assert all(abs(r**3 * 8 - target) <= abs(q**3 * 8 - target) for q in range(2, 300))
    enc = TorchGridEncoding(cfg, "densegrid")
    assert [(lv.scale, lv.resolution, lv.hashed) for lv in enc.layout()] == [(114.0, 115, False)]
    assert enc.n_params() == (115**3 + 7) // 8 * 8 * 8 and enc.out_dim == 8


def test_dense_grid_explicit_resolution_and_values() -> None:
    cfg = EncodingConfig(dense_resolution=5, dense_features=3, init_scale=1.0)
    enc = arange_encoding(cfg, "densegrid")
    assert enc.n_params() == 128 * 3 and enc.out_dim == 3  # 125 -> 128 rows
    out = enc(vertex_point((4, 0 + 1, 2), 4.0))  # row 4 + 1*5 + 2*25 = 59
    assert out[0].tolist() == [177.0, 178.0, 179.0]
    x = torch.rand(20, 3, dtype=torch.float64)
    np.testing.assert_allclose(encode_np(enc, x), reference_encode(enc, x.numpy()), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------- gradients

GRAD_CONFIGS = {  # name: (config, grid kind)
    "hash-linear": (SMALL, "hashgrid"),
    "hash-smoothstep": (EncodingConfig(**{**vars(SMALL), "interpolation": "smoothstep"}), "hashgrid"),
    "dense": (EncodingConfig(dense_resolution=4, dense_features=3, init_scale=1.0), "densegrid"),
    "dense-smoothstep": (EncodingConfig(dense_resolution=4, dense_features=1, interpolation="smoothstep"), "densegrid"),
}


def functional(enc: GridEncoding):
    """enc as a function of (points, table), for gradcheck."""
    return lambda x, params: torch.func.functional_call(enc, {"params": params}, (x,))


@pytest.mark.parametrize("name", list(GRAD_CONFIGS))
def test_gradcheck_and_gradgradcheck(name: str) -> None:
    torch.manual_seed(2)
    enc = TorchGridEncoding(*GRAD_CONFIGS[name]).double()
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    params = enc.params.detach().clone().requires_grad_(True)
    f = functional(enc)
    assert torch.autograd.gradcheck(f, (x, params))
    assert torch.autograd.gradgradcheck(f, (x, params))
    # each input alone (the forward then keeps no derivatives, or needs no table gradient)
    assert torch.autograd.gradcheck(lambda p: f(x.detach(), p), (params,))
    assert torch.autograd.gradgradcheck(lambda y: f(y, params.detach()), (x,))


def autograd_twin(enc: GridEncoding, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Straightforward vectorised lookup, differentiated by autograd (second oracle)."""
    feats = []
    xc = x.clamp(0, 1)
    for level in enc.layout():
        table = params[level.offset * enc.n_features : (level.offset + level.size) * enc.n_features]
        table = table.view(level.size, enc.n_features)
        pos = xc * level.scale + 0.5
        cell = pos.detach().floor()
        frac = pos - cell
        cell = cell.long()
        acc = 0
        for corner in range(8):
            offs = torch.tensor([(corner >> d) & 1 for d in range(3)])
            c = cell + offs
            if level.hashed:
                idx = (c[:, 0] ^ (c[:, 1] * PRIMES[1]) ^ (c[:, 2] * PRIMES[2])) & UINT32
            else:
                idx = c[:, 0] + c[:, 1] * level.resolution + c[:, 2] * level.resolution**2
            w = torch.where(offs.bool(), frac, 1 - frac).prod(-1, keepdim=True)
            acc = acc + w * table[idx % level.size]
        feats.append(acc)
    return torch.cat(feats, -1)


@pytest.mark.parametrize(
    ("head_kind", "with_feature_loss", "merged", "api"),
    [
        ("linear", False, False, "grad"),
        ("linear", True, True, "grad"),
        ("mlp", False, True, "grad"),
        ("mlp", True, True, "grad"),
        ("mlp", True, True, "backward"),
    ],
)
def test_eikonal_double_backward_matches_autograd_twin(
    head_kind: str, with_feature_loss: bool, merged: bool, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training step's gradients (eikonal term, optionally a loss on the features too).

    ``merged``: whether the eikonal term's table gradient is expected to be deferred into
    the features' own scatter (it is whenever the features' node runs in the same pass).
    """
    torch.manual_seed(3)
    cfg = EncodingConfig(n_levels=4, base_resolution=4, finest_resolution=32, log2_hashmap_size=8, init_scale=1.0)
    enc = TorchGridEncoding(cfg, "hashgrid").double()
    x0 = torch.rand(200, 3, dtype=torch.float64) * 1.1 - 0.05  # a few outside, clamped
    mlp = torch.nn.Sequential(torch.nn.Linear(enc.out_dim, 16), torch.nn.Softplus(beta=10), torch.nn.Linear(16, 1))
    head = mlp.double() if head_kind == "mlp" else torch.nn.Linear(enc.out_dim, 1).double()
    terms_seen: list[int] = []
    scatter = torch_backend._scatter_add
    def spy(grad: torch.Tensor, idx: torch.Tensor, terms: list, workers: object = None) -> None:
        terms_seen.append(len(terms))
        scatter(grad, idx, terms, workers)

    monkeypatch.setattr(torch_backend, "_scatter_add", spy)

    def step_grads(fn):
        x = x0.clone().requires_grad_(True)
        params = enc.params.detach().clone().requires_grad_(True)
        feats = fn(x, params)
        sdf = head(feats)[:, 0]
        (g,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
        loss = ((g.norm(dim=-1) - 1) ** 2).mean()
        if with_feature_loss:
            loss = loss + (feats**2).mean() + sdf.abs().mean()
        wrt = (x, params, *head.parameters())
        if api == "grad":
            return torch.autograd.grad(loss, wrt, allow_unused=True)
        for t in wrt:
            t.grad = None
        loss.backward()
        return [t.grad for t in wrt]

    fast = step_grads(functional(enc))
    assert (max(terms_seen) == 2) == merged
    slow = step_grads(lambda x, p: autograd_twin(enc, x, p))
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", [GRAD_CONFIGS["hash-linear"], GRAD_CONFIGS["dense"]], ids=["levels", "features"])
def test_worker_threads_give_the_same_numbers(spec: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Level-parallel (and, for one level, feature-parallel) passes match the inline ones."""
    torch.manual_seed(4)
    enc = TorchGridEncoding(*spec)
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    head = torch.randn(enc.out_dim)
    x0 = torch.rand(5000, 3)

    def step() -> list[torch.Tensor]:
        x = x0.clone().requires_grad_(True)
        feats = enc(x)
        (g,) = torch.autograd.grad((feats @ head).sum(), x, create_graph=True)
        enc.params.grad = None
        (((g.norm(dim=-1) - 1) ** 2).mean() + (feats**2).mean()).backward()
        (g2,) = torch.autograd.grad((enc(x) @ head).sum(), x, create_graph=True)
        (eikonal_only,) = torch.autograd.grad((g2**2).sum(), enc.params)
        return [feats.detach(), g.detach(), enc.params.grad, x.grad, eikonal_only]

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = step()
        assert pool._workers is not None and torch.get_num_threads() == 2
        monkeypatch.setattr(pool, "_MIN_POINTS_FOR_WORKERS", 10**9)
        inline = step()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(threaded, inline):
        assert torch.equal(a, b)


def test_gradient_only_where_asked() -> None:
    enc = TorchGridEncoding(SMALL, "hashgrid")
    x = torch.rand(10, 3, requires_grad=True)
    (gx,) = torch.autograd.grad(enc(x).sum(), x)
    assert enc.params.grad is None and gx.shape == (10, 3)
    enc(x.detach()).sum().backward()
    assert enc.params.grad is not None and enc.params.grad.shape == enc.params.shape
    with torch.no_grad():
        assert not enc(x).requires_grad
    assert torch.equal(enc(x).detach(), enc(x.detach()))  # with or without derivatives kept


# ---------------------------------------------------------------------------------- backends


def test_factory_picks_torch_on_cpu() -> None:
    enc = make_encoding(EncodingConfig(backend="torch"), "hashgrid", torch.device("cpu"))
    assert type(enc) is TorchGridEncoding
    dense = make_encoding(EncodingConfig(backend="torch"), "densegrid", torch.device("cpu"))
    assert type(dense) is TorchGridEncoding and dense.out_dim == 8
    # auto on the CPU: the fused kernel or, when it cannot be built, the pure-PyTorch one (both GridEncodings)
    assert isinstance(make_encoding(EncodingConfig(backend="auto"), "hashgrid", torch.device("cpu")), GridEncoding)


def test_factory_tcnn_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="tcnn"):
        make_encoding(EncodingConfig(backend="tcnn"), "hashgrid", torch.device("cpu"))


def test_tcnn_config_mapping() -> None:
    cfg = EncodingConfig(interpolation="smoothstep")
    assert tcnn_encoding_config(cfg, "hashgrid") == {
        "otype": "HashGrid",
        "n_levels": 16,
        "n_features_per_level": 2,
        "log2_hashmap_size": 19,
        "base_resolution": 16,
        "per_level_scale": cfg.per_level_scale,
        "interpolation": "Smoothstep",
    }
    dense = tcnn_encoding_config(EncodingConfig(), "densegrid")
    assert dense["otype"] == "DenseGrid" and dense["n_levels"] == 1
    assert dense["base_resolution"] == 115 and dense["n_features_per_level"] == 8
    assert dense["interpolation"] == "Linear"
    assert issubclass(TcnnGridEncoding, torch.nn.Module)


def fake_tinycudann(reference: TorchGridEncoding) -> types.ModuleType:
    """A stand-in for ``tinycudann`` (which needs CUDA): its ``Encoding`` has tiny-cuda-nn's
    surface (a flat ``params`` table, ``n_output_dims``) and interpolates like ``reference``."""

    class Encoding(torch.nn.Module):
        def __init__(self, n_input_dims: int, encoding_config: dict, dtype: torch.dtype) -> None:
            super().__init__()
            self.params = torch.nn.Parameter(torch.zeros(reference.n_params(), dtype=dtype))
            self.n_output_dims = reference.out_dim

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(reference, {"params": self.params}, (x,))

    module = types.ModuleType("tinycudann")
    module.Encoding = Encoding
    return module


def test_tcnn_state_dict_is_the_one_shared_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tcnn backend registers its table once, as ``params``: checkpoints move between backends."""
    torch.manual_seed(5)
    ref = TorchGridEncoding(SMALL, "hashgrid")
    monkeypatch.setitem(sys.modules, "tinycudann", fake_tinycudann(ref))
    monkeypatch.setattr(TcnnGridEncoding, "unavailable", classmethod(lambda cls, device: None))  # CPU, here
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    enc = TcnnGridEncoding(SMALL, "hashgrid", "cpu")
    assert enc.state_dict().keys() == {"params"}
    assert [name for name, _ in enc.named_parameters()] == ["params"] and not list(enc.children())
    assert enc.state_dict()["params"].shape == ref.state_dict()["params"].shape
    enc.load_state_dict(ref.state_dict())
    x = torch.rand(40, 3, requires_grad=True)
    torch.testing.assert_close(enc(x), ref(x))  # tiny-cuda-nn's forward reads the loaded, shared table
    enc(x).square().sum().backward()
    assert enc.params.grad is not None and enc.params.grad.abs().sum() > 0
    enc.load_state_dict({"params": torch.zeros_like(enc.params)}, assign=True)  # a new Parameter object
    assert enc(x).abs().max() == 0
    ref.load_state_dict(enc.state_dict())


def test_importing_never_imports_tinycudann() -> None:
    code = (
        "import sys, torch\n"
        "import recon.encodings\n"
        "from recon.config import EncodingConfig\n"
        "recon.encodings.make_encoding(EncodingConfig(backend='auto'), 'hashgrid', torch.device('cpu'))\n"
        "assert 'tinycudann' not in sys.modules, 'tinycudann was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
