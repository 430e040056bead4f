"""Configuration: one frozen dataclass per concern, YAML files, dotted CLI overrides.

The flow every stage follows (CleanRL / torchtune style):

    cfg = load_config(PrepareConfig, yaml_path, ["filters.max_chars=4000", ...])   # parse + validate
    ... do the work ...
    save_resolved(cfg, output_dir)                                                 # beside the outputs

Validation happens once, in `load_config`, before any Ray cluster or file is touched: unknown keys
(with a "did you mean" hint), wrong types and out-of-range values are `ConfigError`s that name the
dotted key. Every field carries `help` text; `describe(PrepareConfig)` prints them.

This module imports only the standard library and PyYAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with help text (shown by `karma <stage> --help-config`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a default_factory for mutable defaults")
    return field(default=default, metadata={"help": help, **kwargs})


def mapping_option(default: Mapping, help: str) -> Any:
    """A mapping-valued field (read-only, like every loaded mapping) with help text."""
    frozen = types.MappingProxyType(dict(default))
    return field(default_factory=lambda: frozen, metadata={"help": help})


def section(cls: type, help: str, **defaults: Any) -> Any:
    """A nested config section with help text; `defaults` override the section's own (e.g. a stage
    whose DeepSpeed default is ZeRO-2 where the section's is 0)."""
    return field(default_factory=(lambda: cls(**defaults)) if defaults else cls, metadata={"help": help})


def at_least(key: str, value: float | None, minimum: float) -> None:
    """A ConfigError naming `key` when `value` is below `minimum` (None: unset, nothing to check)."""
    if value is not None and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}")


# --------------------------------------------------------------------------------------------
# Cluster (shared by every stage that runs on Ray)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayConfig:
    address: str | None = option(
        None,
        "Ray cluster to join: None starts a local cluster (or joins the one `ray job submit` runs in, "
        "via RAY_ADDRESS); 'auto' joins a running local head; 'ray://host:10001' a remote one.",
    )
    num_cpus: int | None = option(None, "CPUs of the LOCAL cluster started when address is None (None: all).")
    object_store_memory_gb: float | None = option(
        None,
        "Object store size of the LOCAL cluster in GiB. Bounding it makes shuffles spill to disk "
        "instead of growing with the corpus (None: Ray's default, 30% of RAM).",
    )
    dashboard_host: str = option(
        "127.0.0.1", "Where a local cluster's dashboard listens. Loopback by default: never expose it unauthenticated."
    )
    include_dashboard: bool = option(False, "Start the dashboard with a local cluster (needs ray[default]).")
    progress_bars: bool = option(True, "Show Ray Data progress bars.")
    log_to_driver: bool = option(
        True, "Stream Ray workers' stdout/stderr to this console; off, they stay in the Ray session's "
        "log files (logs/ of the session folder). `karma experiment` always turns it off."
    )

    def validate(self) -> None:
        at_least("ray.num_cpus", self.num_cpus, 1)
        if self.object_store_memory_gb is not None and self.object_store_memory_gb < 0.08:
            raise ConfigError("ray.object_store_memory_gb must be >= 0.08 (Ray's minimum is ~78 MiB)")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("ray.num_cpus only applies to a local cluster; unset it or ray.address")

    def check_fits(self, need: float, what: str, fix: str) -> None:
        """A local cluster of num_cpus CPUs must hold the `need` CPUs a stage takes at once, or Ray waits
        forever for what it can never place (an existing or autoscaling cluster's size is not known here)."""
        if self.num_cpus is not None and need > self.num_cpus + 1e-9:
            raise ConfigError(f"{what} need {need:g} CPUs but the local cluster has ray.num_cpus={self.num_cpus}: {fix}")


# --------------------------------------------------------------------------------------------
# Corpus preparation (`karma prepare`)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadConfig:
    chunk_mib: int = option(
        16,
        "Decompressed bytes per parse task, newline-aligned. Large files are cut into chunks so that "
        "parsing runs in parallel within a file (zstd decompression itself is sequential per file).",
    )
    format: Literal["auto", "pushshift", "jsonl", "convokit", "parquet"] = option(
        "auto", "Input format; 'auto' decides per path from its name (.zst, .jsonl[.gz], .parquet, ConvoKit folder)."
    )
    max_tasks_per_file: int = option(
        4,
        "Read tasks that may share one big file when there are fewer files than CPUs: byte ranges of an "
        "uncompressed file, or chunk shards of a compressed one (each task decompresses the stream, "
        "which cannot seek, and parses every n-th chunk).",
    )

    def validate(self) -> None:
        if not 1 <= self.chunk_mib <= 1024:
            raise ConfigError("read.chunk_mib must be in [1, 1024]")
        at_least("read.max_tasks_per_file", self.max_tasks_per_file, 1)


@dataclass(frozen=True)
class FilterConfig:
    drop_deleted: bool = option(True, "Drop replies whose body is '[deleted]' (the user deleted it).")
    drop_removed: bool = option(True, "Drop replies whose body is '[removed]' (moderators removed it).")
    bot_authors: tuple[str, ...] = option(
        (
            "AutoModerator",
            "sneakpeekbot",
            "WikiTextBot",
            "RemindMeBot",
            "converter-bot",
            "autotldr",
            "TweetPoster",
            "imguralbumbot",
            "totesmessenger",
            "LinkFixerBot",
            "CommonMisspellingBot",
        ),
        "Authors treated as bots (case-insensitive); their comments are dropped but stay in threads as context.",
    )
    bot_author_suffixes: tuple[str, ...] = option(
        ("Bot", "_bot", "-bot"),
        "Author name endings treated as bots (case-SENSITIVE, so 'RemindMeBot' matches 'Bot' but 'Talbot' does not).",
    )
    drop_distinguished: bool = option(True, "Drop moderator/admin-distinguished comments.")
    drop_stickied: bool = option(True, "Drop stickied comments (mostly moderator notices).")
    min_chars: int = option(1, "Drop replies shorter than this after stripping whitespace.")
    max_chars: int = option(5000, "Drop replies longer than this (characters).")
    min_settle_seconds: int = option(
        86400,
        "Drop comments whose score was retrieved less than this long after posting (retrieved_on - created_utc); "
        "only applied where retrieved_on is known. Real-time-era Pushshift fetched many comments within seconds.",
    )

    def validate(self) -> None:
        if self.min_chars < 0 or self.max_chars < 1 or self.min_chars > self.max_chars:
            raise ConfigError("filters: need 0 <= min_chars <= max_chars and max_chars >= 1")
        at_least("filters.min_settle_seconds", self.min_settle_seconds, 0)


@dataclass(frozen=True)
class ThreadConfig:
    max_context_turns: int = option(
        4, "Ancestor comments kept in a reply's context, nearest ones (oldest first in the text)."
    )
    include_submission: bool = option(True, "Start the context with the submission's title and selftext.")
    max_context_chars: int = option(
        4000, "Cut the context to its last N characters (keeps the turns nearest the reply)."
    )
    max_submission_chars: int = option(1500, "Cut a submission's selftext to this many characters in the context.")

    def validate(self) -> None:
        at_least("threads.max_context_turns", self.max_context_turns, 0)
        if self.max_context_chars < 1 or self.max_submission_chars < 0:
            raise ConfigError("threads.max_context_chars must be >= 1 and max_submission_chars >= 0")


@dataclass(frozen=True)
class PairConfig:
    enabled: bool = option(True, "Write sibling preference pairs (replies to the same parent).")
    shp_rule: bool = option(
        True,
        "SHP rule (Ethayarajh et al. 2022): prefer A over B only if A was written LATER and scored higher, "
        "so the preferred reply did not just have more time to collect votes.",
    )
    min_score_ratio: float = option(
        2.0, "Preferred score must be >= ratio * other score (SHP uses 2); applied when both scores are > 0."
    )
    min_score_margin: int = option(1, "Preferred score minus other score must be at least this.")
    max_pairs_per_parent: int = option(16, "Cap pairs per parent so that huge threads don't dominate.")

    def validate(self) -> None:
        at_least("pairs.min_score_ratio", self.min_score_ratio, 1)
        if self.min_score_margin < 0 or self.max_pairs_per_parent < 1:
            raise ConfigError("pairs.min_score_margin must be >= 0 and max_pairs_per_parent >= 1")


@dataclass(frozen=True)
class SplitConfig:
    val_fraction: float = option(0.05, "Fraction of threads (by hash of link_id) in the validation split.")
    test_fraction: float = option(0.05, "Fraction of threads in the test split.")
    salt: str = option("karma", "Salt of the thread hash; change it to draw a different split.")

    def validate(self) -> None:
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("split: fractions must be >= 0 and val_fraction + test_fraction < 1")


@dataclass(frozen=True)
class PrepareConfig:
    read: ReadConfig = section(ReadConfig, "Reading and parsing dumps.")
    filters: FilterConfig = section(FilterConfig, "Which comments become examples (each drop is counted by reason).")
    threads: ThreadConfig = section(ThreadConfig, "How a reply's conversational context is built.")
    pairs: PairConfig = section(PairConfig, "Sibling preference pairs for pairwise reward models.")
    split: SplitConfig = section(SplitConfig, "Deterministic train/val/test split by thread.")
    ray: RayConfig = section(RayConfig, "The Ray cluster the pipeline runs on.")
    shuffle_partitions: int | None = option(
        None, "Partitions of the 'partition' and 'hash' groupings (None: 2 x cluster CPUs, at least 4; 'partition' "
        "also adds one per ~96 MiB of input JSON so memory stays flat, rounded up to a multiple of the CPUs); "
        "the sort shuffle makes one per input block."
    )
    shuffle: Literal["partition", "sort", "hash"] = option(
        "partition",
        "Group-by-thread step. 'partition': the parse tasks already cut their parsed rows by a stable hash of "
        "link_id into packed pieces, and one Ray Data task per partition fetches its pieces and builds its "
        "threads (one all-to-all exchange, no sort; measured in benchmarks/RESULTS.md). "
        "'sort': Ray Data's sort-based shuffle; blocks live in the object store and can spill to disk. "
        "'hash': Ray's hash shuffle (SHUFFLE_V2), whose aggregator actors hold partitions in heap "
        "memory until all input is read.",
    )
    rows_per_file: int = option(
        200_000, "Rows per output Parquet file: a build task starts a new file once one reaches this many rows."
    )

    def validate(self) -> None:
        at_least("shuffle_partitions", self.shuffle_partitions, 1)
        at_least("rows_per_file", self.rows_per_file, 1)


# --------------------------------------------------------------------------------------------
# Machinery: dict <-> dataclass, overrides, validation, saving
# --------------------------------------------------------------------------------------------


def _is_config_class(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


# Scalar field types and how an error names them (bool is an int in Python: an int field refuses true/false).
_SCALARS = {bool: "true/false", int: "an integer", str: "a string"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value to the annotated type; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in [a for a in args if a is not type(None)]:
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not fit {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, Sequence, list) or tp in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return types.MappingProxyType({str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()})
    if _is_config_class(tp):
        return _build(tp, value, prefix=key)
    if tp in _SCALARS:
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {_SCALARS[tp]}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads `3e-3` (no dot) as a string; accept what Python reads as a number.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    raise ConfigError(f"{key}: unsupported config type {tp}")


def _build(cls: type[T], data: Any, prefix: str = "") -> T:
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _validate_tree(cfg: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{prefix}{f.name}.")
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            # Prefix nested messages so they name the full dotted key.
            msg = str(exc)
            raise ConfigError(msg if not prefix or msg.startswith(prefix) else f"{prefix}{msg}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a','b','c'], value parsed as YAML: 3 -> int, true -> bool, [a,b] -> list)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """YAML file (optional) + dotted overrides -> validated frozen config."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides)
    cfg = _build(cls, data)
    _validate_tree(cfg)
    return cfg


def to_dict(cfg: Any) -> Any:
    """Plain-data view (tuples -> lists) suitable for YAML/JSON."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(x) for x in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(x) for k, x in cfg.items()}
    return cfg


def save_resolved(cfg: Any, output_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config beside a run's outputs, so the run can be repeated exactly."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def describe(cls: type, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per field: dotted key, default, help text. `defaults`: the instance whose values are shown
    (a section's own default, built with `section(cls, help, **defaults)`; None: `cls()`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        default = getattr(defaults, f.name)
        if _is_config_class(tp):
            lines.append(f"{key}:  # {f.metadata.get('help', '')}")
            lines.extend(describe(tp, prefix=key + ".", defaults=default))
        else:
            lines.append(f"  {key} = {to_dict(default) if dataclasses.is_dataclass(default) or isinstance(default, Mapping) else default!r}  # {f.metadata.get('help', '')}")
    return lines
