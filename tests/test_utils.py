import os
import re
import stat

import pytest
import torch

from dalle.utils import UMASK, atomic_write, fast_bf16, resolve_device


def test_atomic_write_gives_normal_permissions(tmp_path):
    atomic_write(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    # mkstemp creates 0600; the written file gets what open() would give under the umask.
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


@pytest.mark.parametrize("name, needle", [
    ("nonsense", "unknown device 'nonsense'; use auto, cpu, cuda or cuda:N"),
    ("cuda:99", "'cuda:99'")])
def test_resolve_device_names_a_bad_device(name, needle):
    if name.startswith("cuda") and not torch.cuda.is_available():
        needle = "needs CUDA"
    with pytest.raises(ValueError, match=re.escape(needle)):
        resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")



def test_a_busy_cpu_gets_fewer_threads_to_sample_with_and_a_warning(monkeypatch):
    import torch

    import dalle.threads as threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(threads, "busy_cores", lambda: 1.1)
        with pytest.warns(UserWarning, match="about 1.1 of its .* cores busy, so this uses 3 threads"):
            assert threads.use_threads(None, adapt=True) == 3
        assert torch.get_num_threads() == 3
        torch.set_num_threads(4)
        # Training keeps its count (its arithmetic depends on it) and says what would help.
        with pytest.warns(UserWarning, match="--threads 3 avoids that"):
            assert threads.use_threads(None, adapt=False) == 4
        monkeypatch.setattr(threads, "busy_cores", lambda: 0.2)
        assert threads.use_threads(None, adapt=True) == 4  # idle: torch's count, no warning
        assert threads.use_threads(2, adapt=True) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setattr(threads, "busy_cores", lambda: 3.0)
        assert threads.use_threads(None, adapt=True) == 2  # the user's OMP_NUM_THREADS stands
    finally:
        torch.set_num_threads(before)


def test_busy_cores_reads_the_machines_load():
    from dalle.threads import busy_cores

    busy = busy_cores(0.05)
    assert busy is None or 0 <= busy <= os.cpu_count()


def test_fast_bf16_follows_the_devices_kernels(monkeypatch):
    assert fast_bf16("cpu") is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert fast_bf16("cpu") is False
