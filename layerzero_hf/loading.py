"""Former name of :mod:`layerzero_hf.model_orchestrators`, kept so existing imports keep working."""

from __future__ import annotations

from layerzero_hf.model_orchestrators import (  # noqa: F401 - re-exported
    ARM_ATTR,
    ORCHESTRATOR_ATTR,
    SITE_ATTR,
    ModelSetup,
    Owner,
    bind_config,
    build_setup,
    call_site_for,
    lazy_setup,
    orchestrator_for,
    release,
    setup_for_config,
    unbind_config,
)
