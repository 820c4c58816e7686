import subprocess
import sys


def test_public_api_resolves_and_import_is_light():
    code = ("import sys, tfattr\n"
            "assert 'tensorflow' not in sys.modules, 'import tfattr must not load TensorFlow'\n"
            "assert len(tfattr.ATTRIBUTE_NAMES) == 40\n"
            "for name in tfattr.__all__:\n"
            "    assert getattr(tfattr, name) is not None, name\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
