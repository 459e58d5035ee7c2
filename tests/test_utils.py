import stat

from dalle.utils import UMASK, atomic_write


def test_atomic_write_gives_normal_permissions(tmp_path):
    atomic_write(tmp_path / "a.json", b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    # mkstemp creates 0600; the written file gets what open() would give under the umask.
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind
