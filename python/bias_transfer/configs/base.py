"""The config base class and the `Description` key of recipe dicts."""

from __future__ import annotations

import difflib
import warnings
from collections import namedtuple
from typing import Any, ClassVar

Description = namedtuple("Description", ["name", "seed"])
Description.__doc__ = "Key of a recipe's `experiments` and `transfer_experiments` dicts."


class UnknownOptionWarning(UserWarning):
    """A config got a keyword it does not know; it is kept and enters the hash."""


class BaseConfig:
    """A config: known options with defaults, plus any unknown keywords, kept as given.

    `comment=` and the older `description=` are both accepted; the comment is part of the
    config and so of its hash. A missing attribute reads as `None`, as in the original.
    """

    fn: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # Known options without a default: stored (and hashed) only when given, so configs
    # that leave them out keep their hashes.
    optional: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **kwargs: Any) -> None:
        comment = kwargs.pop("comment", None)
        description = kwargs.pop("description", None)
        if comment is not None and description is not None and comment != description:
            raise ValueError(
                f"{type(self).__name__}: `comment` and `description` differ "
                f"({comment!r} vs {description!r}); give one of them"
            )
        self.comment = comment if comment is not None else (description or "")
        options = dict(self.defaults)
        for key, value in kwargs.items():
            if key not in self.defaults and key not in self.optional:
                self._warn_unknown(key)
            options[key] = value
        options.update(self.derived(options, kwargs))
        self.__dict__.update(options)
        self._option_names = list(options)

    @classmethod
    def derived(cls, options: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        """Options computed from others unless given explicitly."""
        return {}

    def _warn_unknown(self, key: str) -> None:
        known = [*self.defaults, *self.optional, "comment", "description"]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        warnings.warn(
            f"{type(self).__name__}: unknown option `{key}` is kept and enters the hash{hint}",
            UnknownOptionWarning,
            stacklevel=4,
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def to_dict(self) -> dict[str, Any]:
        """The config's options and comment, as stored and hashed."""
        out = {name: self.__dict__[name] for name in self._option_names}
        out["comment"] = self.comment
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({args})"
