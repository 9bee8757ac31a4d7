"""A stateful simulator of the Nano Banana service, for tests and demos (work in progress)."""

__all__: list[str] = []
