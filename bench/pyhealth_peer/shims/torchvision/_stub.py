"""Names that import fine and raise when used (see torchvision/__init__.py)."""


class _Unavailable:
    def __init__(self, name: str):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise ImportError(f"torchvision.{self._name}: the PyHealth peer's venv has no real torchvision")

    def __getattr__(self, attr: str):
        return _Unavailable(f"{self._name}.{attr}")

    def __mro_entries__(self, bases):
        # `class X(transforms.Something)` at import time gets a plain base.
        return (object,)


def stub_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable(name)
