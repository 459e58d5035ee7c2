import re
import stat

import pytest
import torch

from dalle.utils import UMASK, atomic_write, resolve_device


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

