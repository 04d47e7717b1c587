"""Recipe loading: every shipped recipe validates; bad recipes fail early with the file and the key."""

from pathlib import Path

import pytest

from rlvr.config import RecipeError, load_recipe, looks_local, parse_overrides, resolve_local

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_loads_and_has_a_launch_header(path):
    recipe = load_recipe(path)
    assert Path(recipe.data.path).is_file()
    header = path.read_text().split("\n\n")[0]
    assert "rlvr.train" in header or "rlvr train" in header, "recipe header must give the launch command"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


DATA = str(ROOT / "data/toy/say_digit.jsonl")


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\ntrain:\n  lr: 1.0e-5\n  learning_rate: 3\n")
    with pytest.raises(RecipeError, match=r"r\.yaml") as err:
        load_recipe(path)
    assert "train.learning_rate: unknown key" in str(err.value)


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\ntrain:\n  prompts_per_step: many\n")
    with pytest.raises(RecipeError, match=r"train\.prompts_per_step"):
        load_recipe(path)


def test_missing_data_file(tmp_path):
    path = write(tmp_path, "data:\n  path: nowhere/train.jsonl\n")
    with pytest.raises(RecipeError, match=r"data\.path: file not found: nowhere/train\.jsonl"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("smollm2-135m-instruct", False),  # a packaged alias
        ("Qwen/Qwen2.5-0.5B-Instruct", False),  # a hub id org/name
        ("openai/gsm8k", False),
        ("data/arithmetic/train.jsonl", True),  # a data-file ending
        ("train.parquet", True),
        ("gsm8k_test.jsonl.gz", True),
        ("./model", True),
        ("../runs/final", True),
        (".", True),
        ("/abs/path", True),
        ("~/models/x", True),
        ("runs/x/final", True),  # more than one "/"
        ("runs/", True),
    ],
)
def test_looks_local(name, local):
    assert looks_local(name) is local


def test_resolve_local(tmp_path, monkeypatch):
    base, extra = tmp_path.resolve() / "base", tmp_path.resolve() / "extra"
    base.mkdir()
    (base / "a.jsonl").write_text("")
    extra.mkdir()
    (extra / "b.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    assert resolve_local("base/a.jsonl", None) == base / "a.jsonl"  # found in the current directory
    assert resolve_local("a.jsonl", base) == base / "a.jsonl"  # in base_dir
    assert resolve_local("b.jsonl", base, None, extra) == extra / "b.jsonl"  # in a further root
    assert resolve_local(str(extra / "b.jsonl"), None) == extra / "b.jsonl"  # absolute
    assert resolve_local("b.jsonl", base) is None


def test_unknown_registry_name_lists_known(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\nalgorithm:\n  advantage: grpoo\n")
    with pytest.raises(RecipeError, match=r"algorithm\.advantage: unknown name 'grpoo'; known: .*grpo"):
        load_recipe(path)


def test_bad_verifier_reference(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\nrewards:\n  verifiers:\n    - name: missing.py:fn\n")
    with pytest.raises(RecipeError, match=r"rewards\.verifiers\[0\]\.name"):
        load_recipe(path)


def test_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\n")
    recipe = load_recipe(path, ["train.lr=1e-5", 'rollout.stop=["\\n\\n", END]', "run.name=x"])
    assert recipe.train.lr == 1e-5
    assert recipe.rollout.stop == ["\n\n", "END"]
    assert recipe.run.output_dir == "runs/x"
    with pytest.raises(RecipeError, match="train.nope: unknown key"):
        load_recipe(path, ["train.nope=1"])
    with pytest.raises(RecipeError, match="not of the form"):
        parse_overrides(["train.lr"])


def test_batch_layout(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\ntrain:\n  prompts_per_step: 4\n  micro_batch_size: 4\n")
    recipe = load_recipe(path, ["rollout.num_generations=4", "train.num_mini_batches=2"])
    # 4 prompts x 4 samples over 2 processes = 8 per process, 2 mini-batches of 4 -> 1 micro-batch each
    assert recipe.batch_layout(2) == {
        "prompts": 2,
        "samples": 8,
        "mini_batch": 4,
        "micro_batch": 4,
        "grad_accum": 1,
    }
    assert recipe.batch_layout(1)["grad_accum"] == 2
    with pytest.raises(RecipeError, match="divisible by the number of processes"):
        recipe.batch_layout(3)


def test_recipe_reference_doc_is_current():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts/recipe_reference.py"), "--check"], cwd=ROOT)
    assert proc.returncode == 0, "docs/recipes.md is stale: run python scripts/recipe_reference.py"


def test_exponent_floats_are_floats_in_free_form_kwargs(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 as a string; plug-in kwargs are not typed, so the loader must fix it
    path = tmp_path / "r.yaml"
    path.write_text("algorithm:\n  entropy_controller_kwargs: {target: 0.5, delta: 1e-4, max_coef: 5E-3}\n")
    recipe = load_recipe(path, ["algorithm.policy_loss_kwargs={clip_eps_high: 2.8e-1}"], check=False)
    assert recipe.algorithm.entropy_controller_kwargs == {"target": 0.5, "delta": 1e-4, "max_coef": 5e-3}
    assert recipe.algorithm.policy_loss_kwargs == {"clip_eps_high": 0.28}


def test_reward_route_accepts_a_single_value_or_a_list(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "rewards:\n  verifiers:\n    - {name: math, route: {task: math}}\n"
        "    - {name: math, route: {task: [code, tests], split: train}}\n"
    )
    recipe = load_recipe(path, check=False)
    assert [v.route for v in recipe.rewards.verifiers] == [
        {"task": ["math"]},
        {"task": ["code", "tests"], "split": ["train"]},
    ]


PLUGIN_TYPOS = [
    (
        ["algorithm.policy_loss=dapo", "algorithm.policy_loss_kwargs={clip_eps_hihg: 0.3}"],
        "algorithm.policy_loss_kwargs.clip_eps_hihg: unknown argument 'clip_eps_hihg' of policy loss 'dapo' "
        "(known: clip_eps_high, clip_eps_low, dual_clip_c)",
    ),
    (
        ["algorithm.advantage_kwargs={std_normalise: false}"],
        "algorithm.advantage_kwargs.std_normalise: unknown argument 'std_normalise' of advantage estimator "
        "'grpo'",
    ),
    (
        ["algorithm.policy_loss_kwargs={clip_eps_high: wide}"],
        "algorithm.policy_loss_kwargs.clip_eps_high: argument 'clip_eps_high' of policy loss 'grpo' "
        "expects float",
    ),
    (
        [
            "algorithm.kl_coef=0.1",
            "algorithm.kl_controller=adaptive",
            "algorithm.kl_controller_kwargs={targt: 1}",
        ],
        "algorithm.kl_controller_kwargs.targt: unknown argument 'targt' of KL controller 'adaptive'",
    ),
    (
        ["algorithm.kl_controller=adaptive", "algorithm.kl_controller_kwargs={target: 1}"],
        "algorithm.kl_controller_kwargs: coef must be > 0",  # the controller's own check, at load
    ),
    (
        ["algorithm.entropy_controller=adaptive", "algorithm.entropy_controller_kwargs={gated: sometimes}"],
        "algorithm.entropy_controller_kwargs.gated: argument 'gated' of entropy controller 'adaptive' "
        "expects bool",
    ),
    (
        ["algorithm.token_weights=[{name: tis, kwargs: {capp: 2.0}}]"],
        "algorithm.token_weights[0].kwargs.capp: unknown argument 'capp' of token weighting 'tis' "
        "(known: cap, level)",
    ),
    (
        ["rewards.verifiers=[{name: math, kwargs: {timeout: 3}}]"],
        "rewards.verifiers[0].kwargs.timeout: unknown argument 'timeout' of verifier 'math'",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), PLUGIN_TYPOS, ids=lambda v: str(v)[:40])
def test_plugin_arguments_are_checked_when_the_recipe_loads(tmp_path, overrides, message):
    path = write(tmp_path, f"data:\n  path: {DATA}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)
