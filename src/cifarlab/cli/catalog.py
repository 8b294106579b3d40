"""``cifarlab models`` and ``cifarlab recipes``: what can be trained."""

from __future__ import annotations

import argparse


def cmd_models(args: argparse.Namespace) -> int:
    from cifarlab.models.registry import MODELS, build_model, count_macs, count_params, model_summary

    print(f"{'name':<16} {'parameters':>12} {'MACs/image':>12}  description")
    for name in MODELS:
        model = build_model(name)
        print(f"{name:<16} {count_params(model):>12,} {count_macs(model):>12,}  {model_summary(name)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from cifarlab.config.train_config import RECIPE_HELP, RECIPES

    for name in RECIPES:
        print(f"{name:<16} {RECIPE_HELP.get(name, '')}")
    return 0


def register_models(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab models`` to the command line."""
    p = sub.add_parser("models", help="list the registered models with their size and cost")
    p.set_defaults(func=cmd_models)


def register_recipes(sub: argparse._SubParsersAction) -> None:
    """Add ``cifarlab recipes`` to the command line."""
    p = sub.add_parser("recipes", help="list the training recipes")
    p.set_defaults(func=cmd_recipes)
