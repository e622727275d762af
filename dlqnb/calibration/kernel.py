"""One pass over a tensor for calibration: minimum, maximum and float32 exponent-field counts.

Two implementations give identical results:

* a C++ kernel (compiled on first use with ``torch.utils.cpp_extension.load_inline`` into dlqnb's
  cache folder, then reused) that reads the data once on all intra-op threads;
* pure torch: ``aminmax`` plus :func:`dlqnb.core.numerics.exponent_field_counts` (a single-threaded
  ``bincount``), used when ``DLQNB_KERNEL=torch`` asks for it, and otherwise when the compiler is
  missing or the build fails (then with one ``RuntimeWarning`` saying why).

The compiled library is sealed with a checksum (:func:`dlqnb.core.cache.seal_entry`) and verified before it
is loaded: loading a damaged library can kill Python (a truncated one ends in SIGBUS), and ninja would
take a damaged or emptied one for up to date. A library that does not match its checksum, or has none
(a build that was interrupted), is removed with its build folder and rebuilt, with one
:class:`~dlqnb.core.cache.CacheWarning` naming it.

Measured on this project's 2-core machine, the kernel costs about a third of the fallback; see the
README's performance table.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dlqnb.core.numerics import exponent_field_counts

__all__ = ["kernel_name", "minmax_exponent_counts", "torch_minmax_exponent_counts"]

_log = logging.getLogger(__name__)

_CPP_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

// Returns (tensor [min, max] as float32, int64 counts of the 256 exponent-field values).
std::vector<torch::Tensor> minmax_exponent_counts(torch::Tensor x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "expected float32");
  x = x.contiguous();
  const float* data = x.data_ptr<float>();
  const int64_t n = x.numel();
  std::vector<int64_t> total(256, 0);
  float global_min = std::numeric_limits<float>::infinity();
  float global_max = -std::numeric_limits<float>::infinity();
  bool any_nan = false;
  std::mutex lock;
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    // Eight uint32 sub-histograms break the store-to-load chain of repeated increments of one
    // bin (half of a ReLU output is zeros); blocks of 4096 cannot overflow them.
    uint32_t counts[8][256];
    std::memset(counts, 0, sizeof(counts));
    alignas(64) uint8_t field[4096];
    float lo = std::numeric_limits<float>::infinity();
    float hi = -std::numeric_limits<float>::infinity();
    for (int64_t start = begin; start < end; start += 4096) {
      const int64_t m = std::min<int64_t>(4096, end - start);
      const float* values = data + start;
      float block_lo = lo, block_hi = hi;
      // NaNs never win these comparisons; they are detected from the exponent counts below.
      #pragma omp simd reduction(min:block_lo) reduction(max:block_hi)
      for (int64_t i = 0; i < m; ++i) {
        const float v = values[i];
        block_lo = v < block_lo ? v : block_lo;
        block_hi = v > block_hi ? v : block_hi;
      }
      lo = block_lo;
      hi = block_hi;
      for (int64_t i = 0; i < m; ++i) {
        uint32_t word;
        std::memcpy(&word, values + i, 4);
        field[i] = static_cast<uint8_t>(word >> 23);  // the low 8 bits: exponent, sign dropped
      }
      int64_t i = 0;
      for (; i + 8 <= m; i += 8) {
        counts[0][field[i]]++; counts[1][field[i + 1]]++; counts[2][field[i + 2]]++; counts[3][field[i + 3]]++;
        counts[4][field[i + 4]]++; counts[5][field[i + 5]]++; counts[6][field[i + 6]]++; counts[7][field[i + 7]]++;
      }
      for (; i < m; ++i) counts[0][field[i]]++;
    }
    bool nan = false;
    int64_t special = 0;
    for (int j = 0; j < 8; ++j) special += counts[j][255];
    if (special > 0) {
      for (int64_t i = begin; i < end; ++i) nan = nan || (data[i] != data[i]);
    }
    std::lock_guard<std::mutex> guard(lock);
    for (int k = 0; k < 256; ++k) {
      int64_t sum = 0;
      for (int j = 0; j < 8; ++j) sum += counts[j][k];
      total[k] += sum;
    }
    global_min = std::min(global_min, lo);
    global_max = std::max(global_max, hi);
    any_nan = any_nan || nan;
  });
  if (any_nan) {
    global_min = std::numeric_limits<float>::quiet_NaN();
    global_max = std::numeric_limits<float>::quiet_NaN();
  }
  auto range = torch::empty({2}, torch::kFloat32);
  range[0] = global_min;
  range[1] = global_max;
  auto counts = torch::from_blob(total.data(), {256}, torch::kInt64).clone();
  return {range, counts};
}
"""

_CPP_DECLARATION = "std::vector<torch::Tensor> minmax_exponent_counts(torch::Tensor x);"
_MODULE_NAME = "dlqnb_calibration_kernel"
# v3: libraries sealed with a checksum. Earlier builds (v2, unsealed) are left where they are rather
# than taken for damaged ones.
_BUILD_FORMAT = "v3"

_Kernel = Callable[[Tensor], tuple[float, float, Tensor]]
_compiled: _Kernel | None = None
_compile_attempted = False
_compile_lock = threading.Lock()


def torch_minmax_exponent_counts(x: Tensor) -> tuple[float, float, Tensor]:
    """Pure-torch reference: ``(min, max, counts)`` of a tensor; NaN min/max when any NaN."""
    x = x.detach()
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    low, high = torch.aminmax(x)
    return float(low), float(high), exponent_field_counts(x)


def _build_directory() -> Path:
    """Where the kernel is compiled: one folder per build format and torch version."""
    from dlqnb.core.cache import cache_dir

    return cache_dir() / "kernels" / f"{_BUILD_FORMAT}-torch-{torch.__version__}"


def _library_path(build_dir: Path) -> Path:
    from torch.utils.cpp_extension import LIB_EXT

    return build_dir / f"{_MODULE_NAME}{LIB_EXT}"


def _discard_unverified_build(build_dir: Path) -> bool:
    """Remove the build folder when its library is damaged or unsealed (one warning naming it).

    The whole folder goes: ninja takes an existing library, whatever is in it, for up to date as
    long as it is newer than its object file, so only an empty folder is certain to be rebuilt.

    Returns:
        Whether the folder was removed.
    """
    from dlqnb.core.cache import entry_intact

    library = _library_path(build_dir)
    if not library.exists() or entry_intact(library):  # entry_intact warns about, and removes, a bad one
        return False
    shutil.rmtree(build_dir, ignore_errors=True)
    return True


def _build() -> _Kernel:
    # Importing cpp_extension warns about CUDA_HOME on CPU-only machines; this kernel is CPU code.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load_inline

    from dlqnb.core.cache import cache_lock, seal_entry

    build_dir = _build_directory()
    # One builder at a time across processes, so that a process never verifies, or seals, a library
    # another one is writing.
    with cache_lock(f"kernel-{build_dir.name}"):
        _discard_unverified_build(build_dir)
        build_dir.mkdir(parents=True, exist_ok=True)
        module = load_inline(
            name=_MODULE_NAME,
            cpp_sources=[_CPP_DECLARATION, _CPP_SOURCE],
            functions=["minmax_exponent_counts"],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
        # Verified before loading, or just built by ninja: record what is there now.
        seal_entry(_library_path(build_dir))

    def run(x: Tensor) -> tuple[float, float, Tensor]:
        x = x.detach()
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return torch_minmax_exponent_counts(x)
        value_range, counts = module.minmax_exponent_counts(x)
        low, high = value_range.tolist()
        return low, high, counts

    return run


def _compiled_kernel() -> _Kernel | None:
    global _compiled, _compile_attempted
    if os.environ.get("DLQNB_KERNEL", "auto") == "torch":
        return None
    with _compile_lock:
        if not _compile_attempted:
            _compile_attempted = True
            try:
                _compiled = _build()
            except Exception as error:  # no compiler, no ninja, a failed build: fall back, exactly
                _compiled = None
                _warn_build_failed(error)
    return _compiled


def _warn_build_failed(error: Exception) -> None:
    # A compiler's output can run to pages: the warning carries its first line, the log all of it.
    first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    _log.info("dlqnb: the C++ calibration kernel could not be built: %s", error)
    warnings.warn(
        f"dlqnb: the C++ calibration kernel could not be built in {_build_directory()} ({first_line[:300]}); "
        "calibrating with the pure-torch path instead (the same results, slower). "
        "Set DLQNB_KERNEL=torch to choose it without this warning.",
        RuntimeWarning,
        stacklevel=4,
    )


def kernel_name() -> str:
    """Which implementation :func:`minmax_exponent_counts` uses: ``"cpp"`` or ``"torch"``."""
    return "cpp" if _compiled_kernel() is not None else "torch"


def minmax_exponent_counts(x: Tensor) -> tuple[float, float, Tensor]:
    """``(min, max, counts)`` of ``x``: its range and the 256 float32 exponent-field counts.

    Example:
        >>> low, high, counts = minmax_exponent_counts(torch.tensor([1.0, -3.0, 0.0]))
        >>> low, high, int(counts[127]), int(counts[128]), int(counts[0])
        (-3.0, 1.0, 1, 1, 1)
    """
    kernel = _compiled_kernel()
    if kernel is None or x.numel() == 0:
        return torch_minmax_exponent_counts(x)
    return kernel(x)
