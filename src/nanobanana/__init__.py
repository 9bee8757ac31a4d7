"""nanobanana: the asyncio-native client for the Nano Banana image-generation API."""

from nanobanana._version import __version__

__all__ = ["__version__"]
