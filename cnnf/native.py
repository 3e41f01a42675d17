"""Hand-written C kernels for the instance norm + (Ada)ReLU on the CPU.

The same six formulas as cnnf.fused (first pass, later pass, plain norm;
forward and backward), written in C (`native_kernels.c`) so that each
sample's slab of the feature map is read from memory once for its sums and
then again from the core's cache, where the compiled kernels stream the whole
map twice. Measured on the 2-core development machine (interleaved, one
process): 1.7-2x faster forward and 2.3-2.9x faster backward than the
compiled kernels on the B.2 maps, the same values for the map gradients and
outputs (float32; the bias gradient differs in summation order).

Built on first use with the system C compiler (`cc`, the one inductor needs
too; ~2 s) into a cache folder keyed by the source, the compiler and this
CPU's flags, and loaded with ctypes. They serve the fused path only (inside
`fused.use_kernels(True)`), for channels-last contiguous float32 / bfloat16
maps with at most 256 channels and a float32 bias; anything else, a failed
build, or CNNF_NATIVE_KERNELS=0 falls back to the compiled kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import ContextManager, Optional

import torch
from torch import Tensor

from cnnf.runtime import cpuinfo
from cnnf.switches import Switch

ENV = "CNNF_NATIVE_KERNELS"
SOURCE = Path(__file__).with_name("native_kernels.c")
# -mprefer-vector-width=512: GCC and Clang default to 256-bit vectors even where
# the CPU has AVX-512; 512-bit ones made the kernels on 32- and 64-channel maps
# 5-15 % (fp32) and 20-30 % (bf16) faster on a 2-core AVX-512/AMX host, with
# 16-channel maps unchanged (interleaved, same outputs bit for bit). A CPU
# without AVX-512 ignores the preference.
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
MAX_CHANNELS = 256
_CL = torch.channels_last
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}

_SWITCH = Switch("cnnf_native_kernels", default=True, env=ENV)


def use_native(enabled: bool) -> ContextManager[None]:
    """Within this scope the native kernels are on (default) or off; CNNF_NATIVE_KERNELS=0 turns them off everywhere."""
    return _SWITCH.scope(enabled)


def _cache_dir() -> Path:
    root = os.environ.get("CNNF_NATIVE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                              "cnnf-native")
    return Path(root)


def _cpu_flags() -> str:
    """What the build depends on of this CPU (-march=native), for the cache key."""
    return cpuinfo("flags") or platform.processor()


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@functools.cache
def library() -> Optional[ctypes.CDLL]:
    """The compiled kernels, built on first use; None (with one warning) if they cannot be built or loaded."""
    cc = _compiler()
    if cc is None:
        warnings.warn("cnnf: no C compiler found; the native CPU kernels are off, the compiled ones serve", stacklevel=2)
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(FLAGS), _cpu_flags()]).encode()).hexdigest()[:16]
        target = _cache_dir() / key / "libcnnf_kernels.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Build beside the target and rename: a concurrent process never loads a half-written file.
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                proc = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, text=True, timeout=300)
                if proc.returncode != 0:
                    raise RuntimeError(f"{cc} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                os.replace(built, target)
        lib = ctypes.CDLL(str(target))
    except Exception as exc:  # noqa: BLE001 - any build or load failure: the compiled kernels serve
        warnings.warn(f"cnnf: native CPU kernels unavailable ({type(exc).__name__}: {exc}); the compiled ones serve", stacklevel=2)
        return None
    P, I64, F, INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    for t in _SUFFIX.values():
        getattr(lib, f"cnnf_norm_fwd_{t}").argtypes = [P, P, F, INT, I64, I64, I64, P, P, INT]
        getattr(lib, f"cnnf_norm_bwd_{t}").argtypes = [P, P, P, P, INT, I64, I64, I64, P, P, INT]
        getattr(lib, f"cnnf_ada_fwd_{t}").argtypes = [P, P, P, F, F, I64, I64, I64, P, P, P, INT]
        getattr(lib, f"cnnf_ada_bwd_{t}").argtypes = [P, P, P, P, F, I64, I64, I64, P, P, P, INT]
        for name in ("maxpool2", "unpool2", "gather2"):
            getattr(lib, f"cnnf_{name}_{t}").argtypes = [P, P, I64, I64, I64, I64, P, INT]
        for name in ("norm_fwd", "norm_bwd", "ada_fwd", "ada_bwd", "maxpool2", "unpool2", "gather2"):
            getattr(lib, f"cnnf_{name}_{t}").restype = INT
    return lib


def _requested() -> bool:
    return _SWITCH.from_env() is not False and bool(_SWITCH.scoped())


def _maps_ok(x: Tensor, *others: Optional[Tensor]) -> bool:
    """CPU, 4-D, float32 or bfloat16, channels-last contiguous, and every other map alike."""
    if not (x.device.type == "cpu" and x.dim() == 4 and x.dtype in _SUFFIX and 1 <= x.shape[1] <= MAX_CHANNELS
            and x.is_contiguous(memory_format=_CL)):
        return False
    return all(t is None or (t.shape == x.shape and t.dtype == x.dtype and t.device == x.device
                             and t.is_contiguous(memory_format=_CL)) for t in others)


def _bias(bias: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """The bias as a contiguous float32 (C,) tensor (zeros for none); None if it has another dtype."""
    if bias is None:
        return torch.zeros(x.shape[1], dtype=torch.float32)
    if bias.dtype != torch.float32 or bias.device.type != "cpu":
        return None
    return bias.detach().contiguous()


def serves(x: Tensor) -> bool:
    """Whether the native kernels are on and take maps like x."""
    return _requested() and _maps_ok(x) and library() is not None


def _lib_for(x: Tensor, *others: Optional[Tensor]) -> Optional[ctypes.CDLL]:
    if not _requested() or not _maps_ok(x, *others):
        return None
    return library()


def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _r_ok(r: Tensor, x: Tensor) -> Optional[Tensor]:
    if r.dtype != torch.float32 or r.numel() != x.shape[0] * x.shape[1]:
        return None
    return r.contiguous()


def _bias_grad(rows: Optional[Tensor]) -> Optional[Tensor]:
    return None if rows is None else rows.sum(0)


def norm_forward(x: Tensor, bias: Optional[Tensor], eps: float, relu: bool) -> Optional[tuple[Tensor, Tensor]]:
    """(x r + bias [relu], r (N, C, 1, 1) float32), or None where the native kernel does not apply."""
    lib = _lib_for(x)
    b = None if lib is None else _bias(bias, x)  # nothing allocated when falling back
    if b is None:
        return None
    n, c, h, w = x.shape
    out = torch.empty_like(x, memory_format=_CL)
    r = torch.empty(n, c, 1, 1, dtype=torch.float32)
    if getattr(lib, f"cnnf_norm_fwd_{_SUFFIX[x.dtype]}")(x.data_ptr(), b.data_ptr(), eps, int(relu), n, h * w, c,
                                                        out.data_ptr(), r.data_ptr(), torch.get_num_threads()):
        return None
    return out, r


def norm_backward(g: Tensor, x: Tensor, r: Tensor, bias: Optional[Tensor], relu: bool,
                  want_bias: bool) -> Optional[tuple[Tensor, Optional[Tensor]]]:
    """Gradients (map, float32 bias or None) of norm_forward, or None where the native kernel does not apply."""
    lib = _lib_for(x, g)
    b, rr = (None, None) if lib is None else (_bias(bias, x), _r_ok(r, x))
    if b is None or rr is None:
        return None
    n, c, h, w = x.shape
    grad = torch.empty_like(x, memory_format=_CL)
    rows = torch.empty(n, c, dtype=torch.float32) if want_bias else None
    if getattr(lib, f"cnnf_norm_bwd_{_SUFFIX[x.dtype]}")(g.data_ptr(), x.data_ptr(), rr.data_ptr(), b.data_ptr(), int(relu),
                                                        n, h * w, c, grad.data_ptr(), _ptr(rows), torch.get_num_threads()):
        return None
    return grad, _bias_grad(rows)


def norm_ada_relu_forward(x: Tensor, bias: Optional[Tensor], s: Tensor, eta: float,
                          eps: float) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """(out, gate z, r) of fused.norm_ada_relu_forward, or None where the native kernel does not apply."""
    lib = _lib_for(x, s)
    b = None if lib is None else _bias(bias, x)
    if b is None:
        return None
    n, c, h, w = x.shape
    out, z = torch.empty_like(x, memory_format=_CL), torch.empty_like(x, memory_format=_CL)
    r = torch.empty(n, c, 1, 1, dtype=torch.float32)
    if getattr(lib, f"cnnf_ada_fwd_{_SUFFIX[x.dtype]}")(x.data_ptr(), b.data_ptr(), s.data_ptr(), eta, eps, n, h * w, c,
                                                       out.data_ptr(), z.data_ptr(), r.data_ptr(), torch.get_num_threads()):
        return None
    return out, z, r


def norm_ada_relu_backward(g: Tensor, z: Tensor, x: Tensor, r: Tensor, eta: float, want_bias: bool,
                           want_s: bool) -> Optional[tuple[Tensor, Optional[Tensor], Optional[Tensor]]]:
    """Gradients (map, float32 bias or None, signal or None) of norm_ada_relu_forward, or None where it does not apply."""
    lib = _lib_for(x, g, z)
    rr = None if lib is None else _r_ok(r, x)
    if rr is None:
        return None
    n, c, h, w = x.shape
    grad = torch.empty_like(x, memory_format=_CL)
    rows = torch.empty(n, c, dtype=torch.float32) if want_bias else None
    grad_s = torch.empty_like(x, memory_format=_CL) if want_s else None
    if getattr(lib, f"cnnf_ada_bwd_{_SUFFIX[x.dtype]}")(g.data_ptr(), z.data_ptr(), x.data_ptr(), rr.data_ptr(), eta, n, h * w, c,
                                                       grad.data_ptr(), _ptr(rows), _ptr(grad_s), torch.get_num_threads()):
        return None
    return grad, _bias_grad(rows), grad_s


# ------------------------------------------------------------ 2x2 max pooling
# The indices are max_pool2d's (flat h W + w in the input plane, int64,
# channels-last like the maps); unpool2 and gather2 assume each lies in its
# own 2x2 window, which holds for every index cnnf's pooling produces.


def _index_ok(index: Tensor, pooled: tuple[int, ...]) -> bool:
    return (index.dtype == torch.int64 and tuple(index.shape) == pooled and index.device.type == "cpu"
            and index.is_contiguous(memory_format=_CL))


def maxpool2(x: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """F.max_pool2d(x, 2, return_indices=True), or None where the native kernel does not apply."""
    lib = _lib_for(x)
    if lib is None:
        return None
    n, c, h, w = x.shape
    out = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, memory_format=_CL)
    index = torch.empty((n, c, h // 2, w // 2), dtype=torch.int64, memory_format=_CL)
    if getattr(lib, f"cnnf_maxpool2_{_SUFFIX[x.dtype]}")(x.data_ptr(), n, h, w, c, out.data_ptr(), index.data_ptr(),
                                                        torch.get_num_threads()):
        return None
    return out, index


def unpool2(s: Tensor, index: Tensor, size: tuple[int, int]) -> Optional[Tensor]:
    """(N, C, H, W) map with s at the positions `index` names and 0 elsewhere
    (max_pool2d's backward, and F.max_unpool2d(s, index, 2, output_size=size)),
    or None where the native kernel does not apply."""
    lib = _lib_for(s)
    if lib is None or not _index_ok(index, tuple(s.shape)) or (size[0] // 2, size[1] // 2) != tuple(s.shape[-2:]):
        return None
    n, c = s.shape[:2]
    out = torch.empty((n, c, *size), dtype=s.dtype, memory_format=_CL)
    if getattr(lib, f"cnnf_unpool2_{_SUFFIX[s.dtype]}")(s.data_ptr(), index.data_ptr(), n, size[0], size[1], c, out.data_ptr(),
                                                       torch.get_num_threads()):
        return None
    return out


def gather2(g: Tensor, index: Tensor) -> Optional[Tensor]:
    """g at each index, (N, C, H / 2, W / 2) (the backward of unpool2), or None where the native kernel does not apply."""
    lib = _lib_for(g)
    n, c, h, w = g.shape
    if lib is None or not _index_ok(index, (n, c, h // 2, w // 2)):
        return None
    out = torch.empty((n, c, h // 2, w // 2), dtype=g.dtype, memory_format=_CL)
    if getattr(lib, f"cnnf_gather2_{_SUFFIX[g.dtype]}")(g.data_ptr(), index.data_ptr(), n, h, w, c, out.data_ptr(),
                                                       torch.get_num_threads()):
        return None
    return out
