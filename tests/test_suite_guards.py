"""The test suite's own guard: a hung test fails with its stack instead of holding CI until CI's own limit."""

import subprocess
import sys


def test_a_hung_test_fails_with_a_timeout(pytestconfig, tmp_path):
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 900
    (tmp_path / "test_hang.py").write_text("import time\n\n\ndef test_hang():\n    time.sleep(60)\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=2",
                           "test_hang.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout and "time.sleep(60)" in done.stdout
