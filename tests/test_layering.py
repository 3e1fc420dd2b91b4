"""The core imports without torch or flwr: a subprocess with both blocked."""
import subprocess
import sys

CODE = r"""
import importlib.abc, sys
BLOCKED = ("torch", "flwr", "transformers", "peft", "opacus", "ray")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
import fl_userdp, fl_userdp.accounting, fl_userdp.config, fl_userdp.sampling, fl_userdp.clipping
import fl_userdp.noise, fl_userdp.aggregate, fl_userdp.validation, fl_userdp.rng, fl_userdp.cli
from fl_userdp.cli import main
assert main(["epsilon", "--mode", "uls", "--sampling-rate", "0.1", "--noise-multiplier", "1",
             "--steps", "3", "--delta", "1e-5"]) == 0
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules)
print("PURE-OK")
"""


def test_core_imports_without_torch_and_flwr():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "PURE-OK" in out.stdout
