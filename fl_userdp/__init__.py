"""fl-userdp: fine-tuning with user-level differential privacy on Flower.

The core (this package, except `fl_userdp.local`) imports only the standard
library, numpy, scipy and dp_accounting. Torch, transformers, peft and opacus
live in `fl_userdp.local`; Flower lives in `fl_userdp.server` and
`fl_userdp.clients` (the repository's `server/` and `clients/` folders,
installed inside this package's namespace).
"""
__version__ = "0.1.0"

# In a source tree that is not what the installer mapped (a copy such as mutation testing's mutants/, or a
# checkout used without installing), `server/` and `clients/` sit beside this package: let them be its
# subpackages `fl_userdp.server` / `fl_userdp.clients` there too. Installed, they live inside the package
# (fl_userdp/server/...) and this does nothing.
def _source_tree_subpackages() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if (root / "server" / "strategy.py").is_file() and (root / "clients" / "compute.py").is_file() \
            and not (Path(__file__).resolve().parent / "server").exists():
        __path__.append(str(root))  # noqa: F821 - the package's own __path__


_source_tree_subpackages()

from .api import ModeRun, SimulationResult, simulate  # noqa: E402  (light: heavy imports happen inside)

__all__ = ["ModeRun", "SimulationResult", "simulate", "__version__"]
