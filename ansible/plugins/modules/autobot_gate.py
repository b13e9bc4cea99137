#!/usr/bin/python
"""The rollout gate on the controller: decide from the machines' audit summaries, write the report."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: autobot_gate
short_description: Decide whether the cluster may move from the logging phase to enforcement
description:
  - Runs on the controller. Takes every Python service machine's recorded phase and the summary of its audit
    log since the phase began (C(autobot audit summary)), decides with C(autobot.ops.gate.decide), and writes
    the report as JSON under I(report_dir). Never changes a machine.
  - Service routes only; public (user) traffic is counted apart. Refuses while a machine is not in the logging
    phase, the phase ran less than I(min_duration_s), or any service-route request would have been refused.
  - I(override) (a reason) lets an operator go on anyway; the reason is recorded in the report.
options:
  machines:
    description: host -> {service, phase, since, summary}.
    type: dict
    required: true
  services:
    description: The service matrix (C(autobot_services)).
    type: dict
    required: true
  min_duration_s:
    description: How long the logging phase must have run on every machine.
    type: int
    required: true
  override:
    description: Go on despite refusals, for this reason (recorded).
    type: str
    default: ""
  report_dir:
    description: Where the JSON report is written on the controller.
    type: path
    required: true
author: AutoBot cluster toolkit
"""

RETURN = r"""
passed:
  description: Whether enforcement may begin (refusals overridden count as passed).
  type: bool
  returned: always
refusals:
  description: Why not (empty when nothing stands in the way).
  type: list
  elements: str
  returned: always
table:
  description: The caller/callee/route/decision/count/reasons table, as text.
  type: str
  returned: always
report:
  description: Path of the JSON report.
  type: str
  returned: always
"""

import json
from datetime import UTC, datetime
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule

try:
    from autobot.ops.gate import decide

    HAS_AUTOBOT = True
except ImportError:  # pragma: no cover - reported by the module itself
    HAS_AUTOBOT = False


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "machines": {"type": "dict", "required": True},
            "services": {"type": "dict", "required": True},
            "min_duration_s": {"type": "int", "required": True},
            "override": {"type": "str", "default": ""},
            "report_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    if not HAS_AUTOBOT:
        module.fail_json(
            msg="the autobot package is not importable on the controller: run from the toolkit's venv"
        )
    p = module.params
    now = datetime.now(UTC)
    report = decide(
        p["machines"],
        p["services"],
        now=now,
        min_duration_s=p["min_duration_s"],
        override=p["override"] or None,
    )
    directory = Path(p["report_dir"])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{now.strftime('%Y%m%dT%H%M%SZ')}-gate.json"
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    module.exit_json(
        changed=False, passed=report.passed, refusals=report.refusals, table=report.table(), report=str(path)
    )


if __name__ == "__main__":
    main()
