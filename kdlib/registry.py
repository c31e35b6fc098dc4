"""Name -> object registries, so params YAML can say ``model: resnet18_w16`` or ``name: kd``."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from kdlib.errors import KdlibError

T = TypeVar("T")


class Registry(Generic[T]):
    """A small mapping from names to builders, with a one-line error listing valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KdlibError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MODELS: Registry[Callable] = Registry("model")
LOSSES: Registry[Callable] = Registry("loss")
METRICS: Registry[Callable] = Registry("metric")
