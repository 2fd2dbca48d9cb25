"""The gateway and the registry never import torch, transformers or peft (docs/architecture.md)."""

from __future__ import annotations

import subprocess
import sys

TORCH_FREE = (
    "gateway.app, gateway.cli, gateway.flower, gateway.stack, registry.adapters, registry.jobs, "
    "registry.artifacts.checks, registry.artifacts.remote, registry.artifacts.store, workers.contract.messages, "
    "workers.contract.broker, workers.contract.heartbeat, workers.demo_model.skills, workers.runtime, workers.app"
)


def test_gateway_registry_contract_and_worker_shell_import_without_torch() -> None:
    code = (
        f"import sys, {TORCH_FREE}\n"
        "from gateway.app import create_app\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
