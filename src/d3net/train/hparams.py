"""Hyper-parameters of a training run: dataclass fields declared with :func:`option`, from
which ``d3net train`` builds its options; checkpoints store them and a resumed run merges them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from ..errors import D3NetError
from ..nn import DEFAULT_RECOMPUTE, RECOMPUTE_MODES

AMP_HELP = ("mixed precision: bfloat16 where the device has it natively (recent GPUs, CPUs "
            "with AVX-512 BF16 or AMX), float16 with gradient scaling on older GPUs")


def option(default: Any, help: str, *, resumable: bool = False, flag: Optional[str] = None,
           metavar: Optional[str] = None, choices: Optional[Sequence[str]] = None,
           parse: Optional[Callable[[str, str], Any]] = None, shown: Optional[str] = None,
           const: Any = None) -> Any:
    """A hyper-parameter field.

    Args:
        default: the recipe's value.
        help: what it is, one line (the command line adds the default).
        resumable: may differ when a run is resumed (the length of the run, intervals).
        flag, metavar, choices, const: of the option (default flag ``--field-name``;
            ``const``: the value of the option given alone).
        parse: ``(text, flag) -> value`` for a value that is not a plain number, string or
            switch; raises :class:`D3NetError` naming the flag.
        shown: the default as help texts print it (default: derived from ``default``).
    """
    metadata = {"help": help, "resumable": resumable, "flag": flag, "metavar": metavar,
                "choices": tuple(choices) if choices else None, "parse": parse,
                "shown": shown, "const": const}
    return dataclasses.field(default=default, metadata=metadata)


def shown_default(field: dataclasses.Field) -> str:
    """A field's default as help texts print it."""
    if field.metadata.get("shown"):
        return field.metadata["shown"]
    value = field.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def _numbers(text: str, flag: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise D3NetError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def parse_int_list(text: str, flag: str) -> Tuple[int, ...]:
    """``"40,80"`` -> ``(40, 80)``."""
    return tuple(int(v) for v in _numbers(text, flag))


def parse_range(text: str, flag: str) -> Tuple[float, float]:
    """``"LOW,HIGH"`` -> ``(low, high)``; ``"none"`` -> ``(1.0, 1.0)``, a constant factor of
    one: the augmentation it draws is off."""
    if text.strip().lower() == "none":
        return (1.0, 1.0)
    values = _numbers(text, flag)
    if len(values) != 2:
        raise D3NetError(f"{flag} must be LOW,HIGH or none, got {text!r}")
    return values  # type: ignore[return-value]


@dataclasses.dataclass
class HyperParams:
    """Base of the recipes' hyper-parameter dataclasses: the fields both share, validation,
    the dict round trip and the resume merge."""

    recompute: str = option(
        "none", f"memory-efficient training, as the official --recompute: the backward pass "
                f"computes the dense blocks' insides again instead of keeping them "
                f"(unit: BatchNorm, ReLU, concatenations; d2/d3: whole D2/D3 blocks; same "
                f"gradients; the option alone means {DEFAULT_RECOMPUTE})",
        resumable=True, choices=RECOMPUTE_MODES, const=DEFAULT_RECOMPUTE, metavar="MODE")
    channels_last: bool = option(
        False, "train in the channels-last memory layout (on a CPU: no faster for D3Net-S, "
               "slower for the music networks)", resumable=True)
    seed: int = option(42, "base seed of the run (initial weights, data order, "
                           "augmentations)", metavar="N")

    @staticmethod
    def _require(checks: Iterable[Tuple[bool, str]]) -> None:
        """Raise the message of the first ``(ok, message)`` pair that is not ok."""
        for ok, message in checks:
            if not ok:
                raise D3NetError(message)

    @classmethod
    def check_names(cls, names: Iterable[str]) -> None:
        """Refuse names that are not fields (a typo would otherwise be ignored)."""
        unknown = sorted(set(names) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise D3NetError(f"unknown training option(s): {', '.join(unknown)}")

    @classmethod
    def resumable(cls) -> Tuple[str, ...]:
        """The fields that may change when a run is resumed."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_overrides(cls, overrides: Dict[str, Any]):
        """The defaults with the ``overrides`` that are not ``None``."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def merge_resumed(cls, saved: Dict[str, Any], overrides: Dict[str, Any]):
        """The saved run's hyper-parameters with the ``overrides`` (``None`` = keep) that
        may change on resume; any other override that differs is an error."""
        current = cls.from_dict(saved).to_dict()
        resumable = cls.resumable()
        changed = {}
        for key, value in overrides.items():
            if value is None:
                continue
            new = cls.from_dict({**current, key: value}).to_dict()[key]
            if new != current[key]:
                if key not in resumable:
                    raise D3NetError(f"{key} = {value!r} differs from the run being resumed "
                                     f"({current[key]!r}); resume with the same value or start "
                                     "a new run in another --out folder")
                changed[key] = new
        return cls.from_dict({**current, **changed})


__all__ = ["HyperParams", "option", "AMP_HELP", "shown_default", "parse_int_list",
           "parse_range"]
