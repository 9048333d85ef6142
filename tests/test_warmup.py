"""ptyparity's own processes import a backend's training modules up front and freeze them
out of the collector's full passes (:mod:`ptyparity.warmup`); a program that merely imports
ptyparity keeps its collector untouched. Each case runs in a fresh interpreter: a freeze is
process-wide and must not reach the test process."""

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import gc, json, sys
    from ptyparity import warmup
    if sys.argv[1] == "enabled":
        warmup.enable()
    warmup.import_backend("torch")
    print(json.dumps({"frozen": gc.get_freeze_count(),
                      "imported": [m in sys.modules for m in ("lightning", "mlflow.pyfunc", "matplotlib.pyplot",
                                                               "ptyparity.backends.torch.lightning_module")]}))
""")


def _probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_backend_freezes_only_where_an_entry_point_enabled_it():
    plain, enabled = _probe("plain"), _probe("enabled")
    assert all(plain["imported"]) and all(enabled["imported"])
    assert plain["frozen"] == 0  # imported as a library: the collector is left as it was
    assert enabled["frozen"] > 100_000  # MLflow, matplotlib, torch and Lightning's objects


def test_the_cli_entry_point_enables_the_freeze():
    code = ("import sys; from ptyparity import cli, warmup; sys.argv = ['ptyparity', '--help']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\nprint('ENABLED', warmup._ENABLED)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ENABLED True" in out.stdout, out.stderr[-2000:]
