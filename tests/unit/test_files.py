"""mlplat.files: a private umask that nests and is shared by threads, a private home, a private new file."""

import os
import stat
import threading

from mlplat.files import private_file, private_home, private_umask


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def current_umask() -> int:
    value = os.umask(0)
    os.umask(value)
    return value


def test_the_umask_is_private_inside_and_as_it_was_after_nesting_and_threads(tmp_path):
    before = os.umask(0o022)
    try:
        with private_umask():
            assert current_umask() == 0o077
            with private_umask():
                (tmp_path / "f").write_text("x")
            assert current_umask() == 0o077  # the inner block left it private for the outer one
        assert current_umask() == 0o022 and mode(tmp_path / "f") == 0o600
        start = threading.Barrier(8)

        def write(i: int) -> None:
            start.wait()
            with private_umask():
                (tmp_path / f"t{i}").write_text("x")

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert current_umask() == 0o022
        assert {mode(tmp_path / f"t{i}") for i in range(8)} == {0o600}
    finally:
        os.umask(before)


def test_a_home_is_made_private_and_an_old_open_one_is_tightened(tmp_path):
    new = tmp_path / "new" / "home"
    private_home(new)
    assert mode(new) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    private_home(old)
    assert mode(old) == 0o700


def test_a_private_file_is_made_0600_and_an_existing_one_is_left_alone(tmp_path):
    private_file(tmp_path / "db" / "registry.db")
    assert mode(tmp_path / "db" / "registry.db") == 0o600 and (tmp_path / "db" / "registry.db").read_bytes() == b""
    kept = tmp_path / "kept.db"
    kept.write_bytes(b"data")
    private_file(kept)
    assert kept.read_bytes() == b"data"
