"""Web tools for research agents: search, browse with a reading agent, safe and cached.

Names are imported on first use, so `dr_jax.tools.calls` or the extraction workers do not pay
for httpx, trafilatura and the executor when they need none of them.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dr_jax.tools.config import ToolsConfig
    from dr_jax.tools.errors import ToolError, ToolsSetupError
    from dr_jax.tools.executor import ToolExecutor
    from dr_jax.tools.session import ToolSession

_HOMES = {
    "ToolError": "dr_jax.tools.errors",
    "ToolExecutor": "dr_jax.tools.executor",
    "ToolSession": "dr_jax.tools.session",
    "ToolsConfig": "dr_jax.tools.config",
    "ToolsSetupError": "dr_jax.tools.errors",
}
__all__ = ["ToolError", "ToolExecutor", "ToolSession", "ToolsConfig", "ToolsSetupError"]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'dr_jax.tools' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
