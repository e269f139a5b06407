"""A randomly initialised checkpoint of the embedded model's size and tokenizer, for the benches
that take a model directory (``bench_serving.py --model DIR``) on another architecture.

    python bench/random_checkpoint.py phi3 /tmp/phi3      # also: gpt_neox, gemma, opt, qwen3_moe, ...

Any decoder-only ``model_type`` transformers knows; 6 layers, width 256, 8 heads (4 key/value
heads where the architecture has them), MLP 704, vocabulary 6144, seed 0, safetensors.
"""

from __future__ import annotations

import argparse
import shutil

import torch
import transformers

from decodekit.models import embedded_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_type")
    parser.add_argument("directory")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        args.model_type, vocab_size=6144, hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(args.directory, safe_serialization=True)
    source = embedded_model_path("stdlib-code")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, f"{args.directory}/{name}")
    print(f"{type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {args.directory}")


if __name__ == "__main__":
    main()
