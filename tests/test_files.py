"""write_atomically: the whole new text or the old file, never a half, and the mode asked."""

from __future__ import annotations

import stat

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

