"""Every command the README shows parses: its flags exist and its values are allowed.

The commands that run here run end to end in the tests of their modules (the journey of
"Distill your own task" against a loopback teacher in the teacher's tests).
"""

import os
import re
import shlex

import pytest

from dss_keras import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands(prefix: str) -> list[list[str]]:
    """The README's shell commands that start with `prefix`, continuation lines joined."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        text = file.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:len(prefix.split())] == prefix.split():
                commands.append(words[len(prefix.split()):])
    return commands


@pytest.mark.parametrize("argv", _commands("dss-keras"), ids=" ".join)
def test_dss_keras_commands_parse(argv, monkeypatch):
    parser = cli.build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "parser") and args.command in ("train", "tune"):
        cli._config(args)  # values a command would refuse


@pytest.mark.parametrize("argv", _commands("python"), ids=" ".join)
def test_recipe_commands_parse(argv):
    import importlib.util

    script = os.path.join(REPO, argv[0])
    spec = importlib.util.spec_from_file_location("recipe", script)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cli.parse_recipe_flags(recipe.get_config(), argv[1:])


def test_the_readme_shows_commands():
    assert len(_commands("dss-keras")) >= 8 and len(_commands("python")) >= 4


@pytest.mark.slow
def test_the_python_example_runs(tmp_path, monkeypatch):
    """The README's Python example, with fewer problems and steps."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as file:
        (example,) = re.findall(r"## From Python\n\n```python\n(.*?)```", file.read(), flags=re.S)
    shorter = (example.replace("word_problems(2000)", "word_problems(64)")
               .replace("steps_per_epoch=400, epochs=3", "steps_per_epoch=2, epochs=1"))
    assert shorter.count("(64)") == 1 and "epochs=1" in shorter
    from dss_keras.tf_fast_path import cpu_runtime

    # What `use_fast_cpu_runtime()` sets is this process's: undone after the test.
    monkeypatch.setattr(cpu_runtime, "_asked", False)
    for variable in (cpu_runtime.ONEDNN_KERNELS, cpu_runtime.POOLED_ALLOCATOR):
        monkeypatch.setenv(variable, os.environ.get(variable, "0"))
    monkeypatch.chdir(tmp_path)
    exec(compile(shorter, "README.md", "exec"), {})
    assert (tmp_path / "model.keras").exists()
