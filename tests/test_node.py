"""lthn-node's pure parts: the variables supervisord.conf reads, supervisorctl arguments
and status parsing. (Running the node for real: tests/e2e/test_issue_2_foundation.py.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lthn import config as config_mod
from lthn.node import programs
from lthn.node import supervision as node

STATUS = """\
authd:authd_0                    RUNNING   pid 4711, uptime 0:00:05
authd:authd_1                    STARTING
busd                             RUNNING   pid 4700, uptime 0:00:06
haproxy                          BACKOFF   Exited too quickly (process log may have details)
paymentd                         FATAL     can't find command 'lthn-paymentd'
squid                            STOPPED   Not started
unix:///tmp/x/run/supervisor.sock no such file
"""


def test_parse_status():
    assert node.parse_status(STATUS) == {
        "authd:authd_0": "RUNNING", "authd:authd_1": "STARTING", "busd": "RUNNING",
        "haproxy": "BACKOFF", "paymentd": "FATAL", "squid": "STOPPED"}


def test_process_names():
    assert node.process_names(("busd", "authd", "haproxy"), authd_procs=2) == \
        ["busd", "authd:authd_0", "authd:authd_1", "haproxy"]


def test_ctl_arguments_name_the_authd_group():
    assert node.ctl_arguments(["stop", "authd", "busd"]) == ["stop", "authd:*", "busd"]
    assert node.ctl_arguments(["restart", "authd:authd_1"]) == ["restart", "authd:authd_1"]
    assert node.ctl_arguments(["tail", "-f", "authd"]) == ["tail", "-f", "authd:authd_0"]
    assert node.ctl_arguments(["status"]) == ["status"]
    assert node.ctl_arguments([]) == []


def test_environment_sets_every_variable_supervisord_conf_reads(tmp_path):
    config = config_mod.parse({"provider": {"id": "ab" * 32}, "state_dir": str(tmp_path)},
                              "t.yaml")
    env = node.environment(config, "node.yaml", without=("paymentd",),
                           base={"PATH": "/usr/bin", "LTHN_START_SQUID": "false"})
    assert env["LTHN_CONFIG"] == str(Path("node.yaml").absolute())
    assert env["LTHN_STATE_DIR"] == str(tmp_path)
    assert env["LTHN_AUTHD_PROCS"] == "1"
    assert env["LTHN_START_PAYMENTD"] == "false"
    assert env["LTHN_START_SQUID"] == "false"          # the operator's choice is kept
    assert env["LTHN_START_BUSD"] == "true"
    assert env["PATH"] == str(Path(sys.executable).parent) + os.pathsep + "/usr/bin"
    assert env["LTHN_MODE_FILES"] == ""                 # no VPN mode: no VPN programs
    conf = node.supervisord_conf()
    text = conf.read_text() + "".join((conf.parent / f).read_text()
                                      for f in programs.MODE_FILES.values())
    for name in ("LTHN_CONFIG", "LTHN_STATE_DIR", "LTHN_AUTHD_PROCS", "LTHN_MODE_FILES",
                 *(f"LTHN_START_{p.upper()}" for p in programs.NAMES)):
        assert f"%(ENV_{name})s" in text
        assert name in env
    assert node.check_environment(env) is None


def test_check_environment_names_the_bad_variable():
    assert node.check_environment({"LTHN_AUTHD_PROCS": "0"}) == \
        'LTHN_AUTHD_PROCS: must be a whole number from 1 to 64 (got "0")'
    assert node.check_environment({"LTHN_START_BUSD": "yes"}) == \
        'LTHN_START_BUSD: must be true or false (got "yes")'


def test_supervisord_conf_override(tmp_path, monkeypatch):
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\n")
    monkeypatch.setenv("LTHN_SUPERVISORD_CONF", str(conf))
    assert node.supervisord_conf() == conf
    monkeypatch.delenv("LTHN_SUPERVISORD_CONF")
    assert node.supervisord_conf() == Path(node.__file__).resolve().parents[2] / \
        "supervisord.conf"


def test_supervisord_conf_is_rendered_from_the_program_table():
    """One table of programs (lthn/node/programs.py); the checked-in file is its rendering."""
    conf = Path(node.__file__).resolve().parents[2] / "supervisord.conf"
    assert conf.read_text() == programs.render_supervisord_conf(), \
        "supervisord.conf is stale: run `python -m lthn.node.programs > supervisord.conf`"
    for mode, name in programs.MODE_FILES.items():
        assert (conf.parent / name).read_text() == programs.render_supervisord_conf(mode), \
            f"{name} is stale: run `python -m lthn.node.programs {mode} > {name}`"


def test_every_program_has_its_console_script():
    import importlib
    import shutil
    for program in programs.PROGRAMS:
        assert callable(importlib.import_module(program.module).main), program.module
        assert Path(node.tool(program.script)).is_file() or shutil.which(program.script), \
            program.script
