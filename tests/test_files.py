"""write_atomically: the whole new text or the old file, never a half, and the mode asked."""

from __future__ import annotations

import stat
import subprocess
import sys

from lthn.files import write_atomically


def test_replaces_whole_with_the_mode_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "haproxy.cfg"
    path.write_text("old\n")
    write_atomically(path, "new\n", mode=0o600)
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomically(path, "newer\n", mode=0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["haproxy.cfg"]


def test_a_reader_holding_the_old_file_keeps_reading_it(tmp_path):
    path = tmp_path / "authids.map"
    path.write_text("1A00000000000001 1A\n")
    with path.open() as reader:
        write_atomically(path, "1A00000000000002 1A\n")
        assert reader.read() == "1A00000000000001 1A\n"   # renamed over, not rewritten
    assert path.read_text() == "1A00000000000002 1A\n"



def test_two_processes_writing_the_same_file_at_once_both_succeed(tmp_path):
    """lthn-haproxy and firewalld both write the run files at a start: with one shared
    temporary name, one renamed the other's away mid-write (ENOENT, haproxy not started;
    seen in CI). Each writer now has its own."""
    path = tmp_path / "ban_exempt.acl"
    texts = [f"127.0.0.{n}\n" * 200 for n in range(1, 5)]
    script = ("import sys; from pathlib import Path; from lthn.files import write_atomically\n"
              "for _ in range(300): write_atomically(Path(sys.argv[1]), sys.argv[2])\n")
    writers = [subprocess.Popen([sys.executable, "-c", script, str(path), text],
                                stderr=subprocess.PIPE, text=True) for text in texts]
    errors = [w.communicate(timeout=60)[1] for w in writers]
    assert [w.returncode for w in writers] == [0] * len(writers), errors
    assert path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["ban_exempt.acl"]
