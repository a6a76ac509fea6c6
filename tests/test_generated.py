"""The sync modules are generated from their async sources (tools/async_to_sync.py) and never drift."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "async_to_sync.py"

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="tools/ is not shipped in the sdist")


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("async_to_sync", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_file_is_up_to_date() -> None:
    """`async_to_sync.py --check` passes on the tree: each sync module is what its source generates."""
    if shutil.which("ruff", path=str(Path(sys.executable).parent)) is None and shutil.which("ruff") is None:
        pytest.skip("ruff is needed to format the generated files")
    result = subprocess.run(
        [sys.executable, str(TOOL), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_generated_files_say_so(tool: ModuleType) -> None:
    """Each generated module starts with the warning naming its async source."""
    for source in tool.SOURCES:
        target = ROOT / "src" / "kannuki" / tool.target_of(source)
        assert target.read_text().startswith(f"# WARNING: generated from src/kannuki/{source}")


def test_the_conversion_rules(tool: ModuleType) -> None:
    """async/await go, names are renamed (in code and docs), and the line markers apply."""
    source = (
        "# to-sync: _wake_async -> _wake\n"
        "# to-sync: AsyncThing -> Thing\n"
        "import asyncio  # async-only\n"
        "from kannuki._compat import asleep\n"
        "\n"
        "\n"
        "class AsyncThing:\n"
        '    """An AsyncThing; ``await thing.aclose()``."""\n'
        "\n"
        "    async def aclose(self) -> None:\n"
        "        await asleep(0)\n"
        "        async with self.guard:\n"
        "            _wake_async()\n"
        "        if True:  # async-only\n"
        "            await asyncio.sleep(0)\n"
        "        mode = 'async'  # sync: mode = 'sync'\n"
        "        total = sum(  # sync: total = 0\n"
        "            [1, 2]\n"
        "        )\n"
    )
    text = tool.convert(source)
    assert "async" not in text.replace("'async'", "") and "await" not in text.replace("``thing", "")
    assert "class Thing:" in text and "def close(self)" in text and "sleep(0)" in text
    assert "import asyncio" not in text and "asyncio.sleep" not in text
    assert "with self.guard:" in text and "_wake()" in text
    assert "mode = 'sync'" in text and "total = 0" in text and "[1, 2]" not in text
    assert '"""An Thing; ``thing.close()``."""' in text  # docstrings follow the renames too


def test_check_mode_names_a_stale_file(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generated file edited by hand is reported and --check exits 1."""
    package = tmp_path / "src" / "kannuki"
    package.mkdir(parents=True)
    (package / "thing_async.py").write_text('"""x."""\n\n\nasync def f() -> None:\n    return None\n')
    monkeypatch.setattr(tool, "PACKAGE", package)
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setattr(tool, "polish", lambda text, filename: text)  # no ruff needed for this check
    assert tool.main(["thing_async.py"]) == 0
    assert tool.main(["--check", "thing_async.py"]) == 0
    (package / "thing.py").write_text((package / "thing.py").read_text() + "# edited by hand\n")
    assert tool.main(["--check", "thing_async.py"]) == 1
