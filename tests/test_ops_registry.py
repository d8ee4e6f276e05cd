"""The (op, backend) table and backend resolution: explicit argument > PAGCP_BACKEND > auto; errors and the
one fallback warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from ops_helpers import run_without_extension

from pagcp.errors import BackendUnavailableError, ConfigError
from pagcp.ops import (
    backends,
    bn_act,
    channel_activation_stats,
    extension,
    filter_saliency,
    library,
    masked_bn_act,
    masked_bn_act_rows,
    reference,
    registry,
)


def test_table_covers_every_op_and_backend():
    assert set(registry.IMPLEMENTATIONS) == {(op, name) for op in registry.OPS for name in registry.BACKENDS}
    assert all(callable(impl) for impl in registry.IMPLEMENTATIONS.values())


def test_every_public_op_calls_through_the_table(monkeypatch):
    calls = []
    for key, impl in list(registry.IMPLEMENTATIONS.items()):

        def spy(*args, key=key, impl=impl):
            calls.append(key)
            return impl(*args)

        monkeypatch.setitem(registry.IMPLEMENTATIONS, key, spy)
    x, keep = torch.randn(2, 3, 4, 4), torch.ones(2, 3)
    filter_saliency([torch.randn(3, 2, 1, 1)], backend="torch")
    masked_bn_act(x, torch.ones(3), torch.zeros(3), keep, backend="torch")
    masked_bn_act_rows(x, torch.ones(3), torch.zeros(3), keep, backend="torch")
    channel_activation_stats(x, backend="torch")
    assert calls == [
        ("filter_saliency", "torch"),
        ("masked_bn_act", "torch"),
        ("masked_bn_act", "torch"),
        ("channel_activation_stats", "torch"),
    ]


def test_resolution_returns_a_table_backend(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    for name in registry.BACKENDS:
        if registry.availability(name, torch.device("cpu"))[0]:
            assert registry.resolve_backend(name, torch.device("cpu")) == name
    assert ("masked_bn_act", registry.resolve_backend(None, torch.device("cpu"))) in registry.IMPLEMENTATIONS


def test_activations_are_one_table_passed_by_name():
    assert bn_act.ACTIVATIONS is reference.ACTIVATIONS  # the wrapper validates against the one table
    for op in ("masked_bn_act", "masked_bn_act_out"):
        assert "str act" in library.SCHEMAS[op]  # and the kernels receive the name
    x = torch.randn(1, 2, 3, 3)
    for act, fn in reference.ACTIVATIONS.items():
        torch.testing.assert_close(reference.activation(x, act), fn(x))


def test_backends_lists_every_backend_with_a_reason():
    table = backends()
    assert set(table) == set(registry.BACKENDS)
    for available, reason in table.values():
        assert isinstance(available, bool) and isinstance(reason, str) and reason
    assert table["torch"][0]
    assert table["cpp"][0] == (extension.EXTENSION is not None)


def test_explicit_missing_backend_raises_with_reason(monkeypatch):
    monkeypatch.setattr(extension, "EXTENSION", None)
    monkeypatch.setattr(extension, "LOAD_ERROR", "pagcp._C is not importable (test)")
    with pytest.raises(BackendUnavailableError, match="not importable"):
        registry.resolve_backend("cpp", torch.device("cpu"))
    monkeypatch.setenv(registry.ENV_VAR, "cpp")
    with pytest.raises(BackendUnavailableError, match=registry.ENV_VAR):
        registry.resolve_backend(None, torch.device("cpu"))


def test_cuda_backend_refuses_cpu_tensors():
    with pytest.raises(BackendUnavailableError, match="cuda"):
        registry.resolve_backend("cuda", torch.device("cpu"))


def test_unknown_backend_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="not a backend"):
        registry.resolve_backend("fortran", torch.device("cpu"))
    monkeypatch.setenv(registry.ENV_VAR, "fortran")
    with pytest.raises(ConfigError, match=registry.ENV_VAR):
        registry.resolve_backend(None, torch.device("cpu"))


def test_argument_beats_environment(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "fortran")
    assert registry.resolve_backend("torch", torch.device("cpu")) == "torch"
    monkeypatch.setenv(registry.ENV_VAR, "torch")
    assert registry.resolve_backend(None, torch.device("cpu")) == "torch"
    monkeypatch.setenv(registry.ENV_VAR, "auto")
    expected = "cpp" if extension.EXTENSION is not None else "torch"
    assert registry.resolve_backend(None, torch.device("cpu")) == expected


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    monkeypatch.setattr(extension, "EXTENSION", None)
    monkeypatch.setattr(registry, "_warned", False)
    w = torch.randn(3, 2, 1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = filter_saliency([w])
        second = filter_saliency([w])
    assert len([c for c in caught if "pure-PyTorch reference" in str(c.message)]) == 1
    torch.testing.assert_close(first[0], w.abs().sum((1, 2, 3)))
    torch.testing.assert_close(second[0], first[0])


def test_import_never_fails_without_extension():
    # a stub pagcp._C that raises on import must leave pagcp.ops importable and on the reference
    code = (
        "import torch, pagcp, pagcp.ops as ops\n"
        "ok, why = ops.backends()['cpp']\n"
        "assert not ok and 'simulated' in why, why\n"
        "w = torch.ones(2, 3, 1, 1)\n"
        "assert ops.filter_saliency([w], backend='torch')[0].tolist() == [3.0, 3.0]\n"
        "print('ok')\n"
    )
    result = run_without_extension(code, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
