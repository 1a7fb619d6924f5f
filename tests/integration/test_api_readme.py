"""The README's HTTP API examples, run with curl as written (ports and ids made unique)."""

from __future__ import annotations

import asyncio
import json
import os
import re

import httpx

from bridge.api.auth import hash_key
from bridge.kafka import ensure_topics
from bridge.settings import REPO_ROOT
from tests.integration.api_workflows import QuickOrder
from tests.support import (
    eventually,
    order_data,
    routes_config,
    running_api,
    running_bridge,
    running_worker,
    write_routes,
)

README = REPO_ROOT / "README.md"
KEY = "readme-key"


def section(text: str, title: str) -> str:
    """The README section under ``## <title>``, up to the next ``## `` heading."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def curl_commands(text: str) -> list[str]:
    """Every ``curl`` command of the ``sh`` blocks, continuation lines and quoted newlines kept."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        current = ""
        for line in block.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line + "\n"
            if not line.endswith("\\") and current.count("'") % 2 == 0:
                if current.lstrip().startswith("curl "):
                    commands.append(current.strip())
                current = ""
    return commands


def localize(command: str, dev_url: str, auth_url: str, uid: str) -> str:
    """Point a README command at the test's APIs and make its ids unique to this test."""
    command = command.replace("localhost:8080", dev_url.removeprefix("http://"))
    command = command.replace("localhost:8090", auth_url.removeprefix("http://"))
    return re.sub(r"\b(o|evt)-(\d{4})\b", rf"\1-{uid}-\2", command)


async def curl(command: str, env: dict[str, str]) -> str:
    """Run one shell command; it must exit 0. Its standard output."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, (command, err.decode())
    return out.decode()


async def test_readme_curl_examples(services, topics, settings, catalog, client, uid, tmp_path):
    text = section(README.read_text(), "HTTP API")
    commands = curl_commands(text)
    assert len(commands) >= 7
    task_queue = f"readme-{uid}"
    config = routes_config(
        [
            {
                "name": "start-order",
                "topic": topics["orders"],
                "type": "com.example.order.placed",
                "when": "data.total_cents > 0",
                "action": "start",
                "workflow": "KtbApiTestQuick",
                "task_queue": task_queue,
                "workflow_id": "order-{data.order_id}",
                "memo": {"outcome_topic": topics["outcomes"]},
            },
        ]
    )
    dev = settings.model_copy(
        update={
            "provenance_topic": f"ktb.provenance-{uid}",
            "routes_file": write_routes(tmp_path / "routes.yaml", config),
            "api_auth": False,
        }
    )
    secured = dev.model_copy(update={"api_auth": True, "api_keys": {hash_key(KEY): "acme"}})
    await ensure_topics(dev, {dev.provenance_topic: 3})
    env = dict(os.environ, KTB_API_KEY=KEY)
    async with (
        running_worker(dev, catalog, client, task_queue, [QuickOrder], provenance=True),
        running_bridge(dev, catalog, client, config, provenance=True) as bridge,
        running_api(dev) as dev_url,
        running_api(secured) as auth_url,
    ):
        # The README's waits are a user's: the bridge has joined its group by then.
        async def joined() -> bool:
            return bool(bridge.partitions)

        await eventually(joined, timeout=60)
        outputs = []
        for command in commands:
            output = await curl(localize(command, dev_url, auth_url, uid), env)
            assert "urn:ktb:problem" not in output, (command, output)
            outputs.append(output)

        placed, binary = json.loads(outputs[0]), json.loads(outputs[1])
        assert placed["status"] == binary["status"] == "completed"
        assert placed["workflow_id"] == f"order-o-{uid}-1001"
        event = json.loads(outputs[2])
        assert event["outcome"] == "started"
        assert event["read"]["topic"] == topics["orders"]
        assert json.loads(outputs[3])["status"] == "completed"
        assert [p["workflow_id"] for p in json.loads(outputs[4])["items"]] == [
            f"order-o-{uid}-1001"
        ]
        assert "event: state" in outputs[5] and '"status": "completed"' in outputs[5]
        # acme's running processes: none of this test's (they have no tenant); other
        # tests of the session may have left running processes of acme on the server.
        listed = json.loads(outputs[6])["items"]
        assert {p["tenant_id"] for p in listed} <= {"acme"}, listed
        assert f"order-o-{uid}-1001" not in {p["workflow_id"] for p in listed}

        # The problem document shown in the README is the API's answer, word for word.
        shown = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
        data = {k: v for k, v in order_data("o-1").items() if k != "currency"}
        async with httpx.AsyncClient(base_url=dev_url) as http:
            answer = await http.post(
                "/events",
                json={"type": "com.example.order.placed", "source": "shop", "data": data},
                headers={"Content-Type": "application/cloudevents+json"},
            )
        assert answer.json() == shown
