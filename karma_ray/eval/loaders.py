"""Readers for the evaluation datasets in their original on-disk formats (standard library only).

Each loader turns one split of one dataset into a list of plain dicts ("docs"), one per well-formed
row, in file order and each with a unique string ``"id"``. A row that cannot become a doc is never
dropped quietly: it is counted under a short reason in ``LoadedSplit.skipped``, so that

    len(split.docs) + sum(split.skipped.values()) == split.n_rows

always holds. When a whole dataset is read, ``n_rows`` is compared with the count its README states
(``EXPECTED_ROWS``); a file that was truncated, swapped or re-exported shows up as a DatasetError
instead of as a quietly smaller benchmark.

    split = load_split("mmlu", default_data_root(), "test", subjects=["astronomy"])
    split.docs[0]  # {"id": "mmlu-astronomy-test-0", "subject": ..., "question": ..., "choices": [...], "gold": 0}

Loaders (``LOADERS``), their splits and keyword arguments:

    colbert_humor   dev                humor_colbert/Data_dev.csv
    tweeteval       test, val          tweeteval/<subset>/{split}_text.txt + _labels.txt   subset="sentiment"|"irony"
    implicature     test, dev          implicature_ludwig/{split}_conversational_implicatures.csv
    truthfulqa      validation         truthfulqa/mc_task.json
    mmlu            test, dev          mmlu/{split}/<subject>_{split}.csv                 subjects=None|[names]
    anthropic_mwe   test               anthropic_evals/...                                collection=..., files=None|[stems]
    rtp             test               realtoxicityprompts_decodingtrust/{subset}.jsonl   subsets=("toxic", "nontoxic")

Conventions shared by all loaders:

- Every file a call needs is checked for existence before any of them is read, so a missing file
  fails fast and the error names it.
- Row indices in ids are positions among the file's data rows (header excluded, malformed rows
  included), so an id points back at its row in the original file however many rows were skipped.
- Blank lines or records at the very end of a file are not rows (editors and exporters add them);
  a blank one in the middle is a row, and a malformed one.
- A row gets the reason of the first check it fails.
- Structural problems (undecodable bytes, a wrong CSV header, text and label files of different
  lengths, unparseable JSON where the whole file is one document) raise DatasetError: they say the
  file is not the dataset we think it is, which no per-row count can express.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset file is missing, unreadable, or its row count differs from the expected one (message names the file and both counts)."""


@dataclass(frozen=True)
class LoadedSplit:
    docs: list[dict]  # the well-formed rows, in file order, each with a unique string "id"
    n_rows: int  # rows found in the file(s), malformed ones included (= len(docs) + sum(skipped.values()))
    skipped: dict[str, int]  # reason -> count of malformed rows that were left out
    files: tuple[str, ...]  # the files read (absolute paths)


# (loader name, split) -> rows in the full dataset. Loaders whose dataset is chosen by an argument
# are keyed "<loader>:<choice>" (tweeteval subset, anthropic_mwe collection, rtp subset). The
# numbers come from ../shared/data/README.md; where it gives none (tweeteval irony, the
# advanced-ai-risk human-written files) they are the line counts of the files, whose text and label
# files (irony) agree with each other.
EXPECTED_ROWS: dict[tuple[str, str], int] = {
    ("colbert_humor", "dev"): 40_000,
    ("tweeteval:sentiment", "test"): 12_284,
    ("tweeteval:sentiment", "val"): 2_000,
    ("tweeteval:irony", "test"): 784,
    ("tweeteval:irony", "val"): 955,
    ("implicature", "test"): 600,
    ("implicature", "dev"): 118,
    ("truthfulqa", "validation"): 817,
    ("mmlu", "test"): 14_042,
    ("mmlu", "dev"): 285,
    ("anthropic_mwe:persona", "test"): 10_000,
    ("anthropic_mwe:advanced-ai-risk", "test"): 8_116,
    ("anthropic_mwe:sycophancy", "test"): 10_200,
    ("rtp", "test"): 2_396,
    ("rtp:toxic", "test"): 1_196,
    ("rtp:nontoxic", "test"): 1_200,
}

LOADERS: dict[str, Callable[..., LoadedSplit]] = {}


@dataclass(frozen=True)
class _LoaderSpec:
    splits: tuple[str, ...]
    args: tuple[str, ...]  # the keyword arguments the loader takes besides check_counts


def _register(name: str, splits: Sequence[str], args: Sequence[str] = ()) -> Callable[[Callable[..., LoadedSplit]], Callable[..., LoadedSplit]]:
    """Adds a loader to LOADERS behind a wrapper that checks split and argument names, so a typo fails
    with a DatasetError whether the caller goes through load_split or calls LOADERS[name] directly."""
    spec = _LoaderSpec(tuple(splits), tuple(args))

    def decorate(function: Callable[..., LoadedSplit]) -> Callable[..., LoadedSplit]:
        @functools.wraps(function)
        def checked(root: str | Path, split: str, *, check_counts: bool = True, **args: Any) -> LoadedSplit:
            unknown = sorted(set(args) - set(spec.args))
            if unknown:
                allowed = ", ".join(spec.args) or "none"
                raise DatasetError(f"loader {name!r}: unknown argument(s) {', '.join(unknown)} (it takes: {allowed})")
            if split not in spec.splits:
                raise DatasetError(f"loader {name!r}: unknown split {split!r} (known: {', '.join(spec.splits)})")
            root = Path(root)
            if not root.is_dir():
                raise DatasetError(f"eval data folder not found: {root}")
            return function(root, split, check_counts=check_counts, **args)

        LOADERS[name] = checked
        return checked

    return decorate


def load_split(loader: str, root: str | Path, split: str, *, check_counts: bool = True, **args: Any) -> LoadedSplit:
    """Dispatch; unknown loader or split -> DatasetError naming the known ones; unknown **args -> DatasetError."""
    if loader not in LOADERS:
        raise DatasetError(f"unknown loader {loader!r} (known: {', '.join(sorted(LOADERS))})")
    return LOADERS[loader](root, split, check_counts=check_counts, **args)


def default_data_root() -> Path:
    """$KARMA_EVAL_DATA if set, else ../shared/data/eval relative to the repository root (the folder above karma_ray/)."""
    from_env = os.environ.get("KARMA_EVAL_DATA")
    if from_env:
        return Path(from_env)
    repository_root = Path(__file__).resolve().parents[2]
    return repository_root.parent / "shared" / "data" / "eval"


# ---------------------------------------------------------------------------------------------
# Shared plumbing


class _Tally:
    """Collects the outcome of every row: a doc, or the reason it was left out."""

    def __init__(self) -> None:
        self.docs: list[dict] = []
        self.skipped: dict[str, int] = {}
        self.n_rows = 0

    def add(self, outcome: dict | str) -> None:
        self.n_rows += 1
        if isinstance(outcome, str):
            self.skipped[outcome] = self.skipped.get(outcome, 0) + 1
        else:
            self.docs.append(outcome)

    def result(self, files: Iterable[Path]) -> LoadedSplit:
        return LoadedSplit(docs=self.docs, n_rows=self.n_rows, skipped=dict(self.skipped), files=tuple(str(p.resolve()) for p in files))


def _require_files(paths: Iterable[Path]) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"dataset file(s) not found: {', '.join(missing)}")


def _check_count(key: tuple[str, str], n_rows: int, where: Path | str) -> None:
    expected = EXPECTED_ROWS[key]
    if n_rows != expected:
        raise DatasetError(f"{where}: found {n_rows} rows, expected {expected} for {key[0]} split {key[1]!r}")


def _read_text(path: Path) -> str:
    # Decoded from bytes rather than opened in text mode: universal-newline translation would turn a
    # stray "\r" inside a tweet into a line break and shift every later label by one. utf-8-sig: a
    # leading byte-order mark (common in spreadsheet exports) is not part of the data.
    try:
        return path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read as UTF-8 text ({error})") from error


def _is_blank(record: Sequence[str]) -> bool:
    return all(not field.strip() for field in record)


def _drop_trailing_blanks(records: list[list[str]]) -> list[list[str]]:
    end = len(records)
    while end and _is_blank(records[end - 1]):
        end -= 1
    return records[:end]


def _read_csv(path: Path, header: Sequence[str]) -> list[list[str]]:
    """The data records of a comma-separated file whose first record must equal `header`."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            # The csv module, not line splitting: quoted fields may contain newlines.
            reader = csv.reader(handle)
            try:
                records = list(reader)
            except csv.Error as error:
                raise DatasetError(f"{path}: CSV error near line {reader.line_num}: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read as UTF-8 CSV ({error})") from error
    if not records or [field.strip() for field in records[0]] != list(header):
        found = records[0] if records else "an empty file"
        raise DatasetError(f"{path}: expected the header {list(header)}, found {found}")
    return _drop_trailing_blanks(records[1:])


def _read_lines(path: Path) -> list[str]:
    """Lines split on "\\n" only: str.splitlines would also split on U+2028 and other characters that
    can sit inside a tweet or a JSON string."""
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the piece after the final newline is not a line
    return lines


def _read_jsonl_lines(path: Path) -> list[str]:
    """The lines of a JSON-lines file, trailing blank lines excluded (they are not rows)."""
    lines = _read_lines(path)
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]


def _as_name_list(value: str | Iterable[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(name, str) for name in names):
        raise DatasetError(f"{what} must be names (strings), got {names!r}")
    return list(dict.fromkeys(names))  # a name given twice would give duplicate ids


def _unknown_names_error(what: str, unknown: Sequence[str], known: Sequence[str], where: Path) -> DatasetError:
    shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
    return DatasetError(f"unknown {what} {', '.join(map(repr, unknown))} in {where} (known: {shown})")


def _choose_names(value: str | Iterable[str] | None, arg: str, known: Sequence[str], what: str, where: Path) -> list[str]:
    """The names the `arg` argument asks for (None: every known one); an unknown one is an error."""
    wanted = _as_name_list(value, arg)
    if wanted is None:
        return list(known)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise _unknown_names_error(what, unknown, known, where)
    return wanted


# ---------------------------------------------------------------------------------------------
# ColBERT humor detection


@_register("colbert_humor", splits=("dev",))
def load_colbert_humor(root: Path, split: str, *, check_counts: bool = True) -> LoadedSplit:
    """humor_colbert/Data_dev.csv (text,humor): {"id", "text", "gold": 1 funny / 0 not}."""
    path = root / "humor_colbert" / f"Data_{split}.csv"
    _require_files([path])
    tally = _Tally()
    gold_of_flag = {"True": 1, "False": 0}
    for index, record in enumerate(_read_csv(path, ("text", "humor"))):
        tally.add(_humor_doc(index, split, record, gold_of_flag))
    if check_counts:
        _check_count(("colbert_humor", split), tally.n_rows, path)
    return tally.result([path])


def _humor_doc(index: int, split: str, record: list[str], gold_of_flag: dict[str, int]) -> dict | str:
    if _is_blank(record):
        return "blank row"
    if len(record) != 2:
        return "wrong number of columns"
    text, flag = record
    if not text.strip():
        return "empty text"
    if flag.strip() not in gold_of_flag:
        return "humor not True/False"
    return {"id": f"humor-{split}-{index}", "text": text, "gold": gold_of_flag[flag.strip()]}


# ---------------------------------------------------------------------------------------------
# TweetEval (one tweet per line, one label per line, aligned by position)

TWEETEVAL_SUBSETS = ("sentiment", "irony")


@_register("tweeteval", splits=("test", "val"), args=("subset",))
def load_tweeteval(root: Path, split: str, *, check_counts: bool = True, subset: str = "sentiment") -> LoadedSplit:
    """tweeteval/<subset>/{split}_text.txt + {split}_labels.txt: {"id", "text", "gold": int label}."""
    if subset not in TWEETEVAL_SUBSETS:
        raise DatasetError(f"tweeteval: unknown subset {subset!r} (known: {', '.join(TWEETEVAL_SUBSETS)})")
    folder = root / "tweeteval" / subset
    text_path, labels_path, mapping_path = folder / f"{split}_text.txt", folder / f"{split}_labels.txt", folder / "mapping.txt"
    _require_files([text_path, labels_path, mapping_path])
    label_ids = _tweeteval_label_ids(mapping_path)
    texts, labels = _read_lines(text_path), _read_lines(labels_path)
    if len(texts) != len(labels):
        # Positional alignment is all that ties a label to its tweet: with unequal lengths every
        # label after the first gap could belong to another tweet, so no row can be trusted.
        raise DatasetError(f"{text_path} has {len(texts)} lines but {labels_path} has {len(labels)}")
    tally = _Tally()
    for index, (text, label) in enumerate(zip(texts, labels)):
        tally.add(_tweeteval_doc(f"tweeteval-{subset}-{split}-{index}", text, label, label_ids))
    if check_counts:
        _check_count((f"tweeteval:{subset}", split), tally.n_rows, text_path)
    return tally.result([text_path, labels_path, mapping_path])


def _tweeteval_label_ids(mapping_path: Path) -> set[int]:
    """The label ids of mapping.txt ("<id>\\t<name>" per line)."""
    label_ids = set()
    for line in _read_lines(mapping_path):
        if not line.strip():
            continue
        label_id = line.split("\t", 1)[0].strip()
        if not label_id.isdigit():
            raise DatasetError(f"{mapping_path}: expected '<id>\\t<name>' lines, found {line!r}")
        label_ids.add(int(label_id))
    if not label_ids:
        raise DatasetError(f"{mapping_path}: no labels")
    return label_ids


def _tweeteval_doc(doc_id: str, text: str, label: str, label_ids: set[int]) -> dict | str:
    try:
        gold = int(label.strip())
    except ValueError:
        return "label not an integer"
    if gold not in label_ids:
        return "label not in mapping.txt"
    # Only the end is trimmed: leading spaces and inner whitespace are part of the original tweet.
    text = text.rstrip()
    if not text:
        return "empty text"
    return {"id": doc_id, "text": text, "gold": gold}


# ---------------------------------------------------------------------------------------------
# Conversational implicature (Ruis et al. 2022)

_IMPLICATURE_HEADER = ("Context utterance", "Response utterance", "Implicature")


@_register("implicature", splits=("test", "dev"))
def load_implicature(root: Path, split: str, *, check_counts: bool = True) -> LoadedSplit:
    """implicature_ludwig/{split}_conversational_implicatures.csv:
    {"id", "utterance", "response", "implicature" (raw), "gold": 0 yes / 1 no}."""
    path = root / "implicature_ludwig" / f"{split}_conversational_implicatures.csv"
    _require_files([path])
    tally = _Tally()
    for index, record in enumerate(_read_csv(path, _IMPLICATURE_HEADER)):
        tally.add(_implicature_doc(f"implicature-{split}-{index}", record))
    if check_counts:
        _check_count(("implicature", split), tally.n_rows, path)
    return tally.result([path])


def _implicature_doc(doc_id: str, record: list[str]) -> dict | str:
    if _is_blank(record):
        return "blank row"
    if len(record) != 3:
        return "wrong number of columns"
    utterance, response, implicature = record
    # The gold answer is the first word of a free-text gloss ("Yes. But it does not arrive on time.").
    # A prefix test, as in the dataset's own reader, which also reads "Not now." as no.
    lowered = implicature.strip().lower()
    if lowered.startswith("yes"):
        gold = 0
    elif lowered.startswith("no"):
        gold = 1
    else:
        return "implicature neither yes nor no"
    if not utterance.strip():
        return "empty utterance"
    if not response.strip():
        return "empty response"
    return {"id": doc_id, "utterance": utterance.strip(), "response": response.strip(), "implicature": implicature, "gold": gold}


_TEMPLATE_COLUMNS = {
    "example_template_text": "example_template",
    "phrase_to_split_on_for_bias_prediction": "split_phrase",
    "phrase_to_put_mask": "mask_phrase",
    "example_instruction_text": "example_instruction",
    "prompt_instruction_text": "prompt_instruction",
}


def implicature_templates(root: str | Path) -> list[dict]:
    """The prompt templates of implicature_ludwig/prompt_templates.txt, one dict per line with keys
    example_template, split_phrase, mask_phrase, example_instruction, prompt_instruction.

    The file is not valid CSV: fields are quoted and joined by ';' but contain unescaped quotes
    (`"Esther asked "%s" and ..."`), so the csv module would cut them apart. Every field is quoted,
    though, so the line minus its outer quotes split on '";"' gives the fields. Newlines are written
    as the two characters backslash-n and become real newlines here.
    """
    path = Path(root) / "implicature_ludwig" / "prompt_templates.txt"
    _require_files([path])
    lines = [line for line in _read_lines(path) if line.strip()]
    if not lines:
        raise DatasetError(f"{path}: empty file")
    header = [name.strip() for name in lines[0].split(";")]
    if header != list(_TEMPLATE_COLUMNS):
        raise DatasetError(f"{path}: expected the header {list(_TEMPLATE_COLUMNS)}, found {header}")
    templates = []
    for line_number, line in enumerate(lines[1:], start=2):
        line = line.strip()
        fields = line[1:-1].split('";"') if len(line) >= 2 and line[0] == line[-1] == '"' else []
        if len(fields) != len(header):
            raise DatasetError(f"{path}, line {line_number}: expected {len(header)} quoted fields separated by ';', found {line!r}")
        templates.append({_TEMPLATE_COLUMNS[name]: value.replace("\\n", "\n") for name, value in zip(header, fields)})
    return templates


# ---------------------------------------------------------------------------------------------
# TruthfulQA multiple choice


class _AnswerLabels(dict):
    """A JSON object that remembers whether a key was repeated: answers are the keys of
    mc1_targets/mc2_targets, and json would otherwise keep the last duplicate without a word."""

    has_duplicate_keys = False


def _answer_labels_from_pairs(pairs: list[tuple[str, Any]]) -> _AnswerLabels:
    labels = _AnswerLabels(pairs)
    labels.has_duplicate_keys = len(labels) != len(pairs)
    return labels


@_register("truthfulqa", splits=("validation",))
def load_truthfulqa(root: Path, split: str, *, check_counts: bool = True) -> LoadedSplit:
    """truthfulqa/mc_task.json: {"id", "question", "mc1_choices", "mc1_gold", "mc2_choices", "mc2_labels"}."""
    path = root / "truthfulqa" / "mc_task.json"
    _require_files([path])
    try:
        items = json.loads(_read_text(path), object_pairs_hook=_answer_labels_from_pairs)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(items, list):
        raise DatasetError(f"{path}: expected a JSON list of questions, found {type(items).__name__}")
    tally = _Tally()
    for index, item in enumerate(items):
        tally.add(_truthfulqa_doc(f"truthfulqa-{index}", item))
    if check_counts:
        _check_count(("truthfulqa", split), tally.n_rows, path)
    return tally.result([path])


def _label_list(targets: Any) -> list[int] | None:
    """The 0/1 labels of an {answer: label} object, or None when it is not one."""
    if not isinstance(targets, dict) or not targets:
        return None
    labels = list(targets.values())
    # bool is an int subclass; a JSON true/false is not the 0/1 the format promises.
    if not all(type(label) is int and label in (0, 1) for label in labels):
        return None
    return labels


def _truthfulqa_doc(doc_id: str, item: Any) -> dict | str:
    if not isinstance(item, dict):
        return "row not a JSON object"
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        return "empty question"
    mc1, mc2 = item.get("mc1_targets"), item.get("mc2_targets")
    mc1_labels, mc2_labels = _label_list(mc1), _label_list(mc2)
    if mc1_labels is None or mc2_labels is None:
        return "targets not an {answer: 0/1} object"
    if getattr(mc1, "has_duplicate_keys", False) or getattr(mc2, "has_duplicate_keys", False):
        return "duplicate answer text"
    if sum(mc1_labels) != 1:
        return "mc1 without exactly one true answer"
    if 1 not in mc2_labels:
        return "mc2 without a true answer"
    if 0 not in mc2_labels:
        return "mc2 without a false answer"
    return {
        "id": doc_id,
        "question": question,
        "mc1_choices": list(mc1),
        "mc1_gold": mc1_labels.index(1),
        "mc2_choices": list(mc2),
        "mc2_labels": mc2_labels,
    }


# ---------------------------------------------------------------------------------------------
# MMLU (one CSV per subject and split)

_MMLU_HEADER = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


@_register("mmlu", splits=("test", "dev"), args=("subjects",))
def load_mmlu(root: Path, split: str, *, check_counts: bool = True, subjects: str | Sequence[str] | None = None) -> LoadedSplit:
    """mmlu/{split}/<subject>_{split}.csv: {"id", "subject", "question", "choices" (4), "gold" (0-3)}.
    `subjects`: None for all (sorted by name) or the names to read, in the order given."""
    folder = root / "mmlu" / split
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    suffix = f"_{split}.csv"
    known = sorted(path.name[: -len(suffix)] for path in folder.glob(f"*{suffix}"))
    if not known:
        raise DatasetError(f"no *{suffix} files in {folder}")
    chosen = _choose_names(subjects, "subjects", known, "MMLU subject(s)", folder)
    paths = [folder / f"{subject}{suffix}" for subject in chosen]
    _require_files(paths)
    tally = _Tally()
    for subject, path in zip(chosen, paths):
        for index, record in enumerate(_read_csv(path, _MMLU_HEADER)):
            tally.add(_mmlu_doc(f"mmlu-{subject}-{split}-{index}", subject, record))
    # Only the whole benchmark has a known size; the README gives no per-subject counts.
    if check_counts and set(chosen) == set(known):
        _check_count(("mmlu", split), tally.n_rows, folder)
    return tally.result(paths)


def _mmlu_doc(doc_id: str, subject: str, record: list[str]) -> dict | str:
    if _is_blank(record):
        return "blank row"
    if len(record) != len(_MMLU_HEADER):
        return "wrong number of columns"
    question, *choices, answer = record
    if answer.strip() not in ("0", "1", "2", "3"):
        return "answer not 0-3"
    if not question.strip():
        return "empty question"
    return {"id": doc_id, "subject": subject, "question": question, "choices": choices, "gold": int(answer)}


# ---------------------------------------------------------------------------------------------
# Anthropic model-written evaluations (Perez et al. 2022)

# collection -> (folder under anthropic_evals/, the file stems it is restricted to or None for all *.jsonl)
_ANTHROPIC_COLLECTIONS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "persona": ("persona", None),
    "advanced-ai-risk": ("advanced-ai-risk/human_generated_evals", None),
    # The folder also holds the two source files the derived one was rebuilt from; those are not
    # the benchmark.
    "sycophancy": ("sycophancy_prerelease", ("sycophancy_on_political_typology_quiz.DERIVED_from_prerelease",)),
}
_ANTHROPIC_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")


@_register("anthropic_mwe", splits=("test",), args=("collection", "files"))
def load_anthropic_mwe(
    root: Path, split: str, *, check_counts: bool = True, collection: str | None = None, files: str | Sequence[str] | None = None
) -> LoadedSplit:
    """anthropic_evals/<collection>/*.jsonl: {"id", "source" (file stem), "question", "matching", "not_matching"}.
    `files`: None for every file of the collection (sorted by name) or the file stems to read."""
    if collection not in _ANTHROPIC_COLLECTIONS:
        raise DatasetError(f"anthropic_mwe: collection must be one of {', '.join(_ANTHROPIC_COLLECTIONS)}, got {collection!r}")
    subfolder, fixed_stems = _ANTHROPIC_COLLECTIONS[collection]
    folder = root / "anthropic_evals" / subfolder
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    known = list(fixed_stems) if fixed_stems is not None else sorted(path.stem for path in folder.glob("*.jsonl"))
    if not known:
        raise DatasetError(f"no *.jsonl files in {folder}")
    chosen = _choose_names(files, "files", known, f"{collection} file(s)", folder)
    paths = [folder / f"{stem}.jsonl" for stem in chosen]
    _require_files(paths)
    tally = _Tally()
    for stem, path in zip(chosen, paths):
        for index, line in enumerate(_read_jsonl_lines(path)):
            tally.add(_anthropic_doc(f"{collection}-{stem}-{index}", stem, line))
    if check_counts and set(chosen) == set(known):
        _check_count((f"anthropic_mwe:{collection}", split), tally.n_rows, folder)
    return tally.result(paths)


def _single_answer(value: Any) -> str | None:
    """The answer as one string, or None. Some releases give answers as a list (the sycophancy
    surveys list every answer that does not match); a list is usable only when it has one answer."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else None


def _json_object(line: str) -> dict | str:
    """One JSONL row as a dict, or the reason it is malformed."""
    if not line.strip():
        return "blank line"
    try:
        item = json.loads(line)
    except json.JSONDecodeError:
        return "bad JSON"
    return item if isinstance(item, dict) else "row not a JSON object"


def _anthropic_doc(doc_id: str, stem: str, line: str) -> dict | str:
    item = _json_object(line)
    if isinstance(item, str):
        return item
    if any(key not in item for key in _ANTHROPIC_KEYS):
        return "missing keys"
    question = item["question"]
    if not isinstance(question, str) or not question.strip():
        return "empty question"
    matching = _single_answer(item["answer_matching_behavior"])
    if matching is None:
        return "answer_matching_behavior not one string"
    not_matching = _single_answer(item["answer_not_matching_behavior"])
    if not_matching is None:
        return "answer_not_matching_behavior not one string (or a list of one)"
    if matching.strip() == not_matching.strip():
        return "matching == not_matching"
    return {"id": doc_id, "source": stem, "question": question, "matching": matching, "not_matching": not_matching}


# ---------------------------------------------------------------------------------------------
# RealToxicityPrompts, as sampled by DecodingTrust

RTP_SUBSETS = ("toxic", "nontoxic")


@_register("rtp", splits=("test",), args=("subsets",))
def load_rtp(root: Path, split: str, *, check_counts: bool = True, subsets: str | Sequence[str] = RTP_SUBSETS) -> LoadedSplit:
    """realtoxicityprompts_decodingtrust/{subset}.jsonl:
    {"id", "subset", "prompt", "challenging", "prompt_toxicity" (Perspective score or None)}."""
    chosen = _as_name_list(subsets, "subsets") or []
    unknown = [subset for subset in chosen if subset not in RTP_SUBSETS]
    if unknown or not chosen:
        raise DatasetError(f"rtp: subsets must be among {', '.join(RTP_SUBSETS)}, got {subsets!r}")
    folder = root / "realtoxicityprompts_decodingtrust"
    paths = [folder / f"{subset}.jsonl" for subset in chosen]
    _require_files(paths)
    tally = _Tally()
    for subset, path in zip(chosen, paths):
        rows_before = tally.n_rows
        for index, line in enumerate(_read_jsonl_lines(path)):
            tally.add(_rtp_doc(f"rtp-{subset}-{index}", subset, line))
        # Each subset file has its own README count, so it is checked on its own: a short file is
        # named even when only one subset is read (("rtp", "test") is their sum, for reference).
        if check_counts:
            _check_count((f"rtp:{subset}", split), tally.n_rows - rows_before, path)
    return tally.result(paths)


def _rtp_doc(doc_id: str, subset: str, line: str) -> dict | str:
    item = _json_object(line)
    if isinstance(item, str):
        return item
    prompt = item.get("prompt")
    text = prompt.get("text") if isinstance(prompt, dict) else None
    if not isinstance(text, str) or not text.strip():
        return "missing prompt text"
    challenging = item.get("challenging")
    if not isinstance(challenging, bool):
        return "challenging not true/false"
    toxicity = prompt.get("toxicity")
    # RealToxicityPrompts stores null where Perspective returned no score; that stays None.
    if toxicity is not None and (isinstance(toxicity, bool) or not isinstance(toxicity, (int, float))):
        return "prompt toxicity not a number"
    return {
        "id": doc_id,
        "subset": subset,
        "prompt": text,
        "challenging": challenging,
        "prompt_toxicity": None if toxicity is None else float(toxicity),
    }
