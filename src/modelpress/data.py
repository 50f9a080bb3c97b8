"""Local rows -> rendered examples -> token sequences.

Reading is done by `datasets`, offline. Each row is rendered by the text template into a
prompt and a completion (the template's last field, e.g. the tone label); the two are
tokenized separately so that training sees exactly the prompt ids that inference will feed.
The pure functions here (render, split, pack) are what the tests call directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from modelpress.config.templates import completion_split, field_text, number_text, template_fields, template_parts
from modelpress.config.schema import DataConfig, split_name
from modelpress.errors import DataError
from modelpress.data_files import arrow_folder, filtered_rows

IGNORE = -100  # label id the loss skips
log = logging.getLogger("modelpress")


@dataclass(frozen=True)
class Example:
    """One rendered row: the model reads `prompt` and should produce `completion`.

    `target` is the text trained on after the prompt when it is more than the completion: the
    completion plus what closes it (a chat turn's end marker, a template's closing text).
    `turns` cuts a multi-turn chat prompt into (text, trained) pieces, so that earlier
    assistant turns are learned too.
    """

    prompt: str
    completion: str
    source: str  # "file row N", for error messages and reports
    target: str | None = None
    turns: tuple[tuple[str, bool], ...] = ()
    history: tuple[tuple[str, str], ...] = ()  # a chat prompt's messages (role, content), the answer left out
    fixed_prompt: bool = False  # the prompt is the template's own text, alike in every row ("### Text: {text}")

    @property
    def closing(self) -> str:
        """The text trained on after the completion, as written (a chat turn's end marker and newline)."""
        target = self.target or ""
        target = target if target.startswith(self.completion) else target.lstrip()  # R1-Distill: "\n\njoy<|end|>"
        return target[len(self.completion):] if target.startswith(self.completion) else ""

    @property
    def stop(self) -> str:
        """The text that closes an answer (evaluation reads a generated answer up to it)."""
        return self.closing.strip()


FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def format_of(path: Path | str) -> str | None:
    """The datasets builder for a data file, from its suffix (None when unknown)."""
    return FORMATS.get(Path(path).suffix.lower())


def load_rows(config: DataConfig, cache_dir: Path | None = None,
              hub_folder: Path | None = None) -> list[tuple[str, dict]]:
    """Read every row of every file (or of a Hub dataset's snapshot); (where, row) pairs. Errors name the file.
    Without a cache_dir (`modelpress evaluate`), datasets' Arrow copies go to a folder of their own, removed after:
    its default cache keys a local file's copy by path and mtime, and so read a rewritten file as it was."""
    if cache_dir is None and hub_folder is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="modelpress-rows-") as scratch:
            return load_rows(config, Path(scratch))
    import datasets

    datasets.disable_progress_bars()
    rows = []
    sources = [hub_folder] if hub_folder is not None else config.data_files
    name, cut = split_name(config.split)
    if hub_folder is None and name != "train":
        raise DataError(f"data config {config.name!r}: no split {config.split!r}; local files have only 'train' "
                        "(name the split's files in data_files, or give data_files by split). Set split to 'train'.")
    for path in sources:
        try:
            table = _load_table(config, path, hub_folder is not None, cache_dir)
            rows += [(f"{path} row {i + 1}", row) for i, row in enumerate(table)]
        except ValueError as err:
            if "split" in str(err).lower() and "unknown" in str(err).lower() and hub_folder is not None:
                # datasets names the splits the Hub dataset has
                raise DataError(f"Hub dataset {config.hub_id!r}: {str(err).strip()} Set split to one of "
                                "them.") from None
            raise DataError(_unreadable(path, config.format, err, hub_folder is None)) from None
        except Exception as err:  # datasets and pyarrow wrap parser errors in many types
            raise DataError(_unreadable(path, config.format, err, hub_folder is None)) from None
    if hub_folder is None and cut:  # a slice of all the files together, as datasets takes it from one split
        import datasets

        (part,) = datasets.ReadInstruction.from_spec(config.split).to_absolute({"train": len(rows)})
        rows = rows[part.from_:part.to]
    if config.col_filters and rows:
        rows = filtered_rows(config, rows)
    if not rows:
        raise DataError(f"data config {config.name!r}: the files hold no rows ({', '.join(map(str, config.data_files))})")
    return rows


def _load_table(config: DataConfig, path: Path, hub: bool, cache_dir: Path | None):
    """One file through its datasets builder, or a Hub dataset's snapshot folder as datasets reads the Hub."""
    import datasets

    # datasets keys a local file's Arrow copy by its path and mtime, so a file rewritten with its mtime kept (cp -p,
    # rsync -a, tar) was read as it was before: the copy goes under the file's content hash instead
    cache = str(cache_dir if hub else arrow_folder(cache_dir, path)) if cache_dir else None
    if hub:
        return datasets.load_dataset(str(path), config.subset, data_dir=config.data_dir, split=config.split,
                                     data_files=[str(f) for f in config.data_files] or None, cache_dir=cache)
    if config.format == "csv":  # a CSV holds text: no numbers guessed from it, no "NA" or "null" read as missing
        import pandas as pd

        head = pd.read_csv(path, nrows=1)
        if head.empty:  # a header and no rows: a table of none (datasets finds no data in it and raises)
            return []
        features = datasets.Features({name: datasets.Value("string") for name in head.columns})
        return datasets.load_dataset("csv", data_files=[str(path)], split="train", cache_dir=cache,
                                     features=features, keep_default_na=False)
    return datasets.load_dataset(config.format, data_files=[str(path)], split="train", cache_dir=cache)


def _unreadable(path: Path, fmt: str, err: Exception, local: bool = True) -> str:
    path = Path(path)
    if local:  # not a Hub dataset's snapshot folder
        if not path.exists():
            return f"{path}: no such file. Check the path (relative paths start from the config's folder)."
        if path.is_dir():
            return f"{path} is a folder; name the data files in it."
        if path.stat().st_size < 1 << 16 and not path.read_bytes().strip():
            return f"{path} is empty: it holds no rows."
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__  # datasets wraps the parser's message ("... in row 2") in its own
    text = str(err).strip()
    detail = text.splitlines()[0][:300] if text else "no details"
    if isinstance(err, UnicodeDecodeError):
        detail = "the file is not UTF-8 text"
    if not local:  # a Hub dataset's snapshot: datasets chose the format from its files
        return f"{path}: datasets cannot read this Hub dataset's files ({detail})."
    return f"{path}: cannot read as {fmt} ({detail}). Check the file's format and save it as UTF-8."


def render(config: DataConfig, rows: list[tuple[str, dict]], chat=None) -> list[Example]:
    """Render rows through the template (or `chat`, a `ChatFormat`); a missing, null or non-text field names its row."""
    if config.chat:
        return [_chat_example(config, chat, row, where) for where, row in rows]
    fields = _fields(config)
    completion = None if config.label_col else completion_split(config.text_template)
    columns = set(rows[0][1]) if rows else set()
    missing = [f for f in fields + ([config.label_col] if config.label_col else []) if f not in columns]
    if missing:
        raise DataError(f"data config {config.name!r}: the template names column(s) {missing} that the data "
                        f"lacks ({rows[0][0].rsplit(' row', 1)[0]}); columns: {sorted(columns)}")
    examples = []
    for where, row in rows:
        row = {**row, **{field: field_text(row, field, where) for field in fields}}  # a number read as its text
        label = row.get(config.label_col) if config.label_col else None
        if config.label_col and (label is None or isinstance(label, (dict, list)) or not str(label).strip()):
            raise DataError(f"{where}: label column {config.label_col!r} is {label!r}; "
                            "every row needs a label (text or a number). Fix or remove the row.")
        if completion and not row[completion[0]].strip():
            raise DataError(f"{where}: column {completion[0]!r}, the answer the template ends with, is empty, so "
                            "there is nothing to learn or measure. Fix or remove the row.")
        example = _render_row(config, row, completion, where)
        if config.label_col and not example.prompt.replace(PAIR_SEP, "").strip():  # evaluation read the label
            raise DataError(f"{where}: the text to classify ({', '.join(fields)}) is empty. Fix or remove the row.")
        examples.append(example)
    return examples


def _fields(config: DataConfig) -> list[str]:
    # DataConfig refuses a template whose fields are not plain column names (templates.template_problem)
    return template_fields(config.text_template) if config.text_template else list(config.text_cols or [])


def _chat_example(config: DataConfig, chat, row: dict, where: str) -> Example:
    """A conversation: the prompt is everything up to the last assistant turn, whose content is the completion."""
    from modelpress.chat import messages_of, split_turn

    messages = messages_of(row, where, config.message_col, config.chat_columns, config.system_prompt)
    # blanks before an answer are the row's, not the template's: left in, they would end the training prompt, which
    # generation (the template's own prompt) never does, or an earlier answer's would merge into the template's
    # text after its role into a token the trained span reaches
    messages = [{**m, "content": m["content"].lstrip()} if m["role"] == "assistant" else m for m in messages]
    try:
        pieces = chat.pieces(messages, earlier_turns=config.loss_on != "all")
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    last = max((i for i, (_, trained) in enumerate(pieces) if trained), default=None)
    if last is None:
        raise DataError(f"{where}: the chat template renders no text for the assistant turn, so there is no "
                        "answer to learn or measure. Check that the row's answer is not empty.")
    answer = messages[-1]["content"]
    if not answer.strip():
        raise DataError(f"{where}: the assistant turn, the answer to learn and to measure, is empty. "
                        "Fix or remove the row.")
    lead, turn = chat.turn_ends()[0], pieces[last][0]
    split = split_turn(turn, answer, lead)
    if split is not None:
        lead, completion, _ = split
    else:  # the template rewrites this answer (Qwen3 moves a think block out of it): trained as rendered, after its
        # lead; compared with the row's answer, or with the end of it that the template kept (R1-Distill drops a think
        # block before the answer, and the model learns the rest)
        lead = lead if turn.startswith(lead) else ""
        shown = turn[len(lead):].removesuffix(chat.turn_ends()[1]).strip()
        completion = shown if shown and answer.strip().endswith(shown) else answer
    # text the template opens the answer with goes to the prompt, as generation reads it (chat_prompt_for adds it)
    head = tuple(pieces[:last]) + (((lead, False),) if lead else ())
    return Example("".join(text for text, _ in head), completion, where, target=turn[len(lead):], turns=head,
                   history=tuple((m["role"], m["content"]) for m in messages[:-1]))


# Between the two texts of a classifier's sentence pair in its prompt: tokenized as a pair (encode_texts)
PAIR_SEP = " \u241e "  # a visible "SYMBOL FOR RECORD SEPARATOR", which text data does not hold


def label_text(value) -> str:
    """A class label as text; a whole number read as a float in one file (1.0) is the same class as 1 in another."""
    return number_text(value)


def _render_row(config: DataConfig, row: dict, completion: tuple[str, str] | None, where: str) -> Example:
    if config.label_col:  # classification: the input text, and the label as the completion
        cols = config.text_cols or []
        text = config.text_template.format_map(row) if config.text_template else (
            PAIR_SEP if len(cols) == 2 else " ").join(str(row[c]) for c in cols)
        return Example(text, label_text(row[config.label_col]), where)
    if not config.text_template:
        return Example("", " ".join(row[c] for c in config.text_cols), where)
    if completion is None:
        return Example("", config.text_template.format_map(row), where)
    field, closing = completion
    parts = template_parts(config.text_template)
    last = max(i for i, part in enumerate(parts) if part[1] == field)
    head = "".join(lit + (row[f] if f else "") for lit, f, _, _ in parts[:last]) + parts[last][0]
    return Example(head, row[field], where, target=row[field] + closing if closing else None,
                   fixed_prompt=not any(f for _, f, _, _ in parts[:last]))


def tokenize(examples: list[Example], tokenizer, config: DataConfig) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels for each example; prompt labels are masked when loss_on is 'completion'."""
    bos = [tokenizer.bos_token_id] if config.add_special_tokens and tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if config.add_special_tokens and tokenizer.eos_token_id is not None else []
    targets = [ex.target or ex.completion for ex in examples]
    completions = tokenizer(targets, add_special_tokens=False)["input_ids"]
    wholes = tokenizer([ex.prompt + t for ex, t in zip(examples, targets)], add_special_tokens=False)["input_ids"]
    out = []
    for head, head_labels, completion, whole in zip(*_heads(examples, tokenizer, config.loss_on), completions, wholes):
        tail = answer_after(head, whole, completion) + eos
        out.append((bos + head + tail, [IGNORE] * len(bos) + head_labels + tail))
    return out


def answer_after(prompt: list[int], whole: list[int], alone: list[int]) -> list[int]:
    """An answer's tokens as they follow its prompt (`whole`: prompt and answer tokenized together, as TRL takes
    them): a SentencePiece tokenizer gives a text alone a leading word marker ("▁joy") that the joined string lacks.
    `alone` (the answer tokenized by itself) where the joined string changes the prompt's own tokens."""
    return whole[len(prompt):] if whole[:len(prompt)] == prompt and len(whole) > len(prompt) else alone


def _heads(examples: list[Example], tokenizer, loss_on: str) -> tuple[list[list[int]], list[list[int]]]:
    """Prompt ids and their labels: masked when the loss is on the completion, except earlier assistant turns.

    A prompt is tokenized whole, as inference reads it; a multi-turn prompt's earlier assistant turns are
    found by the characters each token covers (a fast tokenizer's offsets), so that a token a piece
    boundary falls inside ("Ġthe" after "assistant: ") is the one inference sees, and is learnt when it
    reaches into an assistant turn. A slow tokenizer, which has no offsets, tokenizes piece by piece."""
    ids, labels = [], []
    for ex in examples:
        pieces = ex.turns or ((ex.prompt, False),)
        if len(pieces) > 1 and getattr(tokenizer, "is_fast", False):
            encoded = tokenizer(ex.prompt, add_special_tokens=False, return_offsets_mapping=True)
            spans, start = [], 0
            for text, trained in pieces:
                if trained:
                    spans.append((start, start + len(text)))
                start += len(text)
            ids.append(list(encoded["input_ids"]))
            labels.append([t if loss_on == "all" or any(a < end and begin < b for begin, end in spans) else IGNORE
                           for t, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"])])
            continue
        encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
        ids.append([t for piece in encoded for t in piece])
        labels.append([t if loss_on == "all" or trained else IGNORE
                       for piece, (_, trained) in zip(encoded, pieces) for t in piece])
    return ids, labels


def pack(sequences: list[tuple[list[int], list[int]]], config: DataConfig, joiner: list[int],
         pad_id: int, capped: bool = True) -> list[dict]:
    """Turn tokenized examples into training sequences by the config's strategy.

    line-by-line keeps each row's first max_seq_len tokens and leaves out, with a warning, rows that
    this leaves nothing to learn; the join strategies leave out the tail of the token stream that fills
    no whole window (as transformers' run_clm does), and say how much."""
    if config.strategy == "line-by-line":
        items = [(ids[: config.max_seq_len], labels[: config.max_seq_len]) for ids, labels in sequences]
        learnt = [item for item in items if any(label != IGNORE for label in item[1])]
        if len(learnt) < len(items):
            log.warning("data config %r: %d of %d rows have nothing to learn in their first %d tokens (the "
                        "prompt fills them) and are left out; raise max_seq_len or shorten the prompts",
                        config.name, len(items) - len(learnt), len(items), config.max_seq_len)
        end = config.max_seq_len
        cut = sum(any(label != IGNORE for label in labels[:end]) and any(label != IGNORE for label in labels[end:])
                  for _, labels in sequences)
        if cut:
            log.warning("data config %r: %d of %d rows are longer than max_seq_len (%d) and lose the end of what "
                        "they teach (the answer's last tokens, its end marker); raise max_seq_len or shorten the "
                        "prompts", config.name, cut, len(items), end)
        items = learnt
    else:
        ids, labels = _join(sequences, joiner, config.loss_on)  # after each row's EOS too, in Olive's order
        step = config.stride if config.strategy == "join-sliding-window" else config.max_seq_len
        items = _windows(ids, labels, config.max_seq_len, step)
        left = max(len(ids) - config.max_seq_len, 0) % step  # windows start every `step` tokens from 0
        if left > 0:
            (log.warning if left > len(ids) // 10 else log.info)(
                "data config %r: the last %d of %d tokens fill no whole %d-token window and are left out",
                config.name, left, len(ids), config.max_seq_len)
    if config.max_samples and capped:  # not a training pass's eval split, which max_samples leaves whole
        items = items[: config.max_samples]
    return [_features(ids, labels, config, pad_id) for ids, labels in items]


def _join(sequences, joiner: list[int], loss_on: str) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    joiner_labels = [IGNORE] * len(joiner) if loss_on == "completion" else joiner
    for seq_ids, seq_labels in sequences:
        ids += seq_ids + joiner
        labels += seq_labels + joiner_labels
    return ids, labels


def _windows(ids: list[int], labels: list[int], length: int, step: int) -> list[tuple[list[int], list[int]]]:
    """Cut a token stream into windows; overlapping context is masked so each token is learned once."""
    if len(ids) <= length:
        return [(ids, labels)]
    windows = []
    for start in range(0, len(ids) - length + 1, step):
        window_labels = list(labels[start:start + length])
        if start > 0 and step < length:
            window_labels[: length - step] = [IGNORE] * (length - step)
        windows.append((ids[start:start + length], window_labels))
    return windows


def _features(ids: list[int], labels: list[int], config: DataConfig, pad_id: int) -> dict:
    length = len(ids)
    pad = config.max_seq_len - length if config.pad_to_max_len and config.strategy == "line-by-line" else 0
    features = {"input_ids": ids + [pad_id] * pad, "labels": labels + [IGNORE] * pad}
    if config.use_attention_mask:
        features["attention_mask"] = [1] * length + [0] * pad
    return features


def real_tokens(feature: dict, pad_id: int | None) -> int:
    """A training sequence's tokens less the padding `pad_to_max_len` added (trailing pad ids nothing learns)."""
    ids, labels = feature["input_ids"], feature["labels"]
    if "attention_mask" in feature:
        return sum(feature["attention_mask"])
    n = len(ids)
    while n and ids[n - 1] == pad_id and labels[n - 1] == IGNORE:
        n -= 1
    return n


def label_set(examples: list[Example]) -> list[str]:
    """The class labels of a classification data set, sorted (index order of the classifier head)."""
    return sorted({ex.completion for ex in examples})


def classification_features(examples: list[Example], tokenizer, config: DataConfig, labels: list[str]) -> list[dict]:
    """Token ids (cut to max_seq_len) and the class index of each example."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({ex.completion for ex in examples} - set(index))
    if unknown:
        raise DataError(f"data config {config.name!r}: labels {unknown} do not occur in the training data "
                        f"(known: {labels}). Every eval label must also be a training label.")
    encoded = encode_texts(tokenizer, [ex.prompt for ex in examples], truncation=True,
                           max_length=config.max_seq_len, add_special_tokens=config.add_special_tokens)
    segments = encoded.get("token_type_ids")
    return [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": index[ex.completion],
             **({"token_type_ids": segments[i]} if segments is not None else {})}
            for i, (ids, ex) in enumerate(zip(encoded["input_ids"], examples))]


def encode_texts(tokenizer, texts: list[str], **options) -> dict:
    """The tokenizer's encoding of a classifier's inputs: sentence pairs (two text columns, joined by PAIR_SEP
    in the prompt) as pairs, with the separator and segment ids the tokenizer puts between them, as Olive does.
    A max_length past the tokenizer's model_max_length (BERT's 512 positions; max_seq_len defaults to 1024) is
    cut to it, as Olive's preprocessing takes the tokenizer's: a longer row overran the position table."""
    limit = getattr(tokenizer, "model_max_length", None)
    if options.get("max_length") and isinstance(limit, int) and limit < 1 << 20:  # unknown: a huge number
        options["max_length"] = min(options["max_length"], limit)
    if texts and all(PAIR_SEP in text for text in texts):
        first, second = zip(*(text.split(PAIR_SEP, 1) for text in texts))
        return tokenizer(list(first), list(second), **options)
    return tokenizer(texts, **options)


class Collator:
    """Right-pads a batch to its longest sequence."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(item["input_ids"]) for item in batch)
        out = {}
        if isinstance(batch[0]["labels"], int):  # classification: one class index per sequence
            out["labels"] = torch.tensor([item["labels"] for item in batch])
        for key, fill in (("input_ids", self.pad_id), ("labels", IGNORE), ("attention_mask", 0),
                          ("token_type_ids", 0)):
            if key in batch[0] and key not in out:
                out[key] = torch.tensor([item[key] + [fill] * (width - len(item[key])) for item in batch])
        return out
