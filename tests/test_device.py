"""Precision and thread choices."""

import pytest
import torch

from cptlab.core.config import ConfigError, get_config
from cptlab.speed import device as dev


@pytest.mark.parametrize("native, want", [(True, torch.bfloat16), (False, None)])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native, want):
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: native)
    assert dev.autocast_dtype(torch.device("cpu"), "auto") is want
    assert dev.autocast_dtype(torch.device("cpu"), "fp32") is None
    assert dev.autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16


@pytest.mark.parametrize("capability, want", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), None)])
def test_auto_precision_on_cuda_is_bf16_from_ampere_on(monkeypatch, capability, want):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert dev.autocast_dtype(torch.device("cuda"), "auto") is want
    assert dev.autocast_dtype(torch.device("cuda"), "bf16") is torch.bfloat16


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


def _fake_cgroup(monkeypatch, files: dict):
    import io

    def fake_open(path, *a, **k):
        if path in files:
            return io.StringIO(files[path])
        raise FileNotFoundError(path)

    monkeypatch.setattr(dev, "open", fake_open, raising=False)
    monkeypatch.setattr(dev.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})


@pytest.mark.parametrize(
    "files, want",
    [
        ({"/sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1),  # a 1.5-CPU quota gives 1 thread
        ({"/sys/fs/cgroup/cpu.max": "300000 100000\n"}, 3),
        ({"/sys/fs/cgroup/cpu.max": "max 100000\n"}, 4),  # no quota: the affinity mask
        (
            {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "200000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"},
            2,
        ),  # cgroup v1
        ({}, 4),
    ],
)
def test_threads_follow_the_cgroup_quota_and_the_affinity_mask(monkeypatch, files, want):
    _fake_cgroup(monkeypatch, files)
    before = torch.get_num_threads()
    monkeypatch.delenv("CPTLAB_THREADS", raising=False)
    try:
        assert dev.available_cpus() == want
        assert dev.setup_threads() == want == torch.get_num_threads()
        monkeypatch.setenv("CPTLAB_THREADS", "1")
        assert dev.setup_threads() == 1
    finally:
        torch.set_num_threads(before)


_FAULTS = """
import resource, sys, torch
from cptlab.speed import device
if sys.argv[1] == "keep":
    assert device.keep_freed_memory()
else:  # glibc's floor: every block over 128 KiB mapped and unmapped
    assert device.keep_freed_memory(mib=1 / 8)
def step():  # blocks the size of a step's activations and logits, written and freed
    xs = [torch.empty(n << 20, dtype=torch.uint8).fill_(1) for n in (3, 5, 7, 2)]
    del xs
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow  # a second process or a compiler: seconds, not the quick suite's
@pytest.mark.skipif(dev.glibc() is None, reason="glibc only")
def test_freed_memory_is_reused_not_faulted_in_again():
    """Twenty steps of 17 MiB of blocks: mapped afresh, every page faults in again (about 87,000);
    kept by keep_freed_memory, most pages are reused."""
    import subprocess
    import sys

    faults = {
        how: int(
            subprocess.run([sys.executable, "-c", _FAULTS, how], capture_output=True, text=True, check=True).stdout
        )
        for how in ("mapped", "keep")
    }
    assert faults["mapped"] > 20 * 17 * 256 * 0.9
    assert faults["keep"] < faults["mapped"] / 4
