"""Python 3.12 behaviour PyHealth 2.1.0 relies on, for the 3.11 interpreter here.

Loaded at interpreter start by pyhealth_shims.pth in the PyHealth venv only
(bench/pyhealth_peer/setup_venv.sh); PyHealth's source is unchanged.

- itertools.batched (new in 3.12): PyHealth's dataset batches patient ids with it.
- functools.cached_property without its lock (as in 3.12): 3.11's version holds
  one RLock per property *class-wide*, so dask-expr's scheduler thread, reading a
  cached property while the main thread holds the same lock on another instance,
  deadlocks PyHealth's `global_event_df` and the dataset build hangs for ever.
"""

from __future__ import annotations

import functools
import itertools
import sys
from types import GenericAlias

_NOT_FOUND = object()


def _batched(iterable, n):
    # 3.12's documented equivalent: tuples of n, the last one shorter.
    if n < 1:
        raise ValueError("n must be at least one")
    iterator = iter(iterable)
    while batch := tuple(itertools.islice(iterator, n)):
        yield batch


class _cached_property:  # noqa: N801 - the stdlib name's spelling
    """Python 3.12's functools.cached_property (no lock)."""

    def __init__(self, func):
        self.func = func
        self.attrname = None
        self.__doc__ = func.__doc__
        self.__module__ = func.__module__

    def __set_name__(self, owner, name):
        if self.attrname is None:
            self.attrname = name
        elif name != self.attrname:
            raise TypeError(
                "Cannot assign the same cached_property to two different names "
                f"({self.attrname!r} and {name!r})."
            )

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        if self.attrname is None:
            raise TypeError("Cannot use cached_property instance without calling __set_name__ on it.")
        try:
            cache = instance.__dict__
        except AttributeError:
            raise TypeError(
                f"No '__dict__' attribute on {type(instance).__name__!r} instance to cache {self.attrname!r} property."
            ) from None
        val = cache.get(self.attrname, _NOT_FOUND)
        if val is _NOT_FOUND:
            val = self.func(instance)
            try:
                cache[self.attrname] = val
            except TypeError:
                raise TypeError(
                    f"The '__dict__' attribute on {type(instance).__name__!r} instance does not support item "
                    f"assignment for caching {self.attrname!r} property."
                ) from None
        return val

    __class_getitem__ = classmethod(GenericAlias)


if sys.version_info < (3, 12):
    itertools.batched = _batched
    functools.cached_property = _cached_property
