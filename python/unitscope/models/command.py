"""`unitscope models`: the registered models (names for --model), what each is, its input size and
where its weights come from; every one also loads randomly initialized (models.load(pretrained=False))."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--check", action="store_true",
                   help="also load each model's weights and say whether it loads here (default: only list them)")


def run(args) -> int:
    from unitscope import models

    for name, what in models.describe().items():
        line = f"{name:20s} {what}"
        if args.check:
            try:
                models.load(name)
                line += "  [loads]"
            except ImportError as e:
                line += f"  [not installed: {' '.join(str(e).split())}]"
        print(line)
    print("each also loads randomly initialized: models.load(name, pretrained=False, seed=N); your own network: "
          "--model MODULE:FACTORY --weights FILE (see docs/comparing.md)")
    return 0
