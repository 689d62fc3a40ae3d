"""Precision and thread choices."""
import pytest
import torch

from cptlab import device as dev
from cptlab.config import ConfigError, get_config


@pytest.mark.parametrize("native, want", [(True, torch.bfloat16), (False, None)])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native, want):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: native)
    assert dev.autocast_dtype(torch.device("cpu"), "auto") is want
    assert dev.autocast_dtype(torch.device("cpu"), "fp32") is None
    assert dev.autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16


def test_auto_precision_on_cuda_is_bf16():
    assert dev.autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16


def test_native_bf16_is_read_from_cpu_flags(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *a, **k):
        return real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert dev.cpu_has_native_bf16() is False
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert dev.cpu_has_native_bf16() is True


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"):
        get_config("tiny", precision="fp16")
    with pytest.raises(ValueError, match="precision must be"):
        dev.autocast_dtype(torch.device("cpu"), "half")


def test_threads_never_exceed_the_cpus_available():
    assert dev.available_cpus() >= 1
    assert dev.setup_threads() == dev.available_cpus() == torch.get_num_threads()
