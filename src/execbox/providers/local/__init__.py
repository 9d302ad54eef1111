from execbox.providers.local.provider import LocalInstance, LocalProvider, LocalSettings

__all__ = ["LocalInstance", "LocalProvider", "LocalSettings"]
