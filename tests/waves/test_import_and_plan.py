"""Import service, selectors and the import_tasklist / plan_tasklist command-line contracts."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.seeds import EXAMPLES, SEED_003
from waves.loaders import load_path, load_text
from waves.models import Task, TaskDependency, TaskList, TaskTemplate
from waves.selectors import task_list_get, task_list_graph, task_list_plan
from waves.services import TaskListExists, task_list_import

pytestmark = pytest.mark.django_db


def _import(text, name, suffix=".pipeline", **kwargs):
    return task_list_import(
        definition=load_text(text, source=name + suffix, suffix=suffix, name=name), **kwargs
    )


@pytest.mark.parametrize("example", sorted(SEED_003))
def test_seed_003_pipelines_give_the_seed_waves_of_groups(example):
    text, group_waves, total = SEED_003[example]
    plan = task_list_plan(_import(text, example))
    assert [g for g in plan.groups if g] == group_waves
    assert plan.analysis.critical_length == total
    assert plan.estimated_total == total  # 4 slots are enough for every wave here


def test_seed_003_group_steps_store_group_minutes_and_display_id():
    tl = _import(SEED_003["example1"][0], "p")
    step = tl.tasks.get(key="step-5")
    assert (step.parallel_group, step.estimated_minutes, step.display_id, step.template.name) == (
        "web-features", 30, "5", "base",
    )  # fmt: skip


def test_seed_002_three_fetches_then_a_report_imports_as_two_waves():
    text = """
name: seed-002
steps:
  - id: fetch_user_data
  - id: fetch_product_data
  - id: fetch_inventory_data
  - id: generate_report
    inputs:
      user_data: ${steps.fetch_user_data.outputs}
      product_data: ${steps.fetch_product_data.outputs}
      inventory_data: ${steps.fetch_inventory_data.outputs}
"""
    tl = _import(text, "seed-002", suffix=".yaml")
    out = StringIO()
    call_command("plan_tasklist", "seed-002", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {
        "waves": [["fetch_user_data", "fetch_product_data", "fetch_inventory_data"], ["generate_report"]],
        "critical_path": ["fetch_user_data", "generate_report"],
        "width": 3,
    }
    assert task_list_get(str(tl.pk)) == tl


def test_parallel_block_is_a_group_row_and_edges_onto_it_expand_to_its_children():
    tl = task_list_import(definition=load_path(EXAMPLES / "etl.yaml"))
    block = tl.tasks.get(key="transform")
    assert (block.kind, block.command, block.join_policy, block.max_parallelism) == ("group", "", "all", 3)
    children = set(block.children.values_list("key", flat=True))
    assert children == {"transform_users", "transform_orders", "transform_products"}
    assert set(block.children.values_list("parallel_group", flat=True)) == {"transform"}
    load = tl.tasks.get(key="load")
    assert TaskDependency.objects.filter(task=load, depends_on=block).exists()
    nodes, edges = task_list_graph(tl)
    assert "transform" not in nodes
    assert {up for up, down in edges if down == "load"} == children


def test_block_dependencies_are_written_for_the_block_and_each_child():
    text = (
        "steps:\n  - id: a\n  - id: blk\n    type: parallel\n    depends_on: a\n    steps:\n      - id: c1\n"
    )
    tl = _import(text, "blk", suffix=".yaml")
    deps = set(TaskDependency.objects.filter(task__task_list=tl).values_list("task__key", "depends_on__key"))
    assert deps == {("blk", "a"), ("c1", "a")}


def test_every_example_imports_and_plans():
    for path in sorted(EXAMPLES.iterdir()):
        out = StringIO()
        call_command("import_tasklist", str(path), stdout=out)
        new_id = out.getvalue().splitlines()[0]
        assert TaskList.objects.get(pk=int(new_id)).tasks.exists()
        call_command("plan_tasklist", new_id, stdout=StringIO())


def test_existing_name_is_refused_without_replace():
    _import(SEED_003["example2"][0], "same")
    with pytest.raises(TaskListExists, match="already exists"):
        _import(SEED_003["example2"][0], "same")
    assert TaskList.objects.count() == 1


def test_replace_archives_the_old_list_and_keeps_its_tasks():
    old = _import(SEED_003["example2"][0], "same")
    new = _import(SEED_003["example1"][0], "same", replace=True)
    old.refresh_from_db()
    assert old.archived_at is not None and old.replaced_by == new
    assert old.tasks.count() == 5 and new.tasks.count() == 9
    assert task_list_get("same") == new
    assert task_list_get(str(old.pk)) == old  # history stays reachable by id


def test_templates_are_shared_by_name_across_lists(monkeypatch):
    import waves.services

    monkeypatch.setattr(waves.services, "CHUNK", 2)  # names looked up in several chunks
    first = _import("steps:\n  - id: a\n  - id: b\n    template: build\n", "t1", suffix=".yaml")
    second = _import(
        "steps:\n  - id: b\n    template: build\n  - id: c\n  - id: d\n    template: build\n",
        "t2",
        suffix=".yaml",
    )
    assert sorted(TaskTemplate.objects.values_list("name", flat=True)) == ["a", "build", "c"]
    build = TaskTemplate.objects.get(name="build")
    assert first.tasks.get(key="b").template == build
    assert {t.key for t in second.tasks.filter(template=build)} == {"b", "d"}


def test_plan_text_shows_waves_groups_critical_path_width_and_estimate():
    _import(SEED_003["example3"][0], "mp")
    out = StringIO()
    call_command("plan_tasklist", "mp", stdout=out)
    text = out.getvalue()
    assert "Wave 4 (4 tasks)  groups: web-app, mobile-app" in text
    assert "Critical path: step-1 -> step-2 -> step-4" in text
    assert "Width: 4" in text
    assert "Estimated total at max_parallelism 4: 130 min" in text


def test_plan_mermaid_has_one_subgraph_per_wave_and_the_edges():
    _import(SEED_003["example2"][0], "m")
    out = StringIO()
    call_command("plan_tasklist", "m", "--format", "mermaid", stdout=out)
    text = out.getvalue()
    assert text.startswith("flowchart TD")
    assert text.count("subgraph ") == 3 and "  n0 --> n1" in text


def test_plan_markdown_is_the_seed_003_analysis():
    _import(SEED_003["example1"][0], "md")
    out = StringIO()
    call_command("plan_tasklist", "md", "--format", "markdown", stdout=out)
    text = out.getvalue()
    assert "`web-features` (step-5, step-6) + `mobile-features` (step-7, step-8)" in text
    assert "| One after another | 210 |" in text and "| In parallel (max_parallelism 4) | 90 |" in text
    assert "```mermaid\nflowchart TD" in text


def test_import_prints_the_new_id_first_then_a_summary(tmp_path):
    out = StringIO()
    call_command("import_tasklist", str(EXAMPLES / "multi_platform.pipeline"), "--name", "x", stdout=out)
    first, summary = out.getvalue().splitlines()
    assert TaskList.objects.get(pk=int(first)).title == "x"
    assert "12 tasks" in summary


def test_import_command_template_option_sets_commands(tmp_path):
    out = StringIO()
    call_command(
        "import_tasklist", str(EXAMPLES / "multi_platform.pipeline"), "--command-template", "echo {n} {title}",
        stdout=out,
    )  # fmt: skip
    assert Task.objects.get(key="step-2").command == "echo 2 'Auth service'"


def test_plan_of_an_unknown_list_is_a_clear_error():
    with pytest.raises(CommandError, match="no task list with id or name 'ghost'"):
        call_command("plan_tasklist", "ghost")


def test_manage_py_import_exits_1_on_bad_input_and_writes_nothing(manage, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - id: a\n    depends_on: nope\n")
    proc = manage("import_tasklist", bad)
    assert proc.returncode == 1
    assert f"{bad}:2: step 'a': unknown dependency 'nope'" in proc.stderr
    assert proc.stdout == ""
    assert not TaskList.objects.exists()
