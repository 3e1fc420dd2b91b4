"""fl-userdp: fine-tuning with user-level differential privacy on Flower.

The core (this package, except `fl_userdp.local`) imports only the standard
library, numpy, scipy and dp_accounting. Torch, transformers, peft and opacus
live in `fl_userdp.local`; Flower lives in `fl_userdp.server` and
`fl_userdp.clients` (the repository's `server/` and `clients/` folders,
installed inside this package's namespace).
"""
__version__ = "0.1.0"

from .api import ModeRun, SimulationResult, simulate  # noqa: E402  (light: heavy imports happen inside)

__all__ = ["ModeRun", "SimulationResult", "simulate", "__version__"]
