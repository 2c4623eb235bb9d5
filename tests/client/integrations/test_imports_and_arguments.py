"""The integrations stay out of `import layerwatch`, check their arguments when made,
and survive the pickling a spawning strategy does."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from layerwatch.errors import ConfigError


def test_importing_layerwatch_imports_no_trainer() -> None:
    code = (
        "import sys, layerwatch, layerwatch.integrations\n"
        "print(json.dumps(sorted(m for m in ('lightning', 'transformers', 'accelerate', 'torch')"
        " if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("framework", ["lightning", "transformers"])
def test_bad_arguments_raise_when_the_callback_is_made(framework: str) -> None:
    module = pytest.importorskip(f"layerwatch.integrations.{framework}")
    with pytest.raises(ConfigError, match="every"):
        module.LayerwatchCallback(every=0)
    with pytest.raises(ConfigError, match="invalid run settings"):
        module.LayerwatchCallback(id="spaces are not allowed")
    callback = module.LayerwatchCallback("http://127.0.0.1:9", project="p", every=3)
    assert callback.run is None  # made when training starts
    assert pickle.loads(pickle.dumps(callback)).run is None
