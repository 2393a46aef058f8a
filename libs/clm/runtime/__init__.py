"""The runtime every CLM service shares: settings, NATS app, health, metrics, logs."""

from clm.runtime.app import ServiceApp
from clm.runtime.logs import configure_logging
from clm.runtime.settings import ServiceSettings, SettingsError, load_settings

__all__ = ["ServiceApp", "ServiceSettings", "SettingsError", "configure_logging", "load_settings"]
