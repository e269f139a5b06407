"""``python -m decodekit.train``: corpus, tokenizer, target + draft, evaluation, export.

Stages (``--stage``): ``prepare`` (corpus split, tokenizer, packed token
stream), ``sweep`` (which target shape the budget buys: :mod:`decodekit.train.sweep`),
``target`` and ``draft`` (time-budgeted training, resumable; the two may run at
the same time in separate processes), ``export`` (held-out evaluation, samples,
parse rates, the draft's agreement and acceptance, HF directories, model card),
``quality`` (the parse rates, agreement and acceptance of the models already
exported) and ``all`` (prepare, target, draft, export). Scratch files live under
``--work``; nothing there is shipped.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file
from transformers import AutoTokenizer

from decodekit.train.card import cpu_name
from decodekit.train.corpus import collect_corpus, write_manifest
from decodekit.train.evaluate import held_out_loss
from decodekit.train.export import evaluate_model, export_model, greedy_samples
from decodekit.train.loop import MODEL_SIZES, TrainSettings, build_model, parameter_count, train
from decodekit.train.packages import collect_code_corpus
from decodekit.train.quality import draft_acceptance, greedy_agreement, parse_samples
from decodekit.train.tokenizer import check_round_trip, encode_file, save_tokenizer, train_tokenizer

PACKAGE_MODELS = Path(__file__).resolve().parent.parent / "models"
MODEL_NAMES = {"target": "stdlib-code", "draft": "stdlib-code-draft"}
CODE_PACKAGES = (
    "torch", "transformers", "numpy", "tokenizers", "safetensors", "huggingface_hub", "fastapi", "pydantic",
    "starlette", "uvicorn", "anyio", "httpx", "prometheus_client", "tqdm", "sacrebleu", "matplotlib", "jinja2",
    "hypothesis", "packaging", "filelock", "fsspec", "requests", "urllib3",
)
"""The code corpus's packages: decodekit's dependencies and theirs, as installed."""
HELD_OUT_PACKAGES = ("networkx", "click")
"""Held out whole: the loss on code from projects the model never saw."""
HELD_OUT_MAX_TOKENS = 2048  # per held-out file, to bound the evaluation


def load_corpus(args: argparse.Namespace, kind: str):
    """The corpus ``--stage prepare`` split (``kind``: "stdlib" or "code")."""
    if kind == "code":
        return collect_code_corpus(args.packages, args.held_out)
    return collect_corpus()


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m decodekit.train", description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("all", "prepare", "sweep", "target", "draft", "export", "quality"), default="all")
    parser.add_argument("--out", type=Path, default=PACKAGE_MODELS, help="where the exported models go")
    parser.add_argument("--work", type=Path, default=Path("runs/train"), help="scratch: checkpoints, logs")
    parser.add_argument("--card", type=Path, default=None, help="write the model card here (export)")
    parser.add_argument("--vocab-size", type=int, default=6144)
    parser.add_argument("--corpus", choices=("stdlib", "code"), default="stdlib",
                        help="stdlib: the standard library; code: it plus installed packages' sources (prepare)")
    parser.add_argument("--packages", nargs="+", default=list(CODE_PACKAGES), help="code corpus: packages trained on")
    parser.add_argument("--held-out", nargs="+", default=list(HELD_OUT_PACKAGES), help="code corpus: packages only evaluated")
    parser.add_argument("--target-minutes", type=float, default=35.0)
    parser.add_argument("--draft-minutes", type=float, default=25.0)
    parser.add_argument("--target-size", choices=sorted(MODEL_SIZES), default="target")
    parser.add_argument("--draft-size", choices=sorted(MODEL_SIZES), default="draft")
    parser.add_argument("--target-hidden", type=int, help="override the preset's hidden size")
    parser.add_argument("--target-layers", type=int, help="override the preset's layer count")
    parser.add_argument("--draft-hidden", type=int)
    parser.add_argument("--draft-layers", type=int)
    parser.add_argument("--sweep-shapes", nargs="+", default=["192x4", "256x6", "384x6", "512x8"],
                        help="sweep: target shapes HIDDENxLAYERS, each trained --sweep-minutes")
    parser.add_argument("--sweep-minutes", type=float, default=10.0, help="sweep: training minutes per shape")
    parser.add_argument("--target-lr", type=float, default=2e-3)
    parser.add_argument("--draft-lr", type=float, default=3e-3)
    parser.add_argument("--sequence-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=None, help="also stop after this many steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--device", default="cpu", help="where target and draft train: cpu, cuda, cuda:1, ...")
    parser.add_argument("--bf16", action="store_true", help="forward under bfloat16 autocast (weights stay float32)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--resume", action="store_true", help="continue from --work's checkpoints")
    args = parser.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: {args.device!r} is not a torch device (cpu, cuda, cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch build sees no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: cpu or cuda")
    return args


def prepare(args: argparse.Namespace) -> None:
    """Corpus split, tokenizer and the packed training stream, under ``--work``."""
    work = args.work
    if args.resume and (work / "train_tokens.safetensors").exists():
        return
    work.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args, args.corpus)
    write_manifest(corpus, work / "corpus.json")
    tokenizer = train_tokenizer((corpus.texts[p] for p in corpus.train), args.vocab_size)
    check_round_trip(tokenizer, [corpus.texts[p] for p in corpus.validation])
    save_tokenizer(tokenizer, work / "tokenizer")
    ids: list[int] = []
    for path in corpus.train:
        ids.extend(encode_file(tokenizer, corpus.texts[path]))
    save_file({"tokens": torch.tensor(ids, dtype=torch.int32)}, str(work / "train_tokens.safetensors"))
    print(f"corpus: {len(corpus.train)} train / {len(corpus.validation)} validation files, "
          f"{len(ids)} training tokens")


def model_size(args: argparse.Namespace, role: str):
    size = MODEL_SIZES[getattr(args, f"{role}_size")]
    hidden = getattr(args, f"{role}_hidden")
    layers = getattr(args, f"{role}_layers")
    if hidden:
        size = replace(size, hidden=hidden, intermediate=(hidden * 11 // 4 + 63) // 64 * 64)
    if layers:
        size = replace(size, layers=layers)
    return size


def fresh_model(args: argparse.Namespace, role: str, tokenizer):
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    return build_model(model_size(args, role), len(tokenizer), special, args.seed)


def train_role(args: argparse.Namespace, role: str) -> None:
    """Train the target or the draft for its wall-clock budget."""
    work = args.work
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"), local_files_only=True)
    stream = load_file(str(work / "train_tokens.safetensors"))["tokens"]
    model = fresh_model(args, role, tokenizer)
    settings = TrainSettings(
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        peak_lr=getattr(args, f"{role}_lr"),
        budget_seconds=60.0 * getattr(args, f"{role}_minutes"),
        max_steps=args.max_steps,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
    )
    role_dir = work / role
    role_dir.mkdir(parents=True, exist_ok=True)
    print(f"{role}: {parameter_count(model):,} parameters, {asdict(model_size(args, role))}")
    started = time.time()
    first_start = role_dir / "started.json"  # kept across --resume: wall time of the whole run
    if not first_start.exists():
        first_start.write_text(json.dumps({"started": started}) + "\n")
    run_started = json.loads(first_start.read_text())["started"]
    state = train(model, stream, settings, role_dir / "checkpoint", role_dir / "log.jsonl",
                  resume=args.resume, description=role)
    summary = {
        "size": asdict(model_size(args, role)),
        "settings": asdict(settings),
        "state": asdict(state),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "cpu",
        "cpu": cpu_name(),
        "process_seconds": time.time() - started,
        "wall_seconds": time.time() - run_started,
    }
    (role_dir / "done.json").write_text(json.dumps(summary, indent=1) + "\n")


def export_all(args: argparse.Namespace) -> None:
    """Evaluate both trained models, export them, and optionally write the card."""
    work = args.work
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"), local_files_only=True)
    manifest = json.loads((work / "corpus.json").read_text())
    code = "held_out_packages" in manifest
    corpus = load_corpus(args, "code" if code else "stdlib")
    if corpus.validation != manifest["validation"]:
        raise RuntimeError("the corpus's sources changed since --stage prepare")
    # the standard library's own split: the same files whichever corpus trained the model
    validation = corpus.stdlib_validation if code else corpus.validation
    counts = {}
    budgets = {}
    models = {}
    for role, name in MODEL_NAMES.items():
        model = fresh_model(args, role, tokenizer)
        load_model(model, str(work / role / "checkpoint" / "model.safetensors"))
        model.eval()
        metrics = {
            "name": name,
            "role": role,
            "training": json.loads((work / role / "done.json").read_text()),
            **evaluate_model(model, tokenizer, corpus.texts, validation),
            "samples": greedy_samples(model, tokenizer),
            "parse": parse_samples(model, tokenizer),
        }
        if code:
            texts = [corpus.texts[p] for p in corpus.held_out]
            metrics["held_out_packages"] = {
                "packages": manifest["held_out_packages"],
                **asdict(held_out_loss(model, tokenizer, texts, max_tokens=HELD_OUT_MAX_TOKENS)),
                "max_tokens_per_file": HELD_OUT_MAX_TOKENS,
            }
        written = export_model(model, tokenizer, args.out / name, manifest, metrics)
        models[role] = model
        counts[role] = written["parameters"]
        budgets[role] = metrics["training"]["settings"]["budget_seconds"] / 60.0
        print(f"{name}: {written['parameters']:,} parameters, held-out "
              f"{written['validation_full']['nats_per_token']:.4f} nats/token")
    pair_metrics(args, models, tokenizer, [corpus.texts[p] for p in sorted(validation)])
    if counts["draft"] * 4 > counts["target"]:
        print("warning: the draft has more than a quarter of the target's parameters")
    if args.card is not None:
        from decodekit.train.card import write_card

        write_card(args.out, args.card, command=reproduce_command(args, budgets))


def pair_metrics(args: argparse.Namespace, models: dict, tokenizer, texts: list[str]) -> None:
    """The draft's agreement with the target and the acceptance it gets, into the target's
    metrics.json (the exported directories are what the draft proposer loads)."""
    path = args.out / MODEL_NAMES["target"] / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["draft_agreement"] = greedy_agreement(models["target"], models["draft"], tokenizer, texts)
    metrics["draft_acceptance"] = draft_acceptance(args.out / MODEL_NAMES["target"], args.out / MODEL_NAMES["draft"], texts)
    path.write_text(json.dumps(metrics, indent=1) + "\n")
    parsed = sum(s["parses"] for s in metrics["parse"])
    print(f"draft agreement {metrics['draft_agreement']['agreement']:.3f}, acceptance "
          f"{metrics['draft_acceptance']['acceptance_rate']:.3f}; target blocks parsing: {parsed}/{len(metrics['parse'])}")


def quality(args: argparse.Namespace) -> None:
    """Parse rates, the draft's agreement and acceptance of the models already in ``--out``
    (into their metrics.json; with ``--card``, into that card's sections of the same name)."""
    from transformers import AutoModelForCausalLM

    directories = {role: args.out / name for role, name in MODEL_NAMES.items()}
    tokenizer = AutoTokenizer.from_pretrained(str(directories["target"]), local_files_only=True)
    manifest = json.loads((directories["target"] / "corpus.json").read_text())
    code = "held_out_packages" in manifest
    corpus = load_corpus(args, "code" if code else "stdlib")
    validation = corpus.stdlib_validation if code else corpus.validation
    models = {}
    for role, directory in directories.items():
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).to(args.device).eval()
        path = directory / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["parse"] = parse_samples(model, tokenizer)
        path.write_text(json.dumps(metrics, indent=1) + "\n")
        models[role] = model
    pair_metrics(args, models, tokenizer, [corpus.texts[p] for p in sorted(validation)])
    if args.card is not None:
        from decodekit.train.card import update_quality

        update_quality(args.out, args.card)


def reproduce_command(args: argparse.Namespace, budgets: dict[str, float]) -> str:
    return (f"python -m decodekit.train --stage all --target-minutes {budgets['target']:g} "
            f"--draft-minutes {budgets['draft']:g} --seed {args.seed}"
            + (f" --device {args.device}" if args.device != "cpu" else "") + (" --bf16" if args.bf16 else "")
            + " --card MODEL.md")


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    torch.set_num_threads(args.threads)
    stages = ("prepare", "target", "draft", "export") if args.stage == "all" else (args.stage,)
    for stage in stages:
        if stage == "prepare":
            prepare(args)
        elif stage == "export":
            export_all(args)
        elif stage == "quality":
            quality(args)
        elif stage == "sweep":
            from decodekit.train.sweep import sweep

            sweep(args)
        else:
            train_role(args, stage)


if __name__ == "__main__":
    main()
