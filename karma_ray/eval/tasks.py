"""Evaluation task specs: one small declarative YAML file per task (data, prompt, choices, metric).

    specs = load_task_specs(["humor", "truthfulqa_mc2"])          # the built-in ones
    specs = load_task_specs(["my_task"], extra_dirs=["my_tasks/"])  # plus a folder of the user's

A spec names a loader of the ORIGINAL dataset files (karma_ray.eval.loaders) and, for multiple
choice, what lm-evaluation-harness needs to build its requests: a Jinja2 prompt over the loader's
doc fields, the choices (a literal list or a doc field holding the list), the target field, the
delimiter, the few-shot split and count. Generation tasks (toxicity, karma) are scored by
karma_ray.eval.generation and only name their settings here.

A new multiple-choice or classification task is one YAML file in a folder given as `extra_dirs`
(or `tasks.dirs` in the eval config). This module imports only the standard library and PyYAML.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import yaml

BUILTIN_TASK_DIR = Path(__file__).with_name("tasks")
GROUPS = ("pragmatics", "factuality", "knowledge", "sycophancy", "toxicity", "karma")
Kind = Literal["multiple_choice", "toxicity", "karma"]
MC_METRICS = ("acc", "acc_norm", "mc2")


class TaskError(ValueError):
    """An unknown task name or a malformed task spec (the message names the file and the key)."""


@dataclass(frozen=True)
class TaskSpec:
    task: str  # the name used in configs, results and reports
    group: str  # one of GROUPS: how the report groups tasks
    kind: Kind
    description: str  # one line for the report
    loader: str  # a karma_ray.eval.loaders name
    split: str = "test"
    loader_args: Mapping[str, Any] = field(default_factory=dict)
    # multiple choice (lm-evaluation-harness request building)
    prompt: str = ""  # Jinja2 over the doc's fields (lm-eval doc_to_text)
    choices: tuple[str, ...] | str = ()  # literal choices, or the doc field holding them
    target: str = "gold"  # doc field: the index of the right choice
    target_delimiter: str = " "  # between the prompt and a choice ("" when choices carry their space)
    preamble: str = ""  # Jinja2; put before the few-shot examples, with no separator of its own
    num_fewshot: int = 0
    fewshot_split: Optional[str] = None
    fewshot_sampler: Literal["first_n", "default"] = "default"  # default: seeded random draw
    fewshot_by: Optional[str] = None  # a doc field: few-shot examples share its value (MMLU: subject)
    metric: str = "acc"  # acc | acc_norm | mc2
    metric_name: Optional[str] = None  # the name reported (None: `metric`), e.g. match_rate
    higher_is_better: Optional[bool] = True  # None: no better direction
    source: str = ""  # the spec file

    @property
    def reported_metric(self) -> str:
        return self.metric_name or self.metric

    def validate(self) -> None:
        where = f"{self.source or self.task}"
        if self.group not in GROUPS:
            raise TaskError(f"{where}: group {self.group!r} is not one of {GROUPS}")
        if self.kind == "multiple_choice":
            if not self.prompt:
                raise TaskError(f"{where}: a multiple_choice task needs a prompt")
            if not self.choices:
                raise TaskError(f"{where}: a multiple_choice task needs choices (a list, or a doc field)")
            if self.metric not in MC_METRICS:
                raise TaskError(f"{where}: metric {self.metric!r} is not one of {MC_METRICS}")
            if self.num_fewshot < 0:
                raise TaskError(f"{where}: num_fewshot must be >= 0")
            if self.num_fewshot and not self.fewshot_split:
                raise TaskError(f"{where}: num_fewshot={self.num_fewshot} needs a fewshot_split")


def _read_spec(path: Path) -> TaskSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TaskError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict) or "task" not in data:
        raise TaskError(f"{path}: a task spec is a mapping with a 'task' key")
    known = {f.name for f in fields(TaskSpec)} - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], known, n=1)
        raise TaskError(f"{path}: unknown key {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    if isinstance(data.get("choices"), list):
        data["choices"] = tuple(str(c) for c in data["choices"])
    try:
        spec = TaskSpec(**data, source=str(path))
    except TypeError as err:
        raise TaskError(f"{path}: {err}") from None
    spec.validate()
    return spec


def available_tasks(extra_dirs: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Task name -> spec file; a later folder's file overrides an earlier one of the same name."""
    found: dict[str, Path] = {}
    for folder in (BUILTIN_TASK_DIR, *map(Path, extra_dirs)):
        if not folder.is_dir():
            raise TaskError(f"task folder {folder} does not exist")
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = path
    return found


def load_task_specs(names: Sequence[str], extra_dirs: Sequence[str | Path] = ()) -> list[TaskSpec]:
    """The specs of `names`, in that order; an unknown name is a TaskError listing the known ones."""
    known = available_tasks(extra_dirs)
    specs = []
    for name in names:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            raise TaskError(f"unknown task {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                            + f"; known tasks: {', '.join(sorted(known))}")
        spec = _read_spec(known[name])
        if spec.task != name:
            raise TaskError(f"{known[name]}: the file is named {name!r} but says task: {spec.task!r}")
        specs.append(spec)
    if len(set(names)) != len(names):
        raise TaskError(f"a task is listed twice in {list(names)}")
    return specs


__all__ = ["BUILTIN_TASK_DIR", "GROUPS", "TaskError", "TaskSpec", "available_tasks", "load_task_specs"]
