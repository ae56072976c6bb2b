"""The `softhard` command: train soft prompts, discover hard ones, evaluate, read, export and import them.

    softhard demo                                   # the main job on the embedded default model
    softhard train --task sst2 --num-virtual-tokens 10
    softhard discover --task sst2 --method pez
    softhard eval --task sst2 --adapter out/train/n10/best
    softhard eval --task sst2 --ensemble out/a/best out/b/best out/c/adapter
    softhard project --adapter out/train/n10/best --top-k 5
    softhard export --adapter out/train/n10/best --to kobold --out prompt.zip
    softhard import prompt.zip --out out/imported

Every command takes --help. Results print as tables, or as JSON with --json.

Each command checks its arguments (by building its configs), then loads the data, then the model, then calls
the library and prints: a mistake is reported before anything slow has run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..distributed import init_from_environment, is_main_process
from ..files.checkpoint import save_adapter_atomically, write_text_atomically
from .reporting import evaluate_prompt, table

logger = logging.getLogger("peft_softhard")


# ------------------------------------------------------------------------------------------ shared steps
def task_from_args(args):
    """The task the arguments name; relative custom data files are read from the working directory. A typed
    template's `\\n` is a newline; `--template` and `--label-word` replace a built-in task's own."""
    from ..objectives.templates import unescape
    from .tasks import custom_task, get_task

    template = unescape(args.template) if args.template else None
    if args.train_file or args.eval_file:
        if not args.label_words:
            raise ValueError("A custom task needs its label words: --label-word ' no' --label-word ' yes' ...")
        return custom_task(train=args.train_file, eval=args.eval_file, template=template or "{text}",
                           label_words=args.label_words, text_column=args.text_column,
                           label_column=args.label_column, base_dir=Path.cwd())
    task = get_task(args.task)
    if args.label_words and len(args.label_words) != task.num_labels:
        raise ValueError(f"Task {task.name!r} has {task.num_labels} classes; give one --label-word per class, in label "
                         f"order (its own: {task.label_words}).")
    changes = {"template": template, "label_words": args.label_words}
    return dataclasses.replace(task, **{name: value for name, value in changes.items() if value})


def _data(args, task, for_training: bool = False):
    """The task's rows: train, validation (carved from train; chooses the best step) and eval (reported once)."""
    from .tasks import load_task_data

    data = load_task_data(task, args.max_train, args.max_eval, args.seed, args.data_dir,
                          getattr(args, "validation_rows", 1))
    if for_training and not data.has_train:
        raise ValueError(f"Task {task.name!r} has no train split to train on and to carve validation rows from: "
                         "give --train-file.")
    return data


def _check_init(args) -> None:
    """The `--init` choices that are wrong whatever the task and model are (before anything is loaded)."""
    from .tasks import check_prompt_init

    if (args.corpus or args.pairs) and args.init in ("manual", "labels"):
        what = "a corpus has" if args.corpus else "pairs have"
        raise ValueError(f"--init {args.init} starts from a task's instruction or label words, and {what} neither: "
                         "use --init text --init-text 'Write a movie review:' (or vocab, random).")
    if args.init == "soft" and not getattr(args, "init_adapter", None):
        raise ValueError("--init soft needs --init-adapter: the folder of a trained soft prompt (out/train/n10/best).")
    check_prompt_init(args.init, args.init_text)


def _with_init(prompt, args, task, tokenizer):
    """`prompt` (a SoftHardConfig) starting where `--init` says (the task's instruction, its label words, ...);
    the task's words start from the tokens the prompt's vocabulary allows."""
    from .tasks import prompt_init

    fields = prompt_init(task, args.init, tokenizer, prompt.num_virtual_tokens, args.init_text, vocabulary=prompt)
    return dataclasses.replace(prompt, **{"init_text": None, "init_token_ids": None, **fields})


def _model(args, task_type: str, default: str | None = None):
    from .models import DEFAULT_MODEL, load_model, resolve_device

    device = resolve_device(args.device)  # a wrong --device is refused before the model loads
    model, tokenizer = load_model(args.model or default or DEFAULT_MODEL, task_type)
    return model.to(device), tokenizer


def _load_adapter(args):
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(args.adapter)
    base, tokenizer = _model(args, config.task_type, default=config.base_model_name_or_path)
    return PeftModel.from_pretrained(base, args.adapter), tokenizer


@dataclasses.dataclass
class _Source:
    """What `train` and `discover` optimise on: a classification task's rows (`task`, `data`), the documents
    of a corpus (`corpus`: a style or domain prompt), or (message, target) pairs (`pairs`: a system prompt, a
    universal suffix; `template` is the user message). Read before the model loads, so bad data fails fast."""

    name: str
    task: Any = None
    data: Any = None  # TaskData
    corpus: Any = None  # CorpusSplits
    chunk_tokens: int = 0
    pairs: Any = None  # CorpusSplits of (message, target) pairs
    template: str = "{text}"

    @classmethod
    def from_args(cls, args) -> _Source:
        from .corpus import read_corpus, read_pairs, split_corpus

        if args.corpus and args.pairs:
            raise ValueError("Give --corpus (a style or domain prompt) or --pairs (messages and their targets), not "
                             "both.")
        if args.pairs:
            from ..objectives.templates import unescape

            pairs = split_corpus(read_pairs(args.pairs), args.validation_share, args.report_share, args.seed)
            return cls(args.pairs, pairs=pairs, template=unescape(args.template) if args.template else "{text}")
        if not args.corpus:
            task = task_from_args(args)
            return cls(task.name, task=task, data=_data(args, task, for_training=True), template=task.template)

        if getattr(args, "task_type", "CAUSAL_LM") != "CAUSAL_LM":
            raise ValueError("A corpus trains a causal LM's prompt: leave --task-type at CAUSAL_LM.")
        if args.chunk_tokens < 1:
            raise ValueError(f"--chunk-tokens must be at least 1 token, got {args.chunk_tokens}.")
        documents = read_corpus(args.corpus, args.text_field)
        return cls(args.corpus, corpus=split_corpus(documents, args.validation_share, args.report_share, args.seed),
                   chunk_tokens=args.chunk_tokens)

    def objective(self, tokenizer, task_type: str = "CAUSAL_LM", template: str | None = None):
        """The objective; a task's `template` (default: the task's own) is the input around each example."""
        if self.corpus is not None:
            from .corpus import corpus_objective

            return corpus_objective(self.corpus, tokenizer, self.chunk_tokens)
        if self.pairs is not None:
            from ..objectives import PairsObjective

            return PairsObjective(tokenizer, self.pairs.train, template=template or f"{{prompt}}{self.template}",
                                  held_out_pairs=self.pairs.validation, eval_pairs=self.pairs.report)
        from .tasks import task_objective

        return task_objective(self.task, self.data, tokenizer, task_type, template)

    @property
    def measure(self) -> str:
        """What a score is shown as: accuracy (tasks), perplexity (corpora: the score is minus the mean loss), the
        success rate (pairs: the share of messages answered with their whole target)."""
        return "perplexity" if self.corpus is not None else "success_rate" if self.pairs is not None else "accuracy"

    def shown(self, score: float) -> float:
        return math.exp(-score) if self.corpus is not None else score

    def report(self, model, objective, prompt: torch.Tensor) -> dict:
        """The eval rows (a corpus: the report documents; pairs: the report pairs), scored once by the chosen
        prompt."""
        if self.pairs is not None:
            return {"success_rate": objective.success_rate(model, prompt, "eval"), "examples": len(self.pairs.report)}
        if self.corpus is None:
            return evaluate_prompt(model, objective, prompt)
        from .corpus import corpus_metrics

        return corpus_metrics(model, objective, prompt)

    def splits_line(self) -> str:
        if self.pairs is not None:
            pairs = self.pairs
            return (f"pairs: {len(pairs.train)} train, {len(pairs.validation)} validation (they chose the step), "
                    f"{len(pairs.report)} report (scored once, by the chosen prompt)")
        if self.corpus is not None:
            corpus = self.corpus
            return (f"documents: {len(corpus.train)} train, {len(corpus.validation)} validation (they chose the "
                    f"step), {len(corpus.report)} report (scored once, by the chosen prompt); chunks of at most "
                    f"{self.chunk_tokens} tokens")
        data = self.data
        return (f"rows: {len(data.train[0])} train, {len(data.validation[0])} validation (carved from the train "
                f"split; they chose the step), {len(data.evaluation[0])} eval (scored once, by the chosen prompt)")


def _placement(args, source: _Source, tokenizer) -> dict:
    """The adapter's `placement` and `template` (`--placement`, `--chat`) for a task or pairs on a causal LM; none
    for a corpus or a SEQ_CLS head, which take the prompt in front."""
    from ..placement import adapter_placement

    if source.corpus is not None or getattr(args, "task_type", "CAUSAL_LM") != "CAUSAL_LM":
        if args.placement not in (None, "prefix") or args.chat:
            raise ValueError("--placement and --chat put the prompt in a causal LM's template; a corpus and a "
                             "SEQ_CLS head take it in front of the input: leave them out.")
        return {}
    return adapter_placement(tokenizer, source.template, args.placement, args.chat)


def _scored_template(tokenizer, placed: dict) -> str | None:
    """The text template (with {text} and {prompt}) an adapter of these placement fields is scored with."""
    from ..placement import placed_template

    return placed_template(tokenizer, placed["template"], placed["placement"]) if placed else None


def _print(args, payload: Any, text: str) -> None:
    print(json.dumps(payload, indent=2, default=str) if args.json else text)


# --------------------------------------------------------------------------------------------- commands
def cmd_train(args) -> dict:
    from peft import get_peft_model

    from ..method.config import SoftHardConfig
    from ..optimization.training import TrainConfig, train_prompt
    from .options import config_from_args
    from .plots import plot_accuracy_vs_length, plot_training_curves

    prompts = [SoftHardConfig(task_type=args.task_type, num_virtual_tokens=length, mode=args.mode, metric=args.metric)
               for length in args.num_virtual_tokens]  # checked now; their init once the tokenizer is loaded
    _check_init(args)
    config = config_from_args(TrainConfig, args, seed=args.seed, show_progress=not args.json)
    source = _Source.from_args(args)
    measure, output = source.measure, Path(args.output_dir)
    rows, curves, payload, objective = [], {}, {"task": source.name, "runs": []}, None
    for prompt in prompts:
        length = prompt.num_virtual_tokens
        base, tokenizer = _model(args, args.task_type)  # a fresh base model per prompt: peft wraps it in place
        placed = _placement(args, source, tokenizer)  # where the prompt goes: saved with the adapter
        objective = objective or source.objective(tokenizer, args.task_type, _scored_template(tokenizer, placed))
        prompt = dataclasses.replace(_with_init(prompt, args, source.task, tokenizer), **placed)
        torch.manual_seed(args.seed)
        model = get_peft_model(base, prompt)  # the tokenizer for text init comes from the model's folder
        result = train_prompt(model, objective, config, output / f"n{length}", resume=args.resume)
        # the model holds the best prompt (chosen on the validation rows); the eval rows are scored once, now
        final = source.report(base, objective, model.prompt_encoder["default"].prompt_embeddings().detach())
        curves[f"{args.mode}, {length} tokens"] = (result.loss_history, result.score_history)
        rows.append([length, source.shown(result.best_score), result.best_step, final[measure], result.steps,
                     round(result.seconds, 1)])
        payload["runs"].append({"num_virtual_tokens": length, f"validation_{measure}": source.shown(result.best_score),
                                "best_step": result.best_step, "eval": final,
                                "adapter": str(output / f"n{length}" / "best"),
                                "score_history": result.score_history, "seconds": result.seconds})
        _corpus_outputs(args, model, tokenizer, payload["runs"][-1], length, several=len(prompts) > 1)
    payload["plots"] = [str(plot_training_curves(curves, output / "training_curves.png"))]
    if len(args.num_virtual_tokens) > 1:
        points = {args.mode: [(r[0], r[3]) for r in rows]}
        payload["plots"].append(str(plot_accuracy_vs_length(points, output / f"{measure}_vs_length.png")))
    text = table(["tokens", f"validation {measure} (chose the step)", "at step", f"eval {measure}", "steps",
                  "seconds"], rows)
    _print(args, payload, f"{text}\n{source.splits_line()}{_no_prompt_line(payload['runs'][-1]['eval'])}\n"
                          f"best adapters: {output}/n*/best   plots: {', '.join(payload['plots'])}"
                          f"{_samples_text(payload['runs'])}")
    return payload


def _corpus_outputs(args, model, tokenizer, run: dict, length: int, several: bool = False) -> None:
    """A corpus run's extras in `run`: the KoboldAI zip (--kobold; `several` lengths: one zip each, named by
    length) and sample generations with and without the prompt (--sample N)."""
    if not args.corpus:
        return
    if args.kobold:
        from ..files import export_kobold

        path = Path(args.kobold)
        if several:
            path = path.with_name(f"{path.stem}-n{length}{path.suffix}")
        run["kobold"] = str(export_kobold(model, path, name=Path(args.corpus).stem, description=f"a prompt for the "
                                          f"style of {args.corpus}, {length} tokens"))
    if args.sample:
        from .corpus import sample_generations

        with model.disable_adapter():
            plain = sample_generations(model, tokenizer, args.sample, seed=args.seed)
        run["samples"] = {"with_prompt": sample_generations(model, tokenizer, args.sample, seed=args.seed),
                          "no_prompt": plain}


def _no_prompt_line(metrics: dict) -> str:
    if "no_prompt_perplexity" not in metrics:
        return ""
    return (f"\nno prompt: report perplexity {metrics['no_prompt_perplexity']:.2f} "
            f"({metrics['no_prompt_bits_per_token']:.3f} bits per token; with the prompt {metrics['perplexity']:.2f}, "
            f"{metrics['bits_per_token']:.3f})")


def _samples_text(runs: list[dict]) -> str:
    lines = []
    for run in runs:
        for which, texts in run.get("samples", {}).items():
            lines += [f"samples, {which.replace('_', ' ')}:", *(f"  {text!r}" for text in texts)]
    return "".join(f"\n{line}" for line in lines)


def cmd_discover(args) -> dict:
    from ..method.config import SoftHardConfig
    from ..optimization.discovery import DiscoveryConfig, run
    from .options import config_from_args
    from .plots import plot_training_curves

    config = config_from_args(DiscoveryConfig, args, seed=args.seed, show_progress=not args.json)
    words = {"word_start_only": True, "round_trip_only": True} if config.whole_words else {}
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens, mode="hard",
                            metric=args.metric, ascii_only=args.ascii_only, **{  # its init once the tokenizer is loaded
                                "word_start_only": args.word_start_only, "round_trip_only": args.round_trip_only,
                                **words})
    _check_init(args)
    if (args.corpus or args.pairs) and args.distill_from:
        raise ValueError("--distill-from matches a soft prompt's class distribution on a task's rows; a corpus or "
                         "pairs have no classes: leave it out.")
    source = _Source.from_args(args)
    base, tokenizer = _model(args, "CAUSAL_LM")
    prompt = _with_init(prompt, args, source.task, tokenizer)
    objective, start = _discovery_objective(args, source, tokenizer, config.placement)
    output, measure = Path(args.output_dir), source.measure
    result = run(base, objective, config, prompt, tokenizer, checkpoint_dir=str(output / "checkpoint"),
                 resume=args.resume, init_prompt=start)
    found, model = _save_discovered(result, base, tokenizer, output)
    final_objective, final_prompt = objective, torch.tensor(result.token_ids, dtype=torch.long)
    if result.whole_prompt is not None and source.task is not None:  # the found template and label words
        final_objective, final_prompt = objective.for_prompt(result.whole_prompt)
    final = source.report(base, final_objective, final_prompt)  # the eval rows, scored once
    validation = (source.shown(result.start_score), source.shown(result.best_score))
    payload = {"task": source.name, "method": result.method, "init": args.init, **found,
               "text": result.text, "token_ids": result.token_ids, f"validation_{measure}": validation[1],
               "best_step": result.best_step, f"start_validation_{measure}": validation[0], "eval": final,
               "stages": [dataclasses.asdict(stage) for stage in result.stages],
               "round_trips": result.round_trips, "perplexity": result.perplexity, "seconds": result.seconds,
               "notes": result.notes, "score_history": result.score_history}
    if args.calibrate and source.task is not None:
        payload["eval_calibrated"] = evaluate_prompt(base, final_objective, final_prompt, calibrate=True)
    _corpus_outputs(args, model, tokenizer, payload, config.num_virtual_tokens)
    write_text_atomically(output / "result.json", json.dumps(payload, indent=2))
    payload["plots"] = [str(plot_training_curves({result.method: (result.loss_history, result.score_history)},
                                                 output / "training_curves.png"))]
    shown = found.get("prompt") or result.text
    text = table(["prompt", f"validation {measure} (yours -> found)", f"eval {measure}", "round trips", "seconds"],
                 [[shown, f"{validation[0]:.4f} -> {validation[1]:.4f}", final[measure], result.round_trips,
                   round(result.seconds, 1)]])
    stages = "".join(f"\nstage {r.stage}: validation {r.start_score:.4f} -> {r.best_score:.4f} "
                     f"({'kept' if r.kept else 'not kept'})" for r in result.stages)
    calibrated = (f"\nwith contextual calibration (decoding only, not in the prompt): eval accuracy "
                  f"{payload['eval_calibrated']['accuracy']:.4f}" if "eval_calibrated" in payload else "")
    notes = "".join(f"\nnote: {n}" for n in result.notes)
    saved = "".join(f"\n{what}: {where}" for what, where in found.items() if what in ("prompt_file", "adapter"))
    _print(args, payload, f"{text}{_whole_prompt_text(found)}{stages}\n{source.splits_line()}"
                          f"{_no_prompt_line(final)}{calibrated}{notes}{saved}{_samples_text([payload])}")
    return payload


def _save_discovered(result, base, tokenizer, output: Path) -> tuple[dict, Any]:
    """Write what discover found: prompt.json (the whole prompt: `eval --prompt-file` scores it), prompt.txt (the
    text to paste) and the SOFTHARD adapter of its tokens, at their place in the template. Returns (what was
    written, the adapter's peft model or None)."""
    whole = result.whole_prompt
    found: dict[str, Any] = {}
    if whole is not None and whole.label_words:
        found.update(template=whole.template, label_words=whole.label_words, prompt=whole.filled(tokenizer),
                     prompt_file=str(output / "prompt.json"))
        write_text_atomically(output / "prompt.json", whole.to_json(tokenizer, validation=result.best_score))
        write_text_atomically(output / "prompt.txt", whole.filled(tokenizer))
    else:  # the tokens' text (in their template, where they have a slot)
        write_text_atomically(output / "prompt.txt", whole.filled(tokenizer) if whole else result.text or "")
    model = None
    if result.token_ids:  # the tokens at their place in the template (prompt.json also holds the label words)
        model = result.to_peft_model(base)
        save_adapter_atomically(model, output / "adapter")
        found["adapter"] = str(output / "adapter")
    return found, model


def _whole_prompt_text(found: dict) -> str:
    if "template" not in found:
        return ""
    return (f"\nthe prompt to paste (your text at {{text}}): {found['prompt']!r}\nlabel words: "
            + " / ".join(repr(word) for word in found["label_words"]))


def _discovery_objective(args, source: _Source, tokenizer, placement: str = "prefix"):
    """The objective (a task's distilled from a soft prompt with --distill-from), and the vectors a search starts
    from (--init soft), or None. A built-in task's search starts from its hand-written template (the prompt a
    user would type), unless --template gives another or a preset names the task's own; a chat `placement`
    renders it through the chat template with the slot in the system turn or at the end of the user message."""
    from ..files import read_prompt_vectors
    from ..objectives import DistillationObjective
    from ..objectives.templates import CHAT_PLACEMENTS
    from ..placement import placed_template

    manual = source.task.manual_template if source.task is not None else None
    start_template = manual if manual and not args.template and not args.preset else None
    if placement in CHAT_PLACEMENTS:
        start_template = placed_template(tokenizer, start_template or source.template, placement)
    objective = source.objective(tokenizer, template=start_template)
    start = read_prompt_vectors(args.init_adapter) if args.init == "soft" else None
    if args.distill_from:
        objective = DistillationObjective(objective, read_prompt_vectors(args.distill_from))
    return objective, start


def cmd_eval(args) -> dict:
    from ..peft_boundary.adapters import adapter_prompt
    from .tasks import task_objective

    if args.corpus:
        return _eval_corpus(args)
    if args.pairs:
        return _eval_pairs(args)
    task = task_from_args(args)
    if args.manual and not task.manual_template:
        raise ValueError(f"Task {task.name!r} has no manual prompt; give --template or --prompt-text.")
    data = _data(args, task)
    if args.ensemble:
        return _eval_ensemble(args, task, data)
    if args.adapter:
        peft_model, tokenizer = _load_adapter(args)
        prompt = adapter_prompt(peft_model, "default").detach()  # SOFTHARD, or a stock PROMPT_TUNING export
        config = peft_model.peft_config["default"]
        if args.placement or args.chat:
            raise ValueError("An adapter is scored where it puts its prompt (its own placement and template); leave "
                             "--placement and --chat out with --adapter.")
        placed = {"placement": config.placement, "template": config.template} if getattr(config, "template",
                                                                                          None) else {}
        objective = task_objective(task, data, tokenizer, config.task_type, _scored_template(tokenizer, placed))
        what = f"adapter {args.adapter}"
        model = peft_model.get_base_model()
    elif args.prompt_file:  # a whole prompt `softhard discover` found: its template, tokens and label words
        from ..objectives.templates import WholePrompt

        whole = WholePrompt.from_json(Path(args.prompt_file).read_text(), args.prompt_file)
        model, tokenizer = _model(args, "CAUSAL_LM")
        task = dataclasses.replace(task, label_words=whole.label_words)
        objective = task_objective(task, data, tokenizer, template=whole.template)
        prompt, what = torch.tensor(whole.token_ids, dtype=torch.long), f"prompt file {args.prompt_file}"
    else:
        from ..placement import adapter_placement

        model, tokenizer = _model(args, "CAUSAL_LM")
        template = task.manual_template if args.manual else task.template
        placed = adapter_placement(tokenizer, template, args.placement, args.chat)
        objective = task_objective(task, data, tokenizer, template=_scored_template(tokenizer, placed))
        text = args.prompt_text or ""
        prompt = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        what = f"prompt text {text!r}" if text else f"manual prompt {template!r}" if args.manual else "no prompt"
    metrics = evaluate_prompt(model, objective, prompt)
    payload, rows = {"task": task.name, "evaluated": what, **metrics}, [[what, metrics]]
    if args.calibrate:
        payload["calibrated"] = evaluate_prompt(model, objective, prompt, calibrate=True)
        rows.append([f"{what}, calibrated (decoding only)", payload["calibrated"]])
    _print(args, payload, table(["evaluated", "accuracy", "macro-F1", "examples", "examples/s"],
                                [[name, m["accuracy"], m["macro_f1"], m["examples"], m["examples_per_second"]]
                                 for name, m in rows]))
    return payload


def _eval_corpus(args) -> dict:
    """Perplexity and bits per token of the corpus' report documents (the ones `train` and `discover` hold out
    with the same seed and shares) with the adapter or prompt text, and with no prompt."""
    from ..peft_boundary.adapters import adapter_prompt
    from .corpus import corpus_metrics, sample_generations

    if args.manual or args.ensemble:
        raise ValueError("--manual and --ensemble are for tasks; with --corpus give --adapter or --prompt-text (or "
                         "neither, for no prompt).")
    source = _Source.from_args(args)
    if args.adapter:
        generator, tokenizer = _load_adapter(args)
        prompt, model = adapter_prompt(generator, "default").detach(), generator.get_base_model()
        what, prompt_text = f"adapter {args.adapter}", ""
    else:
        model, tokenizer = _model(args, "CAUSAL_LM")
        prompt_text, generator = args.prompt_text or "", model
        prompt = torch.tensor(tokenizer(prompt_text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        what = f"prompt text {prompt_text!r}" if prompt_text else "no prompt"
    metrics = corpus_metrics(model, source.objective(tokenizer), prompt)
    payload = {"corpus": args.corpus, "evaluated": what, **metrics}
    if args.sample:
        payload["samples"] = {"with_prompt": sample_generations(generator, tokenizer, args.sample, prompt_text,
                                                                seed=args.seed),
                              "no_prompt": sample_generations(model, tokenizer, args.sample, seed=args.seed)}
    text = table(["evaluated", "perplexity", "bits per token", "report tokens"],
                 [[what, metrics["perplexity"], metrics["bits_per_token"], metrics["tokens"]],
                  ["no prompt", metrics["no_prompt_perplexity"], metrics["no_prompt_bits_per_token"],
                   metrics["tokens"]]])
    _print(args, payload, f"{text}\n{source.splits_line()}{_samples_text([payload])}")
    return payload


def _eval_pairs(args) -> dict:
    """The success rate on the report pairs (the ones `train` and `discover` hold out with the same seed and
    shares) of the adapter (where it puts its prompt) or of --prompt-text at --placement, and of no prompt."""
    from ..peft_boundary.adapters import adapter_prompt
    from ..placement import adapter_placement

    if args.manual or args.ensemble:
        raise ValueError("--manual and --ensemble are for tasks; with --pairs give --adapter or --prompt-text (or "
                         "neither, for no prompt).")
    source = _Source.from_args(args)
    if args.adapter:
        peft_model, tokenizer = _load_adapter(args)
        config = peft_model.peft_config["default"]
        placed = {"placement": config.placement, "template": config.template or source.template}
        prompt, model, what = adapter_prompt(peft_model, "default").detach(), peft_model.get_base_model(), args.adapter
    else:
        model, tokenizer = _model(args, "CAUSAL_LM")
        placed = adapter_placement(tokenizer, source.template, args.placement, args.chat)
        text = args.prompt_text or ""
        prompt = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        what = f"prompt text {text!r} at {placed['placement']}" if text else "no prompt"
    objective = source.objective(tokenizer, template=_scored_template(tokenizer, placed))
    rate = objective.success_rate(model, prompt, "eval")
    rows = [[what, rate]]
    payload = {"pairs": args.pairs, "evaluated": what, "success_rate": rate, "examples": len(source.pairs.report)}
    if prompt.numel():  # the same messages with no prompt at all (a chat: its template's own default system turn)
        from ..objectives.templates import CHAT_PLACEMENTS
        from ..placement import placed_template

        chat = placed["placement"] in CHAT_PLACEMENTS
        plain = objective if not chat else source.objective(
            tokenizer, template=placed_template(tokenizer, placed["template"], "prefix", chat=True))
        payload["no_prompt_success_rate"] = plain.success_rate(model, prompt[:0], "eval")
        rows.append(["no prompt", payload["no_prompt_success_rate"]])
    _print(args, payload, table(["evaluated", "success rate"], rows) + f"\n{source.splits_line()}")
    return payload


def _eval_ensemble(args, task, data) -> dict:
    """All adapters in one model, every example scored by each in one mixed pass, then combined both ways."""
    from peft import PeftConfig

    from ..metrics import compute_metrics
    from ..serving import load_adapters, score_ensemble
    from ..serving.ensemble import COMBINE_METHODS
    from .tasks import task_objective

    configs = [PeftConfig.from_pretrained(folder) for folder in args.ensemble]
    task_types = {str(config.task_type) for config in configs}
    if len(task_types) > 1:
        raise ValueError(f"The ensemble's adapters are for different task types {sorted(task_types)}; "
                         "give adapters trained for one task type.")
    bases = {config.base_model_name_or_path for config in configs}
    if len(bases) > 1 and not args.model:
        raise ValueError(f"The ensemble's adapters were trained on different base models {sorted(map(str, bases))}; "
                         "give --model to choose the one they all fit.")
    task_type = task_types.pop()
    base, tokenizer = _model(args, task_type, default=configs[0].base_model_name_or_path)
    names = {f"member{i}": folder for i, folder in enumerate(args.ensemble)}  # folder names may repeat ("best")
    model = load_adapters(base, names)
    started = time.time()
    scores = score_ensemble(model, task_objective(task, data, tokenizer, task_type), list(names), split="eval")
    seconds = time.time() - started
    labels, rows = scores.labels, []
    for name, predictions in scores.member_predictions().items():
        rows.append([f"adapter {names[name]}", compute_metrics(predictions, labels)])
    for combine in COMBINE_METHODS:
        rows.append([f"ensemble ({combine})", compute_metrics(scores.predictions(combine), labels)])
    payload = {"task": task.name, "examples": len(labels), "seconds": round(seconds, 2),
               "examples_per_second": round(len(labels) / seconds, 1), "combine": args.combine,
               "results": [{"evaluated": what, **metrics} for what, metrics in rows],
               "accuracy": scores.accuracy(args.combine)}
    text = table(["evaluated", "accuracy", "macro-F1"], [[w, m["accuracy"], m["macro_f1"]] for w, m in rows])
    _print(args, payload, f"{text}\n{len(labels)} examples x {len(names)} prompts in one batched pass: "
                          f"{seconds:.1f} s; the ensemble's answer (--combine {args.combine}): "
                          f"{payload['accuracy']:.4f}")
    return payload


def cmd_project(args) -> dict:
    from dataclasses import asdict

    from ..reading import project_prompt

    model, tokenizer = _load_adapter(args)
    reading = project_prompt(model, tokenizer, top_k=args.top_k, metric=args.metric,
                             constrained=not args.all_vocabulary)
    payload = asdict(reading)
    _print(args, payload, f"{reading.table()}\ntext: {reading.text!r}")
    return payload


def cmd_export(args) -> dict:
    from ..files import export_kobold, export_prompt_tuning
    from ..reading import placed_text

    model, tokenizer = _load_adapter(args)
    out, extra = Path(args.out), {}
    if args.to == "prompt-tuning":
        export_prompt_tuning(model, out)
    elif args.to == "kobold":
        export_kobold(model, out, name=args.name or out.stem, author=args.author, description=args.description)
    else:  # the prompt as text where it goes: a hard prompt's tokens, or a soft prompt's nearest-token reading
        placed = placed_text(model, tokenizer)
        write_text_atomically(out, placed.text)
        extra = {"placement": placed.placement, "round_trips": placed.round_trips}
        if placed.mode == "soft":
            logger.warning("A soft prompt's text is only its nearest-token reading; it need not behave the same.")
        elif not placed.round_trips:
            logger.warning("Pasted in its place, this text tokenizes differently from the prompt's ids at its edges: "
                           "it is not exactly the prompt that was scored (word-start, round-trip-only tokens avoid "
                           "this).")
    payload = {"adapter": args.adapter, "format": args.to, "written": str(out), **extra}
    _print(args, payload, f"wrote {args.to} to {out}")
    return payload


def cmd_import(args) -> dict:
    from ..files.kobold import read_kobold, soft_prompt_adapter

    vectors, meta = read_kobold(args.zip)  # a bad file is refused before the model loads
    base, _ = _model(args, "CAUSAL_LM")
    save_adapter_atomically(soft_prompt_adapter(base, vectors), args.out)
    payload = {"imported": args.zip, "meta": meta, "num_virtual_tokens": len(vectors), "adapter": args.out}
    _print(args, payload, f"imported {meta.get('name', args.zip)!r} ({len(vectors)} vectors) to {args.out}")
    return payload


def cmd_demo(args) -> dict:
    from ..optimization.discovery import DiscoveryConfig
    from .demo import DemoConfig, run_demo
    from .options import config_from_args

    return run_demo(args, config_from_args(DemoConfig, args),
                    config_from_args(DiscoveryConfig, args, seed=args.seed, show_progress=not args.json))


# ------------------------------------------------------------------------------------------------ parser
def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The `softhard` parser; `preset` (of `softhard discover --preset`) sets that command's defaults."""
    parser = argparse.ArgumentParser(prog="softhard", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n")[1])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_project, _add_export, _add_import, _add_demo):
        add(commands)
    _add_discover(commands, preset)
    return parser


def _add_train(commands) -> None:
    from ..optimization.loop import OPTIMIZERS
    from ..optimization.training import TrainConfig
    from .options import add_config_options

    train = commands.add_parser("train", help="train a soft (or hard) prompt on a task",
                                description="Train a SOFTHARD prompt; the best adapter is kept; --resume continues.")
    _add_model_and_task(train)
    _add_corpus(train, outputs=True)
    train.add_argument("--mode", default="soft", choices=["soft", "hard"], help="default %(default)s")
    train.add_argument("--num-virtual-tokens", type=int, nargs="+", default=[10],
                       help="prompt length; several values train one prompt each and plot score vs length")
    # the task's instruction and TrainConfig's lr: the best on validation rows (benchmarks/settings.py)
    _add_placement(train)
    _add_prompt_init(train, task_default="manual")
    add_config_options(train, TrainConfig, skip=("seed", "show_progress"), choices={"optimizer": OPTIMIZERS},
                       title="optimisation (TrainConfig)")
    _add_resume(train)
    _add_output(train, "out/train")
    train.set_defaults(handler=cmd_train)


def discover_defaults(preset: str | None) -> dict:
    """The `DiscoveryConfig` fields a preset sets and the task options it changes (`--preset`; explicit options
    still win); none without a preset: `DiscoveryConfig`'s own defaults are discover's."""
    from ..optimization.discovery import preset_settings

    if preset is None:
        return {}
    # the reference's own init and selection rows; it trains on the rest of the train split
    return {**preset_settings(preset), "init": "labels", "validation_rows": 5000, "max_train": None}


# discover's options for `DiscoveryConfig` fields, where their names predate the config's
DISCOVER_NAMES = {"num_restarts": "restarts", "gcg_top_k": "top-k", "gcg_candidates": "candidates"}


def _add_search(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """The hard-prompt search's options (`DiscoveryConfig`'s fields; a preset's `defaults`), for discover and demo."""
    from ..objectives.templates import PLACEMENTS
    from ..optimization.discovery import STAGES, TOKEN_METHODS, DiscoveryConfig
    from ..optimization.loop import OPTIMIZERS
    from .options import add_config_options

    fields = {k: v for k, v in (defaults or {}).items() if k in DiscoveryConfig.__dataclass_fields__}
    add_config_options(parser, DiscoveryConfig, skip=("seed", "show_progress"), rename=DISCOVER_NAMES,
                       choices={"method": TOKEN_METHODS, "placement": PLACEMENTS, "stages": STAGES,
                                "optimizer": OPTIMIZERS},
                       defaults=fields, title="the hard prompt's search (DiscoveryConfig)")


def _add_discover(commands, preset: str | None = None) -> None:
    from ..optimization.discovery import PRESETS

    defaults = discover_defaults(preset)
    discover = commands.add_parser("discover", help="discover a hard prompt: label words, tokens at a slot, template "
                                   "edits", description="Search for the best whole prompt of real tokens (label "
                                   "words, tokens at a slot of the template, template edits); --resume continues.")
    _add_model_and_task(discover, task_type=False)
    _add_corpus(discover, outputs=True)
    discover.add_argument("--preset", choices=list(PRESETS),
                          help="a named setting: pez-reference is the PEZ paper's language-model code (10 tokens in "
                               "front, Adafactor lr 0.3, 5000 steps of 16, label-word init, 5000 validation rows)")
    _add_prompt_init(discover, task_default=defaults.get("init", "manual"), soft=True)
    _add_search(discover, defaults)
    _add_resume(discover)
    discover.add_argument("--calibrate", action="store_true",
                          help="also report the eval rows with contextual calibration (Zhao et al. 2021; it changes "
                               "decoding, so it is never part of the prompt you paste)")
    discover.add_argument("--distill-from", metavar="ADAPTER",
                          help="a trained soft prompt: match its class distribution on the training rows (KL) "
                               "instead of the labels; validation still chooses by accuracy")
    discover.add_argument("--ascii-only", action="store_true", help="only printable-ASCII tokens")
    discover.add_argument("--word-start-only", action="store_true", help="only tokens that start a word")
    discover.add_argument("--round-trip-only", action="store_true", help="only tokens that re-encode as themselves")
    _add_output(discover, "out/discover")
    # (--init's default depends on what is searched on, a task or a corpus: resolved in `parse_args`)
    discover.set_defaults(handler=cmd_discover,
                          **{k: v for k, v in defaults.items() if k in ("validation_rows", "max_train")})


def _add_eval(commands) -> None:
    evaluate = commands.add_parser("eval", help="score an adapter, a prompt text or the manual prompt on a task",
                                   description="Accuracy and macro-F1 on the task's evaluation split.")
    _add_model_and_task(evaluate, task_type=False)
    _add_placement(evaluate)
    _add_corpus(evaluate)
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--adapter", help="a saved SOFTHARD (or exported PROMPT_TUNING) adapter folder")
    which.add_argument("--prompt-text", help="a hard prompt given as text, put at --placement (default: in front "
                                             "of the task's template)")
    which.add_argument("--manual", action="store_true", help="the task's hand-written zero-shot prompt")
    which.add_argument("--prompt-file", help="a whole prompt `softhard discover` wrote (prompt.json: its template, "
                                             "tokens and label words)")
    which.add_argument("--ensemble", nargs="+", metavar="ADAPTER",
                       help="several saved adapters scored in one batched pass, each alone and combined")
    evaluate.add_argument("--calibrate", action="store_true",
                          help="also report with contextual calibration (Zhao et al. 2021: the label bias on content-"
                               "free inputs divided out; it changes decoding, not the prompt)")
    evaluate.add_argument("--combine", default="mean", choices=["mean", "vote"],
                          help="ensemble: mean class log-probability or majority vote (default %(default)s)")
    _add_output(evaluate)
    evaluate.set_defaults(handler=cmd_eval)


def _add_project(commands) -> None:
    project = commands.add_parser("project", help="read a saved adapter's prompt as tokens",
                                  description="The nearest tokens of each prompt vector, with distances.")
    project.add_argument("--adapter", required=True, help="a saved SOFTHARD adapter folder")
    project.add_argument("--model", help="base model (default: the adapter's own)")
    project.add_argument("--top-k", type=int, default=5, help="default %(default)s")
    project.add_argument("--metric", choices=["cosine", "dot", "l2"], help="default: the adapter's own")
    project.add_argument("--all-vocabulary", action="store_true", help="read against every token, special ones too")
    _add_device(project)
    _add_output(project)
    project.set_defaults(handler=cmd_project)


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="export an adapter as PROMPT_TUNING, text or a KoboldAI zip")
    export.add_argument("--adapter", required=True, help="a saved SOFTHARD adapter folder")
    export.add_argument("--model", help="base model (default: the adapter's own)")
    export.add_argument("--to", required=True, choices=["prompt-tuning", "text", "kobold"], help="the format")
    export.add_argument("--out", required=True, help="output folder (prompt-tuning) or file (text, kobold .zip)")
    export.add_argument("--name", help="kobold: the prompt's name")
    export.add_argument("--author", default="", help="kobold: author")
    export.add_argument("--description", default="", help="kobold: description")
    _add_device(export)
    _add_output(export)
    export.set_defaults(handler=cmd_export)


def _add_import(commands) -> None:
    imported = commands.add_parser("import", help="import a KoboldAI soft-prompt zip as a SOFTHARD adapter",
                                   description="Validates the zip (members, shape, dtype, NaN/Inf; no pickle).")
    imported.add_argument("zip", help="the KoboldAI .zip")
    imported.add_argument("--model", help="base model the prompt is for (default smollm2-135m)")
    imported.add_argument("--out", required=True, help="adapter folder to write")
    _add_device(imported)
    _add_output(imported)
    imported.set_defaults(handler=cmd_import)


def _add_demo(commands) -> None:
    from .demo import DemoConfig
    from .options import add_config_options
    from .tasks import BUILT_IN

    demo = commands.add_parser("demo", help="the main job: manual vs soft vs hard prompts on SST-2 (5-13 min)",
                               description="On the embedded default model and SST-2 (or AG News): the manual "
                                           "prompt's accuracy, a trained soft prompt, a hard prompt discovered by "
                                           "`softhard discover`'s own search, the soft prompt's reading, and a plot "
                                           "of the training curves. Steps are chosen on validation rows from the "
                                           "train split; dev rows are scored once.")
    demo.add_argument("--model", default=None, help="default smollm2-135m")
    demo.add_argument("--data-dir", help="folder with sst2/ or ag_news/ (default ../shared/data, else the hub)")
    add_config_options(demo, DemoConfig, choices={"task": BUILT_IN})  # the same settings as DemoConfig()
    _add_search(demo)  # the hard prompt: discover's own search and options, so the two never differ
    _add_device(demo)
    _add_output(demo, "out/demo")
    demo.set_defaults(handler=cmd_demo)


def _add_model_and_task(parser: argparse.ArgumentParser, task_type: bool = True) -> None:
    group = parser.add_argument_group("model and task")
    group.add_argument("--model", default=None,
                       help="short name (smollm2-135m, minilm), local path or hub name; default smollm2-135m, or "
                            "the adapter's own base model")
    if task_type:
        group.add_argument("--task-type", default="CAUSAL_LM", choices=["CAUSAL_LM", "SEQ_CLS"],
                           help="CAUSAL_LM: template + label words; SEQ_CLS: a classification head")
    group.add_argument("--task", default="sst2", help="sst2, ag_news, or a task .json/.yaml file (default %(default)s)")
    group.add_argument("--train-file", help="custom task: training data (.csv, .tsv, .jsonl; relative to the working "
                                            "directory) or hub:NAME[:CONFIG]")
    group.add_argument("--eval-file", help="custom task: evaluation data, same forms")
    group.add_argument("--text-column", default="text", help="custom task: text column (default %(default)s)")
    group.add_argument("--label-column", default="label", help="custom task: label column (default %(default)s)")
    group.add_argument("--template", help="the input around the example: must contain {text} and may mark where a "
                                          "prompt goes with {prompt}; \\n is a newline (custom task, or override)")
    group.add_argument("--label-word", action="append", dest="label_words", metavar="WORD",
                       help="one per class in label order (repeat), e.g. --label-word ' no'; a custom task needs "
                            "them, a built-in task's are replaced")
    group.add_argument("--data-dir", help="local copies of the built-in tasks' data (default ../shared/data)")
    group.add_argument("--max-train", type=int, default=2000, help="training examples used (default %(default)s)")
    group.add_argument("--validation-rows", type=int, default=500,
                       help="rows carved from the train split (disjoint from training) that choose the best step; "
                            "the eval split is scored once, at the end (default %(default)s)")
    group.add_argument("--max-eval", type=int, default=None,
                       help="a seeded subset of the eval split (default: all of it)")
    group.add_argument("--seed", type=int, default=0, help="seed for subsets, initialisation and batches")
    _add_device(group)


def _add_placement(parser: argparse.ArgumentParser) -> None:
    from ..method.config import PLACEMENTS, SoftHardConfig

    group = parser.add_argument_group("where the prompt goes (docs/placement.md)")
    group.add_argument("--placement", choices=PLACEMENTS,
                       help=SoftHardConfig.__dataclass_fields__["placement"].metadata["help"].split(". ")[0] +
                       "; default: slot if --template marks {prompt}, else prefix")
    group.add_argument("--chat", action="store_true",
                       help="put the task's template in the model's chat template as the user message, the answer "
                            "where the assistant's turn begins (system and suffix always do)")


def _add_corpus(parser: argparse.ArgumentParser, outputs: bool = False) -> None:
    group = parser.add_argument_group("corpus or pairs: a style or domain prompt trained on text, or a prompt trained "
                                      "on messages and their targets, instead of a task")
    group.add_argument("--corpus", metavar="FILE",
                       help="plain text (documents separated by blank lines), .jsonl with a text field, or "
                            "hub:NAME[:CONFIG][@SPLIT]; the loss is the text's own (language modelling)")
    group.add_argument("--text-field", default="text", help="the text field of .jsonl / hub rows (default %(default)s)")
    group.add_argument("--chunk-tokens", type=int, default=128,
                       help="documents are cut into chunks of at most this many tokens (default %(default)s)")
    group.add_argument("--validation-share", type=float, default=0.1,
                       help="share of the documents held out to choose the best step (default %(default)s)")
    group.add_argument("--report-share", type=float, default=0.1,
                       help="share of the documents held out and scored once, at the end (default %(default)s); "
                            "eval --corpus scores the same documents")
    group.add_argument("--sample", type=int, default=0, metavar="N",
                       help="print N generations from fixed opening lines, with and without the prompt")
    group.add_argument("--pairs", metavar="FILE",
                       help="(message, target) pairs instead of a task: a .jsonl file of {\"message\", \"target\"} "
                            "objects; one prompt (e.g. --placement system) that makes the model answer each message "
                            "with its target. The shares below hold out validation and report pairs")
    if outputs:
        group.add_argument("--kobold", metavar="ZIP", help="also write the best prompt as a KoboldAI soft-prompt zip")


def _add_device(parser: Any) -> None:  # a parser or an argument group
    parser.add_argument("--device", default="auto",
                        help="where the model runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda, "
                             "cuda:1, mps (default %(default)s)")


def _add_output(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--output-dir", default=default, help="where results go (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")


def _add_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output-dir")


def _add_prompt_init(parser: argparse.ArgumentParser, task_default: str, soft: bool = False) -> None:
    from .tasks import PROMPT_INITS

    choices = PROMPT_INITS if soft else [init for init in PROMPT_INITS if init != "soft"]
    parser.add_argument("--init", choices=choices,
                        help="where the prompt starts: vocab (random tokens), random, text (--init-text), manual "
                             "(the task's instruction), labels (the label words repeated)"
                             + (", soft (a trained soft prompt's reading, --init-adapter)" if soft else "")
                             + f" (default {task_default}; with --corpus, vocab)")
    parser.add_argument("--init-text", help="with --init text: the text the prompt starts from")
    if soft:
        parser.add_argument("--init-adapter", metavar="ADAPTER", help="with --init soft: a trained soft prompt folder")
    parser.add_argument("--metric", default="cosine", choices=["cosine", "dot", "l2"], help="projection metric")
    parser.set_defaults(task_init=task_default)  # `parse_args` fills in --init: this for a task, vocab for a corpus


def _quiet_libraries() -> None:
    """Our own progress bars and tables are the output; the libraries' loading bars and notices are noise."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Position ids are not supported")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):  # parse again with the preset's defaults under the explicit options
        args = build_parser(args.preset).parse_args(argv)
    if getattr(args, "init", "") is None:  # where a prompt starts by default depends on what it is trained for
        args.init = "vocab" if args.corpus or args.pairs else args.task_init  # no instruction, no label words
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    init_from_environment()  # under torchrun / accelerate launch: data parallelism, rank 0 reports and writes
    if not is_main_process():
        os.environ["TQDM_DISABLE"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        args.handler(args)
    except KeyboardInterrupt:
        where = getattr(args, "output_dir", None)
        print(f"\nInterrupted. The best prompt so far and a checkpoint are in {where}; add --resume to continue.",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"softhard {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
