"""Web tools for research agents: search, browse with a reading agent, safe and cached."""

from dr_jax.tools.config import ToolsConfig
from dr_jax.tools.errors import ToolError, ToolsSetupError
from dr_jax.tools.executor import ToolExecutor
from dr_jax.tools.session import ToolSession

__all__ = ["ToolError", "ToolExecutor", "ToolSession", "ToolsConfig", "ToolsSetupError"]
