"""Backend resolution: explicit argument > PAGCP_BACKEND > auto; errors and the one fallback warning."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from pagcp.errors import BackendUnavailableError, ConfigError
from pagcp.ops import backends, dispatch, extension, filter_saliency


def test_backends_lists_every_backend_with_a_reason():
    table = backends()
    assert set(table) == set(dispatch.BACKENDS)
    for available, reason in table.values():
        assert isinstance(available, bool) and isinstance(reason, str) and reason
    assert table["torch"][0]
    assert table["cpp"][0] == (extension.EXTENSION is not None)


def test_explicit_missing_backend_raises_with_reason(monkeypatch):
    monkeypatch.setattr(extension, "EXTENSION", None)
    monkeypatch.setattr(extension, "LOAD_ERROR", "pagcp._C is not importable (test)")
    with pytest.raises(BackendUnavailableError, match="not importable"):
        dispatch.resolve_backend("cpp", torch.device("cpu"))
    monkeypatch.setenv(dispatch.ENV_VAR, "cpp")
    with pytest.raises(BackendUnavailableError, match=dispatch.ENV_VAR):
        dispatch.resolve_backend(None, torch.device("cpu"))


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises(BackendUnavailableError, match="cuda"):
        dispatch.resolve_backend("cuda", torch.device("cpu"))


def test_unknown_backend_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="not a backend"):
        dispatch.resolve_backend("fortran", torch.device("cpu"))
    monkeypatch.setenv(dispatch.ENV_VAR, "fortran")
    with pytest.raises(ConfigError, match=dispatch.ENV_VAR):
        dispatch.resolve_backend(None, torch.device("cpu"))


def test_argument_beats_environment(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "fortran")
    assert dispatch.resolve_backend("torch", torch.device("cpu")) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.resolve_backend(None, torch.device("cpu")) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "auto")
    expected = "cpp" if extension.EXTENSION is not None else "torch"
    assert dispatch.resolve_backend(None, torch.device("cpu")) == expected


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(extension, "EXTENSION", None)
    monkeypatch.setattr(dispatch, "_warned", False)
    w = torch.randn(3, 2, 1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = filter_saliency([w])
        second = filter_saliency([w])
    assert len([c for c in caught if "pure-PyTorch reference" in str(c.message)]) == 1
    torch.testing.assert_close(first[0], w.abs().sum((1, 2, 3)))
    torch.testing.assert_close(second[0], first[0])


def test_import_never_fails_without_extension(tmp_path):
    # a stub pagcp._C that raises on import must leave pagcp.ops importable and on the reference
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def fake(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    if fromlist and '_C' in fromlist and globals and globals.get('__package__') == 'pagcp.ops':\n"
        "        raise ImportError('simulated missing extension')\n"
        "    return real(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = fake\n"
        "import torch, pagcp, pagcp.ops as ops\n"
        "ok, why = ops.backends()['cpp']\n"
        "assert not ok and 'simulated' in why, why\n"
        "w = torch.ones(2, 3, 1, 1)\n"
        "assert ops.filter_saliency([w], backend='torch')[0].tolist() == [3.0, 3.0]\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
