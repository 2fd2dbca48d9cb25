"""The gateway and the registry never import torch, transformers or peft (DESIGN.md)."""

from __future__ import annotations

import subprocess
import sys


def test_gateway_and_registry_import_without_torch() -> None:
    code = (
        "import sys, gateway.app, gateway.cli, gateway.flower, gateway.stack, registry.adapters, registry.jobs, "
        "registry.adapter_check, workers.celery_app, workers.demo_model.skills\n"
        "from gateway.app import create_app\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
