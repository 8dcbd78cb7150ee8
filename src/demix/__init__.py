"""demix: find the data mixture for LLM pretraining by merging component models (DeMix).

``import demix`` is light: it loads no torch, transformers or LightGBM. Import the module you
need (``demix.merging``, ``demix.evaluation``, ``demix.search``, ...) to get its heavy parts.
"""

from demix.config import RunConfig, load_config
from demix.errors import DemixError

__version__ = "0.2.0"

__all__ = ["DemixError", "RunConfig", "load_config", "__version__"]
