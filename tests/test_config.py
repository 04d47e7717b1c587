"""Recipe loading: every shipped recipe validates; bad recipes fail early with the file and the key."""

from pathlib import Path

import pytest

from rlvr.config import RecipeError, load_recipe, looks_local, parse_overrides, resolve_local

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_loads_and_has_a_launch_header(path):
    recipe = load_recipe(path)
    files = [recipe.data.path] if recipe.data.path else [s.path for s in recipe.data.sources if s.path]
    assert files and all(Path(f).is_file() for f in files)
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
    with pytest.raises(
        RecipeError, match=r"^<command line> override train\.nope=1: train\.nope: unknown key$"
    ):
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
    (
        ["sampler.name=learnability", "sampler.kwargs={flor: 0.1}"],
        "sampler.kwargs.flor: unknown argument 'flor' of sampler 'learnability' (known: estimate, floor, "
        "prior)",
    ),
    (
        ["sampler.name=pass_rate_filter", "sampler.kwargs={cooldown: soon}"],
        "sampler.kwargs.cooldown: argument 'cooldown' of sampler 'pass_rate_filter' expects",
    ),
    (
        ["sampler.name=difficulty_schedule", "sampler.kwargs={field: level}"],
        "sampler.kwargs.pace_steps: sampler 'difficulty_schedule' needs argument(s) pace_steps",
    ),
    # reward-model specs: checked without loading a model (rlvr.scoring.check_reward_model_spec)
    (
        ["rewards.reward_models=[{name: rm, model: {path: my-org/rm, batchsize: 2}}]"],
        "rewards.reward_models[0].model.batchsize: unknown reward model key(s) ['batchsize']",
    ),
    (
        ["rewards.reward_models=[{name: rm, model: {ensemble: [a/rm, b/rm], combine: avg}}]"],
        "rewards.reward_models[0].model.combine: unknown reward-model ensemble combine 'avg'; known: ",
    ),
    (
        ["rewards.reward_models=[{name: rm, model: {ensemble: [a/rm, b/rm], combine: uwo, lam: -1}}]"],
        "rewards.reward_models[0].model.lam: ensemble lam must be a finite number >= 0, got -1",
    ),
    (
        [
            "rewards.reward_models=[{name: rm, model: {path: a/rm}},"
            " {name: rm2, model: {ensemble: [a/rm, {path: b/rm, batch_size: 0}]}}]"
        ],
        "rewards.reward_models[1].model.ensemble[1].batch_size: batch_size must be an integer >= 1, got 0",
    ),
    (
        ["rewards.reward_models=[{name: rm, model: {path: a/rm, normalize: whiten}}]"],
        "rewards.reward_models[0].model.normalize: normalize must be one of none, batch, running, got "
        "'whiten'",
    ),
    (
        ["rewards.reward_models=[{name: rm, model: {normalize: batch}}]"],
        "rewards.reward_models[0].model.path: a reward-model spec needs 'path'",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), PLUGIN_TYPOS, ids=lambda v: str(v)[:40])
def test_plugin_arguments_are_checked_when_the_recipe_loads(tmp_path, overrides, message):
    path = write(tmp_path, f"data:\n  path: {DATA}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides)
    # blamed on the override that set the value, not on the recipe file
    assert str(err.value).startswith(f"<command line> override {overrides[-1]}: {message}"), str(err.value)


def test_benchmark_verifier_kwargs_are_checked_when_the_recipe_loads(tmp_path):
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        f"data: {{path: {ROOT / 'data/arithmetic/test.jsonl'}, prompt_field: question}}\n"
        "verifier: {name: math, kwargs: {require_numbr: true}}\n"
    )
    path = write(tmp_path, f"data:\n  path: {DATA}\neval:\n  every: 1\n  benchmarks: [{spec}]\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(
        f"{path}: eval.benchmarks[0]: {spec}: verifier.kwargs.require_numbr: unknown argument "
        "'require_numbr' of verifier 'math'"
    ), str(err.value)


# --- bad input gets a clear error naming the file (or the override) and the key ---------------------------

ARITHMETIC = str(ROOT / "data/arithmetic/train.jsonl")  # columns: question, answer, kind


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_recipe_is_rejected(tmp_path, text):
    with pytest.raises(RecipeError, match=r"r\.yaml: the recipe is empty; expected a mapping of sections"):
        load_recipe(write(tmp_path, text))


def test_data_path_is_required(tmp_path):
    # no default data file: the old default (data/arithmetic/train.jsonl) had no 'prompt' column anyway
    with pytest.raises(RecipeError, match=r"r\.yaml: data\.path: required: the prompts to train on"):
        load_recipe(write(tmp_path, "run:\n  steps: 2\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            f"data:\n  path: {DATA}\ntrain:\n  lr: 1.0e-5\n  lr: 2.0e-5\n",
            "train.lr: given twice (lines 4 and 5)",
        ),
        (
            f"train:\n  lr: 1.0e-5\ndata:\n  path: {DATA}\ntrain:\n  epochs: 2\n",
            "train: given twice (lines 1 and 5)",
        ),
        (
            f"data:\n  path: {DATA}\nrewards:\n  verifiers:\n    - {{name: math, weight: 1, weight: 2}}\n",
            r"rewards.verifiers[0].weight: given twice (lines 5 and 5)",
        ),
    ],
)
def test_duplicate_keys_are_rejected(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: {message}; give each key once (YAML would silently keep only the last)"


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\ntrain:\n  lr: [1\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: line \d+: not valid YAML: "):
        load_recipe(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {},  # the default prompt_field 'prompt' does not fit the arithmetic file
            "data.prompt_field: 'prompt' is not a column (columns: question, answer, kind); set "
            "data.prompt_field to the column holding the prompt (in {file})",
        ),
        (
            {"prompt_field": "question", "answer_field": "solution"},
            "data.answer_field: 'solution' is not a column",
        ),
        (
            {"prompt_field": "question", "prompt_template": "{prompt} ({knd})"},
            "data.prompt_template: '{prompt} ({knd})' uses {knd}, which is not a row field (fields: prompt, "
            "question, answer, kind)",
        ),
        (
            {"prompt_field": "question", "prompt_template": "{prompt"},
            "data.prompt_template: '{prompt' is not a ",
        ),
    ],
)
def test_data_file_columns_and_template_are_checked_at_load(tmp_path, data, message):
    fields = "".join(f"  {k}: {v!r}\n" for k, v in data.items())
    path = write(tmp_path, f"data:\n  path: {ARITHMETIC}\n{fields}")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: {message.replace('{file}', ARITHMETIC)}"), str(err.value)


def test_empty_data_file_is_rejected_at_load(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    path = write(tmp_path, "data:\n  path: empty.jsonl\n")  # relative to the recipe's folder
    with pytest.raises(RecipeError, match=r"r\.yaml: data\.path: .*empty\.jsonl holds no rows; expected one"):
        load_recipe(path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "smollm2-135m-instrcut",
            "model 'smollm2-135m-instrcut' does not exist: give a local model folder, a packaged alias "
            "(smollm2-135m-instruct, tiny-char) or a Hugging Face hub id 'org/name'; did you mean "
            "'smollm2-135m-instruct'?",
        ),
        (
            "no-such-org/no-such-model",
            "model 'no-such-org/no-such-model' is not a local folder nor a packaged",
        ),
        ("./models/none", "folder not found: ./models/none"),
    ],
)
def test_model_name_is_checked_at_load(tmp_path, name, message):
    # (the tests run with HF_HUB_OFFLINE=1: a hub id must already be in the local hub cache)
    path = write(tmp_path, f"data:\n  path: {DATA}\nmodel:\n  name_or_path: {name}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: model.name_or_path: {message}"), str(err.value)


def test_one_sample_per_prompt_is_rejected_for_group_relative_estimators(tmp_path):
    from rlvr.algorithms import ADVANTAGES
    from rlvr.algorithms.utils import is_group_relative

    relative = {n for n in ADVANTAGES.names() if is_group_relative(ADVANTAGES.get(n))}
    assert relative == {"dgpo", "dr_grpo", "group_mean_batch_std", "grpo", "lite_ppo", "reinforce_pp", "rloo"}
    path = write(tmp_path, f"data:\n  path: {DATA}\nrollout:\n  num_generations: 1\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (
        f"{path}: rollout.num_generations: advantage estimator 'grpo' compares the samples of a prompt with "
        "each other, so with 1 sample per prompt every advantage is 0 and nothing is trained; use "
        "rollout.num_generations >= 2, or an estimator that is not group-relative (batch_norm, gae, remax)"
    )
    assert load_recipe(path, ["algorithm.advantage=remax"]).rollout.num_generations == 1  # a greedy baseline
    path = write(tmp_path, f"data:\n  path: {DATA}\n")
    with pytest.raises(
        RecipeError,
        match=r"^<command line> override rollout\.num_generations=1: rollout\.num_generations: advantage "
        "estimator 'rloo' compares",
    ):
        load_recipe(path, ["rollout.num_generations=1", "algorithm.advantage=rloo"])


def test_override_errors_blame_the_command_line(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\ntrain:\n  epochs: 0\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["train.lr=fast"])
    lines = str(err.value).splitlines()
    # the file's own problem stays under the file; the override's gets a line of its own
    assert lines[0] == f"invalid recipe {path}:"
    assert lines[1].startswith("  train.epochs: Input should be greater than or equal to 1")
    assert lines[2].startswith(
        "<command line> override train.lr=fast: train.lr: Input should be a valid number"
    )
    path = write(tmp_path, f"data:\n  path: {DATA}\n")
    for overrides, message in [
        (
            ["algorithm.advantage=grpoo"],
            "<command line> override algorithm.advantage=grpoo: algorithm.advantage: ",
        ),
        (["rollout.stop=[a"], "<command line> override rollout.stop=[a: the value is not valid YAML"),
        (
            ["data.path=nowhere.jsonl"],
            "<command line> override data.path=nowhere.jsonl: data.path: file not found",
        ),
        (["rollout.stop=[a, [2]]"], "<command line> override rollout.stop=[a, [2]]: rollout.stop[1]: "),
    ]:
        with pytest.raises(RecipeError) as err:
            load_recipe(path, overrides)
        assert str(err.value).startswith(message), str(err.value)


def test_batch_shape_error_names_the_keys_without_a_dump(tmp_path):
    path = write(tmp_path, f"data:\n  path: {DATA}\ntrain:\n  prompts_per_step: 3\n  num_mini_batches: 5\n")
    expected = (
        "train.num_mini_batches: train.prompts_per_step * rollout.num_generations = 3 * 8 = 24 samples per "
        "step must be divisible by train.num_mini_batches = 5"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["train.num_mini_batches=7"])
    assert str(err.value) == f"<command line> override train.num_mini_batches=7: {expected[:-1]}7"
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"invalid recipe {path}:\n  {expected}"  # no "(top level)", no dump


def test_yaml_1_2_booleans_only_true_and_false(tmp_path):
    """``no`` / ``yes`` / ``on`` / ``off`` are strings (YAML 1.2), so ``train.mixed_precision=no`` works."""
    path = write(tmp_path, f"data:\n  path: {DATA}\nrun:\n  resume: false\n  name: on\n")
    recipe = load_recipe(path, ["train.mixed_precision=no", "run.verbose=true"])
    assert recipe.train.mixed_precision == "no" and recipe.run.name == "on"
    assert recipe.run.resume is False and recipe.run.verbose is True


SOURCE_ERRORS = [
    (
        f"data:\n  path: {DATA}\n  sources: [{{path: {DATA}}}]\n",
        "data.sources: give data.path or data.sources",
    ),
    ("data:\n  sources: [{name: x}]\n", "data.sources[0]: give exactly one of path"),
    ("data:\n  sources: [{task: basic_arithmetik}]\n", "data.sources[0].task: unknown reasoning-gym task"),
    (
        "data:\n  sources: [{task: basic_arithmetic, config: {max_term: 2}}]\n",
        "data.sources[0].config.max_term: basic_arithmetic has no config key 'max_term'",
    ),
    (
        "data:\n  sources: [{task: basic_arithmetic, config: {min_terms: 5, max_terms: 2}}]\n",
        "data.sources[0].config: basic_arithmetic: invalid config",
    ),
    (f"data:\n  sources: [{{path: {DATA}, size: 10}}]\n", "data.sources[0].size: only for a task source"),
    ("data:\n  sources: [{task: basic_arithmetic, split: test}]\n", "data.sources[0].split: only for a path"),
    ("data:\n  sources: [{path: ./missing.jsonl}]\n", "data.sources[0].path: file not found"),
    (
        f"data:\n  sources: [{{path: {DATA}, prompt_field: question}}]\n",
        "data.sources[0].prompt_field: 'question' is not a column",
    ),
    (
        f"data:\n  sources: [{{path: {DATA}}}, {{task: basic_arithmetic, name: say_digit}}]\n",
        "data.sources[1].name: data.sources[0] is also named 'say_digit'",
    ),
]


@pytest.mark.parametrize(("text", "message"), SOURCE_ERRORS, ids=lambda v: str(v)[:50])
def test_data_sources_are_checked_when_the_recipe_loads(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_data_sources_load(tmp_path):
    text = f"data:\n  sources:\n    - {{path: {DATA}, columns: {{difficulty: 1}}}}\n"
    text += "    - {task: basic_arithmetic, name: rg, config: {max_terms: 2}}\n"
    recipe = load_recipe(write(tmp_path, text))
    assert [s.path or s.task for s in recipe.data.sources] == [DATA, "basic_arithmetic"]
