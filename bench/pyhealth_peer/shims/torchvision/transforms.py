"""torchvision.transforms stand-in (see torchvision/__init__.py)."""

from torchvision._stub import stub_getattr as __getattr__  # noqa: F401
