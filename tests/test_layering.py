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
import fl_userdp, fl_userdp.accounting, fl_userdp.config, fl_userdp.mechanism.sampling, fl_userdp.mechanism.clipping
import fl_userdp.mechanism.noise, fl_userdp.mechanism.aggregate, fl_userdp.mechanism.validation, fl_userdp.rng, fl_userdp.cli
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


def test_every_deferred_import_in_the_package_resolves():
    """Imports inside functions run only when their command does: each must name a real module and names."""
    import ast
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    checked = 0
    for pkg in ("fl_userdp", "server", "clients"):
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[0] != "fl_userdp":  # server/ and clients/ install as fl_userdp.server, fl_userdp.clients
                parts = ["fl_userdp", *parts]
            package = ".".join(parts[:-1])  # a module's package; for __init__.py, the package itself
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom) or node.level == 0:
                    continue
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
                mod = importlib.import_module(name)
                for alias in node.names:
                    assert hasattr(mod, alias.name) or importlib.util.find_spec(f"{name}.{alias.name}"), \
                        f"{path.relative_to(root)}:{node.lineno}: {name} has no {alias.name}"
                checked += 1
    assert checked > 100
