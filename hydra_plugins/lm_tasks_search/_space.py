"""The search space: Hydra sweep strings parsed into Optuna distributions.

    optim.lr: tag(log, interval(1e-4, 3e-3))   -> FloatDistribution(1e-4, 3e-3, log=True)
    model.n_layer: int(interval(2, 8))         -> IntDistribution(2, 8)
    trainer.global_batch_size: range(16, 65, 16) -> IntDistribution(16, 64, step=16)
    model.dropout: 0.0,0.1,0.2                 -> CategoricalDistribution([0.0, 0.1, 0.2])
    model: choice(tiny, small)                 -> CategoricalDistribution(["tiny", "small"])
    seed: 7                                    -> not searched: a fixed override of every trial

Discrete sweeps (choice, range, comma lists) also enumerate the grid of a grid search;
intervals are continuous and have no grid.
"""

from dataclasses import dataclass, field
from typing import Any, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer, ValueType
from hydra.errors import HydraException

SYNTAX = ("interval(low, high), int(interval(low, high)), tag(log, interval(...)), choice(a, b, ...), "
          "range(start, stop[, step]) or a plain list a,b,c")


class SearchSpaceError(ValueError):
    """A parameter of the search space that cannot become an Optuna distribution."""


@dataclass
class SearchSpace:
    distributions: dict[str, Any] = field(default_factory=dict)  # key -> optuna distribution
    grid: dict[str, list] = field(default_factory=dict)          # key -> values, for discrete sweeps
    sources: dict[str, str] = field(default_factory=dict)        # key -> the sweep string, for the record
    fixed: list[str] = field(default_factory=list)               # plain `key=value` overrides

    def grid_size(self) -> int:
        """The number of grid points; an error naming the continuous parameters if any."""
        continuous = sorted(set(self.distributions) - set(self.grid))
        if continuous:
            raise SearchSpaceError(
                f"a grid search needs discrete values, but {', '.join(continuous)} "
                f"{'is' if len(continuous) == 1 else 'are'} continuous (interval): give a list "
                "(a,b,c), choice(...) or range(...), or use sampler.kind=tpe|random")
        size = 1
        for values in self.grid.values():
            size *= len(values)
        return size


def flatten(params: Mapping | None, prefix: str = "") -> dict[str, str]:
    """{"finetune": {"classification": {"lr": "..."}}} -> {"finetune.classification.lr": "..."}:
    a key set from the command line with dots arrives nested."""
    flat: dict[str, str] = {}
    for key, value in (params or {}).items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_space(params: Mapping[str, Any]) -> SearchSpace:
    """Parse `key -> sweep string` into a SearchSpace."""
    space = SearchSpace()
    parser = OverridesParser.create()
    for key, value in flatten(params).items():
        text = f"{key}={value}"
        try:
            override = parser.parse_override(text)
        except HydraException as err:
            raise SearchSpaceError(f"search parameter {text!r} does not parse: {err}. Use {SYNTAX}") from None
        if not override.is_sweep_override():
            space.fixed.append(text)
            continue
        space.distributions[key] = _distribution(override)
        if override.is_discrete_sweep():
            space.grid[key] = list(override.sweep_iterator())
        space.sources[key] = str(value)
    return space


def _distribution(override: Override):
    import optuna.distributions as d

    key, sweep = override.get_key_element(), override.value()
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        raise SearchSpaceError(f"search parameter {key}: glob(...) is not supported; list the options with "
                               "choice(...)")
    tags = set(getattr(sweep, "tags", ()) or ())
    if tags - {"log"}:
        raise SearchSpaceError(f"search parameter {key}: unsupported tag(s) {', '.join(sorted(tags - {'log'}))}; "
                               "only tag(log, interval(...)) has a meaning here")
    if getattr(sweep, "shuffle", False):
        raise SearchSpaceError(f"search parameter {key}: shuffle(...) has no meaning in a search; drop it")
    if "log" in tags and not override.is_interval_sweep():
        raise SearchSpaceError(f"search parameter {key}: tag(log, ...) applies to interval(...) only")
    if override.is_interval_sweep():
        low, high = sweep.start, sweep.end
        if low >= high:
            raise SearchSpaceError(f"search parameter {key}: interval({low}, {high}) needs low < high")
        if "log" in tags and low <= 0:
            raise SearchSpaceError(f"search parameter {key}: a log interval needs low > 0, got {low}")
        if isinstance(low, int) and isinstance(high, int):  # int(interval(...))
            return d.IntDistribution(low, high, log="log" in tags)
        return d.FloatDistribution(float(low), float(high), log="log" in tags)
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise SearchSpaceError(f"search parameter {key}: {override.get_value_string()} is empty")
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)) and sweep.step > 0:
            return d.IntDistribution(values[0], values[-1], step=sweep.step)
        return d.CategoricalDistribution(values)  # float steps: the exact values, no rounding surprises
    if override.is_choice_sweep():
        values = list(override.sweep_iterator())
        if any(isinstance(v, (list, dict)) for v in values):
            raise SearchSpaceError(f"search parameter {key}: choices must be single values (numbers, strings, "
                                   "booleans), not lists or dicts")
        if len(set(map(repr, values))) != len(values):
            raise SearchSpaceError(f"search parameter {key}: repeated choices in {values}")
        return d.CategoricalDistribution(values)
    raise SearchSpaceError(f"search parameter {key}: {override.value_type.name.lower()} sweeps "
                           f"({override.get_value_string()}) are not supported; use {SYNTAX}")


def override_value(value: Any) -> str:
    """A value as the right-hand side of a Hydra override: the first of (as is, escaped,
    quoted) that Hydra reads back as the same value, so a path or URL stays readable and a
    string such as "true" or "1e-3" stays a string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        return Transformer.str(value)
    parser = OverridesParser.create()
    quoted = "'" + value.replace("'", "\\'") + "'"
    for candidate in (value, Transformer.str(value), quoted):
        try:
            if parser.parse_override(f"k={candidate}").value() == value:
                return candidate
        except HydraException:
            pass
    raise SearchSpaceError(f"cannot write {value!r} as a Hydra override value")
