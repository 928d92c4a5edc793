"""The README's promises: two set-up commands at the top, generated model and kernel tables."""

import importlib.util
import pathlib
import re

from convfirst_jax.complexity.model_table import model_table_markdown

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_model_table_is_generated_by_summary_command():
    text = README.read_text()
    region = re.search(r"<!-- model-table:start -->\n(.*?)<!-- model-table:end -->", text, re.S)
    assert region, "README lacks the model-table markers"
    assert region.group(1).strip() == model_table_markdown().strip(), (
        "README model table is stale: run python -m convfirst_jax.summary --update-readme README.md")


def test_kernel_table_is_generated_from_the_committed_static_reports():
    spec = importlib.util.spec_from_file_location("kernel_table", ROOT / "scripts" / "kernel_table.py")
    kernel_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_table)
    text = README.read_text()
    region = re.search(rf"{kernel_table.KERNEL_TABLE_START}\n(.*?){kernel_table.KERNEL_TABLE_END}",
                       text, re.S)
    assert region, "README lacks the kernel-table markers"
    table = kernel_table.table()
    assert region.group(1).strip() == table.strip(), (
        "README kernel table is stale: run PYTHONPATH=. python scripts/kernel_table.py "
        "--update-readme README.md")
    # One row per configuration of the batch-128 report, every one with batch-1 numbers.
    assert table.count("\n| C") == 24


def test_exactly_two_setup_commands_main_job_and_tests():
    text = README.read_text()
    commands = []
    for marker in ("main-command", "test-command"):
        block = re.search(rf"<!-- {marker}:start -->\n```\n(.*?)\n```\n<!-- {marker}:end -->",
                          text, re.S)
        assert block, f"README lacks the {marker} block"
        lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
        assert len(lines) == 1, f"{marker} must be one copy-paste line, got {lines}"
        commands.append(lines[0])
    main, test = commands
    assert "pip install" in main and "python -m train" in main
    assert "pip install" in test and "pytest" in test
    # They are the first two fenced blocks of the README.
    first_two = re.findall(r"```\n(.*?)\n```", text, re.S)[:2]
    assert first_two == commands
