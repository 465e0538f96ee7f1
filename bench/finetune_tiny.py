"""How many people and epochs a tiny pretrained model needs before fine-tuning teaches it
to answer held-out people: the size behind the fine-tuning workflow test.

    python bench/finetune_tiny.py --family gpt2 --people 200 --epochs 12 --layers 2 \
        --width 128 --lr 0.005

Builds the tests' tiny pretrained model (`tests/tiny_pretrained.py`: its own BPE, one
epoch on generated text that states no person's attribute), fine-tunes it with
`lm.finetune`'s function on the built-in biographies (seed 0) and prints whole-answer
accuracy per slice before and after, and the fine-tuning time. The epoch kept is chosen
on validation people; test people are only reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_pretrained import build_pretrained  # noqa: E402

from supervised_sae.data.biographies import build_dataset  # noqa: E402
from supervised_sae.lm.finetune import finetune_lm  # noqa: E402
from supervised_sae.lm.fit import Schedule  # noqa: E402
from supervised_sae.lm.load import answer_accuracy, load_lm  # noqa: E402


def accuracies(folder: Path, prompts) -> dict[str, float]:
    model, tokenizer = load_lm(folder)
    return {k: round(v["accuracy"], 3) for k, v in answer_accuracy(model, tokenizer,
                                                                    prompts).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["gpt2", "llama"], default="gpt2")
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--lr", type=float, default=0.005)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pretrained = build_pretrained(root / "pretrained", args.family, n_layer=args.layers,
                                      width=args.width, vocab_size=args.vocab)
        _, bios, prompts = build_dataset(args.people, 4, 0.5, 2, 0, validation_fraction=0.2)
        before = accuracies(pretrained, prompts)
        start = time.perf_counter()
        finetune_lm(bios, prompts, pretrained, root / "tuned", root / "ckpt",
                    Schedule(args.epochs, 32, args.lr))
        seconds = time.perf_counter() - start
        origin = json.loads((root / "tuned/lm_origin.json").read_text())
        print(json.dumps({**vars(args), "before": before, "after": accuracies(root / "tuned",
                                                                              prompts),
                          "kept_epoch": origin["chosen_epoch"],
                          "finetune_seconds": round(seconds, 1)}, indent=1))


if __name__ == "__main__":
    main()
