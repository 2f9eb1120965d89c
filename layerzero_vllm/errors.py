"""The plugin's error type, in a module of its own so every plugin module can raise it without cycles."""

from __future__ import annotations

from layerzero.errors import LayerZeroError


class PluginConfigError(LayerZeroError, ValueError):
    """The plugin's configuration (policy file, rules file, environment switches) is invalid, or leaves an
    operation the served model uses with no kernel that can run it. The message names the variable, the
    file, the field and the fix."""
