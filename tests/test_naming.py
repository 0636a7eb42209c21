"""Tests for mapper.naming: brace patterns that group names (group_names, group_pairs) and expand back."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper.naming import PairGroup, expand_pattern, group_names, group_pairs

LAYERS = range(12)

GROUP_CASES = [
    pytest.param(
        [f"encoder/layer_{i}/attention/{p}/kernel" for i in LAYERS for p in ("query", "key", "value")],
        ["encoder/layer_{0..11}/attention/{key,query,value}/kernel"],
        id="bert-attention",
    ),
    pytest.param([f"block_{i}/w" for i in (0, 2, 5)], ["block_{0,2,5}/w"], id="numbers-with-gaps"),
    pytest.param([f"block_{i}/w" for i in (0, 1)], ["block_{0,1}/w"], id="two-numbers-listed"),
    pytest.param(
        [f"block_{i}/w" for i in (*range(5), *range(6, 12))], ["block_{{0..4},{6..11}}/w"], id="runs-around-a-gap"
    ),
    pytest.param([f"h/{i}" for i in (10, 9, 8, 2)], ["h/{2,{8..10}}"], id="run-and-single"),
    pytest.param(["d/kernel", "d/bias", "d/gamma"], ["d/{bias,gamma,kernel}"], id="alternatives-sorted"),
    pytest.param(
        [f"model/_operations/{i}/{v}/.ATTRIBUTES/VARIABLE_VALUE" for i in (1, 2, 3) for v in ("_kernel", "bias")],
        ["model/_operations/{1..3}/{_kernel,bias}/.ATTRIBUTES/VARIABLE_VALUE"],
        id="tf-checkpoint-keys",
    ),
    pytest.param(
        [f"bert.encoder.layer.{i}.attention.self.{p}.weight" for i in LAYERS for p in ("query", "key")],
        ["bert.encoder.layer.{0..11}.attention.self.{key,query}.weight"],
        id="dotted-names",
    ),
    pytest.param(
        ["dense/kernel", "dense_1/kernel", "dense_2/kernel"], ["{dense,dense_{1,2}}/kernel"], id="keras-auto-names"
    ),
    pytest.param(
        [f"conv{a}_{b}/w" for a in (1, 2) for b in (1, 2, 3)], ["conv{1,2}_{1..3}/w"], id="two-numbers-in-a-segment"
    ),
    pytest.param(["part_00", "part_01", "part_02"], ["part_{00,01,02}"], id="zero-padded-listed"),
    pytest.param(["layer_10/w", "layer_2/w", "global_step"], ["global_step", "layer_{2,10}/w"], id="natural-order"),
    pytest.param(["a/x", "a/y", "b/x"], ["a/{x,y}", "b/x"], id="not-a-product"),
    pytest.param(["a/b/c", "a/b"], ["a/b", "a/b/c"], id="different-depths"),
    pytest.param(["a{b}", "c,d", "e\\f"], ["a\\{b\\}", "c\\,d", "e\\\\f"], id="special-characters-escaped"),
    pytest.param(["x", "x", "x"], ["x"], id="duplicates"),
    pytest.param([""], [""], id="empty-name"),
    pytest.param([], [], id="no-names"),
]


@pytest.mark.parametrize(("names", "expected"), GROUP_CASES)
def test_group_names(names: list[str], expected: list[str]) -> None:
    before = list(names)
    assert group_names(names) == expected
    assert names == before  # the input is not touched
    assert sorted({name for pattern in expected for name in expand_pattern(pattern)}) == sorted(set(names))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        pytest.param("a/b", ["a/b"], id="literal"),
        pytest.param("l_{0..2}", ["l_0", "l_1", "l_2"], id="range"),
        pytest.param("{3..1}", ["3", "2", "1"], id="descending-range"),
        pytest.param("{08..10}", ["08", "09", "10"], id="padded-range"),
        pytest.param("{a,b}/{x,y}", ["a/x", "a/y", "b/x", "b/y"], id="product-in-order"),
        pytest.param("{{0..1},7}", ["0", "1", "7"], id="nested"),
        pytest.param("{,_1}", ["", "_1"], id="empty-alternative"),
        pytest.param("a\\{b\\,c\\}", ["a{b,c}"], id="escapes"),
        pytest.param("{a}", ["{a}"], id="single-item-is-literal"),
        pytest.param("a{b", ["a{b"], id="unclosed-is-literal"),
        pytest.param("a}b,c", ["a}b,c"], id="stray-closers-are-literal"),
        pytest.param("{a..c}", ["{a..c}"], id="letter-ranges-are-literal"),
        pytest.param("x\\", ["x\\"], id="trailing-backslash"),
        pytest.param("", [""], id="empty"),
    ],
)
def test_expand_pattern(pattern: str, expected: list[str]) -> None:
    assert expand_pattern(pattern) == expected


def _check_lossless(names: list[str]) -> None:
    patterns = group_names(names)
    expansions = [expand_pattern(pattern) for pattern in patterns]
    flat = [name for expansion in expansions for name in expansion]
    assert len(flat) == len(set(flat)), f"a name appears twice in {patterns}"
    assert set(flat) == set(names)


# Names from an alphabet full of separators, digits and pattern syntax, to try to break the escaping.
awkward_names = st.lists(st.text(alphabet="ab01_/.{},\\", max_size=8), max_size=25)


@given(awkward_names)
@settings(max_examples=300, deadline=None)
def test_group_names_is_lossless_on_awkward_names(names: list[str]) -> None:
    _check_lossless(names)


# Names built as partial products, the way real models look: prefix/layer_i/part/leaf.
structured_names = st.lists(
    st.tuples(
        st.sampled_from(["enc", "dec", "bert/encoder"]),
        st.integers(0, 30),
        st.sampled_from(["query", "key", "value", "dense_1", "dense_2", "LayerNorm"]),
        st.sampled_from(["kernel", "bias", "gamma", "beta"]),
    ).map(lambda parts: f"{parts[0]}/layer_{parts[1]}/{parts[2]}/{parts[3]}"),
    max_size=120,
)


@given(structured_names)
@settings(max_examples=150, deadline=None)
def test_group_names_is_lossless_on_model_like_names(names: list[str]) -> None:
    _check_lossless(names)


@given(
    st.dictionaries(
        st.text(alphabet="ab01/.{},", max_size=6),
        st.text(alphabet="xy01/.{,", max_size=6),
        max_size=20,
    )
)
@settings(max_examples=300, deadline=None)
def test_group_pairs_reads_back_exactly(mapping: dict[str, str]) -> None:
    groups = group_pairs(mapping.items())
    pairs = [pair for group in groups for pair in group.pairs()]
    assert sorted(pairs) == sorted(mapping.items())
    assert sum(group.count for group in groups) == len(mapping)


@given(structured_names, st.integers(0, 2))
@settings(max_examples=100, deadline=None)
def test_group_pairs_reads_back_exactly_on_renamed_layers(names: list[str], offset: int) -> None:
    mapping = {name: re.sub(r"layer_(\d+)", lambda m: f"block_{int(m.group(1)) + offset}", name) for name in names}
    pairs = [pair for group in group_pairs(mapping.items()) for pair in group.pairs()]
    assert sorted(pairs) == sorted(mapping.items())


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        pytest.param(
            [(f"block_{i + 1}/w", f"layer_{i}/kernel") for i in LAYERS],
            [("block_{1..12}/w", "layer_{0..11}/kernel", 12)],
            id="index-arithmetic",
        ),
        pytest.param(
            [(f"t/{p}", f"s/{p}/w") for p in ("key", "query", "value")],
            [("t/{key,query,value}", "s/{key,query,value}/w", 3)],
            id="same-alternatives",
        ),
        pytest.param(
            [("t/a", "shared"), ("t/b", "shared")],
            [("t/{a,b}", "shared", 2)],
            id="one-source-for-many-targets",
        ),
        pytest.param(
            [("t/k", "s/key"), ("t/q", "s/query")],
            [("t/k", "s/key", 1), ("t/q", "s/query", 1)],
            id="different-alternatives-not-linked",
        ),
        pytest.param(
            [(f"block_{i}", f"layer_{2 - i}") for i in range(3)],
            [("block_0", "layer_2", 1), ("block_1", "layer_1", 1), ("block_2", "layer_0", 1)],
            id="reversed-order-not-grouped",
        ),
        pytest.param(
            [(f"l_{i}/{p}", f"s/{p}/l_{i}") for i in range(2) for p in "ab"],
            [("l_0/{a,b}", "s/{a,b}/l_0", 2), ("l_1/{a,b}", "s/{a,b}/l_1", 2)],
            id="crossed-order-grouped-only-where-it-reads-right",
        ),
    ],
)
def test_group_pairs(pairs: list[tuple[str, str]], expected: list[tuple[str, str, int]]) -> None:
    assert [(group.left, group.right, group.count) for group in group_pairs(pairs)] == expected


def test_pair_group_broadcasts_a_single_right_name() -> None:
    assert PairGroup("t/{a,b}", "shared", 2).pairs() == [("t/a", "shared"), ("t/b", "shared")]


def bert_large_names() -> list[str]:
    """A 24-layer BERT-large checkpoint with Adam slots: over 1,000 names."""
    names = ["global_step", "bert/embeddings/word_embeddings", "bert/embeddings/position_embeddings"]
    names += [
        "bert/embeddings/token_type_embeddings",
        "bert/embeddings/LayerNorm/gamma",
        "bert/embeddings/LayerNorm/beta",
    ]
    for i in range(24):
        layer = f"bert/encoder/layer_{i}"
        for part in ("query", "key", "value"):
            names += [f"{layer}/attention/self/{part}/kernel", f"{layer}/attention/self/{part}/bias"]
        for block in ("attention/output", "intermediate", "output"):
            names += [f"{layer}/{block}/dense/kernel", f"{layer}/{block}/dense/bias"]
        for block in ("attention/output", "output"):
            names += [f"{layer}/{block}/LayerNorm/gamma", f"{layer}/{block}/LayerNorm/beta"]
    names += ["bert/pooler/dense/kernel", "bert/pooler/dense/bias"]
    return names + [f"{name}/{slot}" for name in names[1:] for slot in ("adam_m", "adam_v")]


def test_a_thousand_variable_model_fits_on_a_screen() -> None:
    names = bert_large_names()
    assert len(names) > 1000
    patterns = group_names(names)
    assert len(patterns) <= 24, "\n".join(patterns)
    assert "bert/encoder/layer_{0..23}/attention/self/{key,query,value}/{bias,kernel}/{adam_m,adam_v}" in patterns
    _check_lossless(names)
