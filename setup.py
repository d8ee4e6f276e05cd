"""Build and install pagcp.

Build switches (environment variables):

| variable | default | effect |
|---|---|---|
| PAGCP_SKIP_EXT=1 | off | build no C++/CUDA extension at all (pure Python + Triton install) |
| PAGCP_SKIP_CUDA_BUILD=1 | off | build only the CPU (OpenMP) part of pagcp._C |
| PAGCP_CUDA_ARCHS | "9.0" | CUDA architectures, e.g. "8.0;9.0+PTX" (beats TORCH_CUDA_ARCH_LIST) |
| MAX_JOBS | cores | parallel compile jobs (ninja) |

The CUDA part is built only when torch is a CUDA build and a CUDA toolkit (nvcc) is found.
The Triton kernels in ``kernels/`` install as ``pagcp.kernels``.
"""

from __future__ import annotations

import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_archs() -> str:
    """CUDA architectures for nvcc: PAGCP_CUDA_ARCHS, else an explicit TORCH_CUDA_ARCH_LIST, else 9.0."""
    return os.environ.get("PAGCP_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0"


def _cuda_library_dirs(cuda_home: str) -> list[str]:
    """Folders holding libcudart.so: CUDA_HOME may be /usr/local with the toolkit under cuda-X.Y/."""
    nvcc = shutil.which("nvcc") or os.path.join(cuda_home, "bin", "nvcc")
    roots = [cuda_home, os.path.join(cuda_home, "cuda"), os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    found = []
    for root in roots:
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
            folder = os.path.join(root, sub)
            if os.path.exists(os.path.join(folder, "libcudart.so")) and folder not in found:
                found.append(folder)
    return found


def _extensions():
    """The pagcp._C extension (CPU always, CUDA when possible) and its build command, or nothing."""
    if os.environ.get("PAGCP_SKIP_EXT") == "1":
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # torch absent: install the pure-Python package
        return [], {}
    cuda = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    with_cuda = (
        bool(cuda)
        and os.environ.get("PAGCP_SKIP_CUDA_BUILD") != "1"
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
    )
    cxx = ["-O3", "-fopenmp", "-std=c++20", "-fno-trapping-math", "-fno-math-errno"]
    depends = sorted(glob.glob(os.path.join("csrc", "*.h")))
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_archs()
        ext = cpp_extension.CUDAExtension(
            "pagcp._C",
            cpp + cuda,
            depends=depends,
            library_dirs=_cuda_library_dirs(cpp_extension.CUDA_HOME),
            define_macros=[("PAGCP_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "pagcp._C", cpp, depends=depends, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
        )
    return [ext], {"build_ext": _persistent_build(cpp_extension.BuildExtension).with_options(use_ninja=True)}


def _persistent_build(base):
    """build_ext whose object files live in ``build/`` in the checkout, not in pip's throw-away temp folder:
    ninja then recompiles only what changed, so installing again (the README's second command after the
    first) only relinks."""

    class PersistentBuild(base):
        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", "objects")

    return PersistentBuild


ext_modules, cmdclass = _extensions()
# python -m pagcp.export and pagcp.deploy (torch's TorchScript ONNX exporter: no onnxscript needed;
# opset 20, torch's default there, needs onnx >= 1.15 and onnxruntime >= 1.17)
EXPORT_REQUIRES = ["onnx>=1.15", "onnxruntime>=1.17"]

setup(
    name="pagcp",
    version="0.1.0",
    description="Compiled-kernel accelerated performance-aware global channel pruning (PAGCP) for CNNs",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pagcp", "pagcp.*"]) + ["pagcp.kernels"],
    package_dir={"pagcp.kernels": "kernels"},
    package_data={"pagcp": ["models/configs/*.yaml", "models/weights/*.pt", "models/weights/*.pt.xz", "data/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "numpy",
        "pyyaml",
        "tqdm",
        "pillow",
        "matplotlib",
        "pycocotools",
    ],
    extras_require={
        # the quick start: the demo set's source images, and ONNX Runtime for the latency its report lists
        "demo": ["scikit-image", "scikit-learn", *EXPORT_REQUIRES],
        "export": EXPORT_REQUIRES,
        "test": [
            "pytest",
            "pytest-benchmark",
            "pytest-xdist",
            "scikit-image",
            "scikit-learn",
            "ruff",
            "ultralytics>=8.4",
            *EXPORT_REQUIRES,
        ],
        # the quality benchmark's tp-global baseline (benchmarks/bench_quality.py)
        "bench": ["torch-pruning>=1.6", *EXPORT_REQUIRES],
        "triton": ["triton>=3.6"],
        "ultralytics": ["ultralytics>=8.4"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
