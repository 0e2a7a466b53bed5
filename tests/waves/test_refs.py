import pytest

from waves.refs import Ref, RefError, condition_step_refs, find_refs


def test_find_refs_walks_nested_values_in_order():
    value = {"a": "x ${steps.s1.outputs} y", "b": ["${steps.s2.outputs.a.b}", {"c": "${item.name}"}], "d": 3}
    assert find_refs(value) == [
        Ref("s1", (), "steps", "${steps.s1.outputs}"),
        Ref("s2", ("a", "b"), "steps", "${steps.s2.outputs.a.b}"),
        Ref(None, ("name",), "item", "${item.name}"),
    ]


def test_item_and_iteration_refs():
    assert find_refs("${item} ${iteration}") == [
        Ref(None, (), "item", "${item}"),
        Ref(None, (), "iteration", "${iteration}"),
    ]


@pytest.mark.parametrize("text", ["${env.HOME}", "${steps.x}", "${steps.x.status}", "${}", "${item..a}"])
def test_anything_else_inside_a_reference_is_an_error_naming_it(text):
    with pytest.raises(RefError, match=f"bad reference {text!r}".replace("$", r"\$").replace("{", r"\{")):
        find_refs({"k": text})


def test_condition_step_refs_finds_dot_and_index_forms():
    assert condition_step_refs('steps.a.outputs.n > 0 && steps["b-2"].status == "ok" || mysteps.c') == {
        "a",
        "b-2",
    }
