"""``mapper inspect --target``: a model's variables in both namespaces, grouped, as text and JSON, from the user's side."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from mapper import cli

pytestmark = pytest.mark.tf

DEMO = "mapper.demo:new_model"
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

NESTED = """
import keras


def build():
    encoder = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="proj"), keras.layers.LayerNormalization(name="norm")],
        name="encoder",
    )
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="head")(encoder(inputs))
    return keras.Model(inputs, outputs, name="outer")


def variables():
    return {"w": keras.Variable([1.0, 2.0], name="w")}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("factories") / "nested_models.py"
    path.write_text(textwrap.dedent(NESTED))
    return path


def test_demo_model_lists_both_namespaces_grouped(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "--target", DEMO)

    assert code == cli.EXIT_OK, err
    lines = out.splitlines()
    assert lines[:3] == [
        "mapper.demo:new_model: keras.Model 'classifier' (10 weights): 10 of 10 variables, 7.4 KiB",
        '  path        the names rules match by default (namespace = "path"); for Keras, variable.path',
        '  checkpoint  the key in tf.train.Checkpoint(model=...): the names for namespace = "checkpoint"',
    ]
    assert lines[4] == "count  shape     dtype    size     namespace   name"
    rows = lines[5:]
    assert len(rows) == 2 * 6  # 10 variables in 6 groups, each a path line and a checkpoint line
    position = rows.index("    4  [32]      float32    512 B  path        bn/{beta,gamma,moving_mean,moving_variance}")
    assert rows[position + 1] == (
        "                                   checkpoint  "
        "model/_operations/2/{beta,gamma,moving_mean,moving_variance}/.ATTRIBUTES/VARIABLE_VALUE"
    )
    position = rows.index("    2  [32]      float32    256 B  path        d{1,2}/bias")
    assert rows[position + 1].split() == ["checkpoint", "model/_operations/{1,3}/bias" + SUFFIX]
    position = rows.index("    1  [32, 5]   float32    640 B  path        head/kernel")
    assert rows[position + 1].split() == ["checkpoint", "model/_operations/4/_kernel" + SUFFIX]


def test_nested_model_names_match_what_tf_train_checkpoint_writes(
    capsys: pytest.CaptureFixture[str], models: Path, tmp_path: Path
) -> None:
    import tensorflow as tf

    from mapper.cli.inputs import load_target_factory

    code, out, err = run(capsys, "inspect", "--target", f"{models}:build")

    assert code == cli.EXIT_OK, err
    rows = out.splitlines()[5:]
    position = rows.index("    2  [3]     float32  24 B  path        encoder/norm/{beta,gamma}")
    assert rows[position + 1].split() == [
        "checkpoint",
        "model/_operations/1/_functional/_operations/2/{beta,gamma}" + SUFFIX,
    ]
    position = rows.index("    1  [4, 3]  float32  48 B  path        encoder/proj/kernel")
    assert rows[position + 1].split() == [
        "checkpoint",
        "model/_operations/1/_functional/_operations/1/_kernel" + SUFFIX,
    ]

    for root in ("model", "net"):
        code, out, err = run(
            capsys, "inspect", "--target", f"{models}:build", "--checkpoint-root", root, "--format", "json"
        )
        assert code == cli.EXIT_OK, err
        listed = {variable["checkpoint"] for variable in json.loads(out)["variables"]}
        prefix = str(tmp_path / root)
        tf.train.Checkpoint(**{root: load_target_factory(f"{models}:build")}).write(prefix)
        written = {name for name, _ in tf.train.list_variables(prefix) if not name.startswith("_CHECKPOINTABLE")}
        assert listed == written - {"save_counter" + SUFFIX}
        assert all(key.startswith(f"{root}/") for key in listed)


def test_json_has_every_variable_and_the_groups(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--target", DEMO, "--format", "json")

    assert code == cli.EXIT_OK
    document: dict[str, Any] = json.loads(out)
    assert list(document) == [
        "target",
        "factory",
        "checkpoint_root",
        "namespaces",
        "variables",
        "groups",
        "total_bytes",
    ]
    assert document["target"] == "keras.Model 'classifier' (10 weights)"
    assert document["factory"] == DEMO and document["checkpoint_root"] == "model"
    assert document["namespaces"] == ["path", "checkpoint"]
    assert document["variables"][0] == {
        "path": "d1/kernel",
        "checkpoint": "model/_operations/1/_kernel" + SUFFIX,
        "shape": [16, 32],
        "dtype": "float32",
        "bytes": 16 * 32 * 4,
    }
    assert len(document["variables"]) == 10
    assert {
        "count": 2,
        "path": "d{1,2}/bias",
        "checkpoint": "model/_operations/{1,3}/bias" + SUFFIX,
        "shape": [32],
        "dtype": "float32",
        "bytes": 256,
    } in document["groups"]
    assert sum(group["count"] for group in document["groups"]) == 10
    assert document["total_bytes"] == sum(variable["bytes"] for variable in document["variables"])


@pytest.mark.parametrize(
    ("options", "paths"),
    [
        (["--match", "_operations/2/"], ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]),
        (["--match", "^head/"], ["head/kernel", "head/bias"]),
        (["--match", "bias", "--checkpoint-root", "net"], ["d1/bias", "d2/bias", "head/bias"]),
    ],
)
def test_match_searches_both_namespaces(
    capsys: pytest.CaptureFixture[str], options: list[str], paths: list[str]
) -> None:
    code, out, _ = run(capsys, "inspect", "--target", DEMO, "--format", "json", *options)

    assert code == cli.EXIT_OK
    assert [variable["path"] for variable in json.loads(out)["variables"]] == paths


def test_verbose_lists_every_variable_and_the_root_shows_in_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--target", DEMO, "--match", "bias", "--verbose", "--checkpoint-root", "net")

    assert code == cli.EXIT_OK
    lines = out.splitlines()
    assert lines[0] == "mapper.demo:new_model: keras.Model 'classifier' (10 weights): 3 of 10 variables, 276 B"
    assert "tf.train.Checkpoint(net=...)" in lines[2]
    assert [line.split()[-1] for line in lines[5:]] == [
        "d1/bias",
        "net/_operations/1/bias" + SUFFIX,
        "d2/bias",
        "net/_operations/3/bias" + SUFFIX,
        "head/bias",
        "net/_operations/4/bias" + SUFFIX,
    ]


def test_a_dict_of_variables_has_no_checkpoint_namespace(capsys: pytest.CaptureFixture[str], models: Path) -> None:
    code, out, _ = run(capsys, "inspect", "--target", f"{models}:variables")

    assert code == cli.EXIT_OK
    assert out.splitlines()[2:] == [
        "  checkpoint  none (only Keras models and tf.Modules have checkpoint keys)",
        "",
        "count  shape  dtype    size  namespace   name",
        "    1  [2]    float32   8 B  path        w",
    ]
    code, out, _ = run(capsys, "inspect", "--target", f"{models}:variables", "--format", "json")
    document = json.loads(out)
    assert document["namespaces"] == ["path"] and document["variables"][0]["checkpoint"] is None


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], cli.EXIT_USAGE, "give a checkpoint to list its tensors (mapper inspect CHECKPOINT), or --target"),
        (["ckpt", "--target", DEMO], cli.EXIT_USAGE, "give a checkpoint or --target, not both"),
        (["ckpt", "--checkpoint-root", "net"], cli.EXIT_USAGE, "--checkpoint-root is for --target"),
        (["ckpt", "--verbose"], cli.EXIT_USAGE, "--verbose is for --target"),
        (["--target", "mapper.demo:no_such_model"], cli.EXIT_INPUT, "module 'mapper.demo' has no 'no_such_model'"),
        (["--target", DEMO, "--match", "("], cli.EXIT_USAGE, "--match '(' is not a valid regular expression"),
    ],
    ids=["neither", "both", "root-without-target", "verbose-without-target", "bad-factory", "bad-match"],
)
def test_inspect_needs_exactly_one_of_checkpoint_and_target(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    result, out, err = run(capsys, "inspect", *argv)

    assert result == code and out == ""
    assert err.startswith("mapper: error: ") and message in err


def test_help_teaches_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["inspect", "--help"])

    shown = " ".join(capsys.readouterr().out.split())

    assert "usage: mapper inspect CHECKPOINT [--match REGEX] [--format {text,json}] mapper inspect --target" in shown
    assert "mapper inspect --target mapper.demo:new_model" in shown
    assert "in both namespaces: 'path' (variable.path, the default) and 'checkpoint'" in shown
    assert "a rule file's [target] checkpoint_root; default: model" in shown
