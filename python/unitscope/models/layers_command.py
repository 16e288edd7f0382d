"""`unitscope layers`: the hookable layers of a model (registry name or MODULE:FACTORY), with their type,
output shape for an input size, and which are the usual choices; the names the layer arguments take."""
from __future__ import annotations


def add_arguments(p):
    from unitscope import cli
    from unitscope.models.own import add_model_arguments

    add_model_arguments(p, classes=False)
    p.add_argument("--input-size", type=cli.positive_int, default=None,
                   help="side of the square probe image the shapes are computed for (default: the registry "
                        "model's input size, 224 for MODULE:FACTORY)")
    p.add_argument("--usual", action="store_true",
                   help="list only the usual choices (activated feature maps) and the CAM layer (default: every layer)")


def run(args) -> int:
    from unitscope.models.layers import format_table, layers
    from unitscope.models.own import loaded_from_args

    lm = loaded_from_args(args, "cpu", input_size=args.input_size, classifier=False)
    rows = layers(lm.model, lm.input_size, preprocess=lm.preprocess)
    print(format_table(rows, only_usual=args.usual))
    print(f"{len(rows)} layer calls for a {lm.input_size[0]}x{lm.input_size[1]} image; 'usual': an activated "
          "feature map (dissect, featviz); 'CAM layer': the default of saliency's CAM methods and of explain")
    return 0
