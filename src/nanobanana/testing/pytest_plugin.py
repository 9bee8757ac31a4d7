"""Pytest plugin for the Nano Banana simulator (fixtures land with the simulator)."""

__all__: list[str] = []
