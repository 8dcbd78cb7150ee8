"""Merging: the component set, merge methods, the in-memory proxy builder, merged checkpoints.

```python
from demix.merging import ComponentSet, ProxyBuilder
components = ComponentSet.load(base_dir, {"general": dir_g, "math": dir_m}, device="cpu")
builder = ProxyBuilder(components, method="linear")
model = builder.build({"general": 0.7, "math": 0.3})   # the proxy, written in place
```

What a checkpoint directory holds, whether two merge, and their hashes are
:mod:`demix.checkpoints`'s (torch-free); this subpackage imports torch; ``import demix`` does not.
"""

from demix.merging.builder import ProxyBuilder, run_checkpoints
from demix.merging.checkpoint import Checkpoint
from demix.merging.components import ComponentSet
from demix.merging.kernel import linear_combine
from demix.merging.mergekit import MergeSpec, read_mergekit_config, run_mergekit, to_mergekit_config, write_mergekit_config
from demix.merging.methods import METHODS, MergeMethod, get_method, mixture_methods, register
from demix.merging.write import write_merged

__all__ = [
    "METHODS",
    "Checkpoint",
    "ComponentSet",
    "MergeMethod",
    "MergeSpec",
    "ProxyBuilder",
    "get_method",
    "linear_combine",
    "mixture_methods",
    "read_mergekit_config",
    "register",
    "run_checkpoints",
    "run_mergekit",
    "to_mergekit_config",
    "write_merged",
    "write_mergekit_config",
]
