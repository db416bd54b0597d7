"""The probe library stands on its own: ``landscape.probes`` imports nothing from the rest of landscape (so a
user's loop, Lightning or the Hugging Face Trainer get the probes without the trainer, data sets or report)."""

import ast
import sys
from pathlib import Path

import landscape.probes

PACKAGE = Path(landscape.probes.__file__).parent
THIRD_PARTY = {"torch", "numpy", "scipy"}  # and the standard library


def imports(path: Path) -> list[str]:
    """Every module a file imports, at its top or inside a function (lazy imports count too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def test_the_probe_package_imports_only_itself_torch_numpy_scipy_and_the_standard_library():
    outside = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for module in imports(path):
            top = module.split(".")[0]
            if module.startswith("landscape.probes") or module == "__future__":
                continue
            if top == "landscape" or (top not in THIRD_PARTY and top not in sys.stdlib_module_names):
                outside.setdefault(path.name, []).append(module)
    assert not outside, outside


def test_the_check_sees_a_lazy_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from landscape.runs import Run\n")
    assert imports(f) == ["landscape.runs"]
