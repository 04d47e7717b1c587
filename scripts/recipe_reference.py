"""Write docs/recipes.md, the reference of every recipe key, from the schema in rlvr/config.py.

python scripts/recipe_reference.py            # rewrite docs/recipes.md
python scripts/recipe_reference.py --check    # exit 1 if it is out of date (used by the tests)
"""

import sys
from pathlib import Path

from pydantic import BaseModel

from rlvr.config import DataSourceConfig, LoraSettings, PreferenceConfig, Recipe, RewardConfig

OUT = Path(__file__).resolve().parents[1] / "docs/recipes.md"

HEADER = """# Recipe reference

A recipe is a YAML file with the sections below; every key but `data.path` is optional and takes the
default shown.
Generated from `rlvr/config.py` by `python scripts/recipe_reference.py`; do not edit by hand.
Overrides on the command line use the dotted names: `rlvr train RECIPE.yaml train.lr=2.0e-6`.
"""


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return text or str(annotation).replace("typing.", "")


def table(model: type[BaseModel], prefix: str) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, sub in model.model_fields.items():
        default = "(required)" if sub.is_required() else repr(sub.get_default(call_default_factory=True))
        doc = " ".join((sub.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{prefix}{name}` | `{_type_name(sub.annotation)}` | `{default}` | {doc} |")
    return lines


def render() -> str:
    lines = [HEADER]
    for section, field in Recipe.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            lines += [f"\n## `{section}`\n", *table(model, f"{section}.")]
    lines += ["\n### each entry of `data.sources`\n", *table(DataSourceConfig, "")]
    lines += ["\n### each entry of `rewards.verifiers`\n", *table(RewardConfig, "")]
    lines += ["\n### `model.lora` (when set)\n", *table(LoraSettings, "model.lora.")]
    lines += ["\n### `algorithm.preference` (when set)\n", *table(PreferenceConfig, "algorithm.preference.")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)
    print(f"wrote {OUT}")
