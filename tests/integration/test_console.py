"""The console in a real headless Chromium against real Kafka, Temporal and PostgreSQL:
sign-in, overview, an event's timeline, a process followed live, a dead letter
redriven and a replay started from the pages, two tenants kept apart, CSRF refused,
and ``/docs`` rendered with every request to another host blocked.

One bridge, worker, replay worker and API serve the whole module; each test opens
browser contexts of its own (its own cookies). Screenshots go to
``test-artifacts/console`` (printed in the summary).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from bridge.api.auth import SESSION_COOKIE, hash_key
from bridge.kafka import ensure_topics
from bridge.replay import ID_PREFIX
from bridge.settings import Settings
from tests.integration.api_workflows import PaidOrder, QuickOrder
from tests.integration.test_api_tenancy import order_routes
from tests.integration.test_replay_api import replay_worker
from tests.support import (
    Services,
    StackInfo,
    eventually,
    order_data,
    routes_config,
    running_api,
    running_bridge,
    running_worker,
    write_routes,
)
from tests.support.browser import chromium_executable, screenshot_path, skip_reason
from tests.support.kafka import unique_topics
from tests.support.stack import stack_settings

CHROMIUM = chromium_executable()
# Decided at collection: without a Chromium no service is started for nothing.
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason=skip_reason())]

KEY_A = "console-key-a"
KEY_B = "console-key-b"
PLACED = "com.example.order.placed"
CONFIRMED = "com.example.payment.confirmed"
CANCELLED = "com.example.order.cancelled"
TIMEOUT_MS = 30_000


@dataclass
class Console:
    """The module's running stack."""

    url: str
    uid: str
    topics: dict[str, str]
    settings: Settings

    @property
    def dlq(self) -> str:
        return f"{self.topics['orders']}.dlq"

    def tenant(self, key: str) -> str:
        return f"{'a' if key == KEY_A else 'b'}-{self.uid}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium of the system (never a downloaded one)."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def console(
    stack: StackInfo, catalog: Any, client: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Console]:
    """A bridge, a worker, a replay worker and the API with two tenants' keys."""
    uid = uuid.uuid4().hex[:10]
    settings = stack_settings(stack, f"console-{uid}")
    topics = await unique_topics(settings, uid)
    topics.update({"paused": f"paused-{uid}", "parked": f"parked-{uid}"})
    await ensure_topics(
        settings,
        {f"ktb.provenance-{uid}": 3, **{t: 1 for t in (topics["paused"], topics["parked"])}},
    )
    await ensure_topics(settings, {f"{topics[t]}.dlq": 1 for t in ("paused", "parked")})
    config = routes_config([*order_routes(topics, uid, scoped=True), *policy_routes(topics, uid)])
    settings = settings.model_copy(
        update={
            "provenance_topic": f"ktb.provenance-{uid}",
            "routes_file": write_routes(tmp_path_factory.mktemp("console") / "routes.yaml", config),
            "api_auth": True,
            "api_keys": {hash_key(KEY_A): f"a-{uid}", hash_key(KEY_B): f"b-{uid}"},
            "api_topics": {CANCELLED: topics["orders"]},
            "api_stream_interval_s": 0.1,
            "replay_task_queue": f"ktb-replay-{uid}",
            "replay_progress_interval_s": 0.2,
            "console_temporal_ui_url": "http://127.0.0.1:1",
        }
    )
    async with (
        running_worker(
            settings, catalog, client, f"api-{uid}", [PaidOrder, QuickOrder], provenance=True
        ),
        running_bridge(settings, catalog, client, config, provenance=True),
        replay_worker(settings, client),
        running_api(settings) as url,
    ):
        yield Console(url, uid, topics, settings)


def policy_routes(topics: dict[str, str], uid: str) -> list[dict[str, Any]]:
    """A start route on a topic that pauses at a failing record, and one on a topic that
    parks a failing record's key."""
    return [
        {
            "name": f"{policy}-start",
            "topic": topics[name],
            "type": PLACED,
            "action": "start",
            "workflow": "KtbApiTestQuick",
            "task_queue": f"api-{uid}",
            "workflow_id": f"{name}-{uid}-{{data.order_id}}",
            "memo": {"outcome_topic": topics["outcomes"]},
            "on_failure": policy,
        }
        for name, policy in (("paused", "pause"), ("parked", "park_key"))
    ]


async def poison(console: Console, services: Services, topic: str, key: str) -> None:
    """A record of tenant A that does not decode."""
    headers = [
        ("ce_specversion", b"1.0"), ("ce_id", f"poison-{topic}".encode()),
        ("ce_source", b"tests"), ("ce_type", PLACED.encode()),
        ("content-type", b"application/avro"), ("ce_tenantid", console.tenant(KEY_A).encode()),
    ]  # fmt: skip
    await services.produce_raw(topic, b"not avro at all", headers, key=key.encode())


@contextlib.asynccontextmanager
async def api(console: Console, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a tenant's bearer key."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=console.url, headers=headers, timeout=30) as http:
        yield http


async def produce(http: httpx.AsyncClient, event_id: str, type: str, data: dict[str, Any]) -> None:
    body = {"specversion": "1.0", "id": event_id, "type": type, "source": "tests",
            "partitionkey": data["order_id"], "data": data}  # fmt: skip
    response = await http.post(
        "/events", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text


@contextlib.asynccontextmanager
async def page_of(browser: Any, console: Console, key: str | None, **options: Any) -> Any:
    """A page in a fresh context (cookies of its own), signed in with ``key`` if given."""
    from playwright.async_api import expect

    context = await browser.new_context(base_url=console.url, **options)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        if key is not None:
            await page.goto("/console")
            await page.get_by_label("API key").fill(key)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("#tenant")).to_have_text(console.tenant(key))
        yield page
    finally:
        await context.close()


async def test_sign_in_overview_on_a_laptop_and_a_phone_and_sign_out(browser, console):
    from playwright.async_api import expect

    async with page_of(browser, console, None) as page:
        await page.goto("/console")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.get_by_label("API key").fill("not-a-key")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("alert")).to_have_text("Unknown API key.")
        await page.get_by_label("API key").fill(KEY_A)
        await page.keyboard.press("Enter")
        await expect(page.locator("#tenant")).to_have_text(console.tenant(KEY_A))
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        await expect(page.get_by_role("heading", name="Readiness ready")).to_be_visible()
        lag = page.get_by_role("region", name="Consumer lag")
        await expect(lag.get_by_role("cell", name=console.topics["orders"]).first).to_be_visible()
        await expect(page.locator(".chart svg[role=img]")).to_be_visible()
        cookie = next(c for c in await page.context.cookies() if c["name"] == SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert KEY_A not in cookie["value"]
        await page.screenshot(path=screenshot_path("overview-laptop"), full_page=True)

        # Keyboard: the skip link shows when focused and takes focus to the content; the
        # navigation follows it in the tab order.
        skip = page.get_by_role("link", name="Skip to content")
        await skip.focus()
        assert (await skip.bounding_box() or {"x": -1})["x"] >= 0
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="ktb console")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Overview", exact=True)).to_be_focused()
        await page.keyboard.press("Tab")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("heading", name="Events", exact=True)).to_be_visible()
        await page.goto("/console")

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert not [c for c in await page.context.cookies() if c["name"] == SESSION_COOKIE]
        await page.goto("/console/processes")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    phone = {"viewport": {"width": 390, "height": 844}, "color_scheme": "dark"}
    async with page_of(browser, console, KEY_A, **phone) as page:
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the overview is {width}px wide on a 390px phone"
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 18, 22)", background
        await page.screenshot(path=screenshot_path("overview-phone-dark"), full_page=True)


async def test_an_event_timeline_and_its_process_followed_live(browser, console):
    from playwright.async_api import expect

    uid = console.uid
    order_id = f"live-{uid}"
    workflow_id = f"{console.tenant(KEY_A)}:at-{uid}-{order_id}"
    async with api(console, KEY_A) as http:
        await produce(http, f"ev-{order_id}", PLACED, order_data(order_id))

        async def awaiting_payment() -> bool:
            response = await http.get(f"/processes/{quote(workflow_id)}")
            return (
                response.status_code == 200
                and (response.json()["progress"] or {}).get("step") == "awaiting_payment"
            )

        await eventually(awaiting_payment, timeout=60)
        async with page_of(browser, console, KEY_A) as page:
            await page.goto("/console/events")
            await page.get_by_label("Event id", exact=True).fill(f"ev-{order_id}")
            await page.get_by_role("button", name="Look up").click()
            await expect(page).to_have_url(f"{console.url}/console/events/ev-{order_id}")
            timeline = page.get_by_role("list", name="What happened to the event")
            await expect(timeline).to_contain_text(f"Read from {console.topics['orders']}")
            await expect(timeline).to_contain_text("Route start → start")
            record = page.get_by_role("region", name="Record")
            await expect(record).to_contain_text('"payment_token": "tok_visa"')  # decoded data
            await expect(record).to_contain_text(f'"ce_tenantid": "{console.tenant(KEY_A)}"')
            await timeline.get_by_role("link", name=workflow_id).click()
            await expect(page).to_have_url(f"{console.url}/console/processes/{quote(workflow_id)}")
            await expect(page.locator("#process-status")).to_have_text("running")
            await expect(page.locator("#live")).to_have_text("Live: following the process.")
            await expect(page.locator("#process-progress")).to_contain_text("awaiting_payment")
            temporal = page.get_by_role("link", name="Temporal UI")
            assert (await temporal.get_attribute("href") or "").startswith(
                f"http://127.0.0.1:1/namespaces/default/workflows/{quote(workflow_id, safe='')}"
            )

            # The payment arrives while the page is open: the stream shows the change.
            paid = {"order_id": order_id, "payment_id": f"p-{uid}", "amount_cents": 2500}
            await produce(http, f"pay-{order_id}", CONFIRMED, paid)
            await expect(page.locator("#process-status")).to_have_text("completed")
            await expect(page.locator("#live")).to_have_text("The process has closed.")
            await expect(page.locator("#process-outcome")).to_contain_text(f"p-{uid}")
            await page.screenshot(path=screenshot_path("process-live"), full_page=True)

            # The worker's record of the outcome it published reaches the read model within
            # a provenance linger (KTB_PROVENANCE_LINGER_MS) of the process closing.
            async def outcome_recorded() -> bool:
                view = (await http.get(f"/events/ev-{order_id}")).json()
                return "com.example.order.completed" in {p["type"] for p in view["published"]}

            await eventually(outcome_recorded)
            await page.goto(f"/console/events/ev-{order_id}")
            await expect(timeline).to_contain_text("Published outcome com.example.order.completed")
            await page.screenshot(path=screenshot_path("event-timeline"), full_page=True)

            await page.goto("/console/processes?status=completed")
            await expect(page.get_by_role("link", name=workflow_id)).to_be_visible()

            # By business key: the records of the key, each linked to its event.
            await page.goto("/console/events")
            await page.get_by_label("Look up by").select_option("key")
            await page.get_by_label("Business key").fill(order_id)
            await page.get_by_role("button", name="Look up").click()
            found = page.get_by_role("link", name=f"ev-{order_id}")
            await expect(found).to_have_count(1)
            await expect(page.get_by_role("link", name=f"pay-{order_id}")).to_have_count(1)

    # Another tenant: neither the event nor the process is there.
    async with page_of(browser, console, KEY_B) as page:
        await page.goto(f"/console/events/ev-{order_id}")
        await expect(page.get_by_role("alert")).to_contain_text("Not found")
        status = await page.evaluate(
            "async (url) => (await fetch(url)).status", f"/events/ev-{order_id}/record"
        )
        assert status == 404
        await page.goto(f"/console/processes/{quote(workflow_id)}")
        await expect(page.get_by_role("alert")).to_contain_text("Not found")
        await page.goto("/console/processes")
        await expect(page.get_by_role("heading", name="Processes")).to_be_visible()
        await expect(page.get_by_role("link", name=workflow_id)).to_have_count(0)


async def test_a_dead_letter_shown_and_redriven_from_the_page(browser, console):
    from playwright.async_api import expect

    uid = console.uid
    event_id = f"dl-{uid}"
    async with api(console, KEY_A) as http:
        # No route takes a cancellation on this topic: `unmatched: dead_letter`.
        await produce(http, event_id, CANCELLED, {"order_id": f"c-{uid}", "reason": "test"})

        async def lettered() -> list[dict[str, Any]]:
            page = (await http.get("/dlq", params={"topic": console.dlq})).json()
            return [x for x in page["letters"] if x["event_id"] == event_id]

        (letter,) = await eventually(lettered, timeout=60)
        ref = f"{letter['partition']}:{letter['offset']}"
        async with page_of(browser, console, KEY_A) as page:
            await page.goto("/console")
            dead = page.get_by_role("region", name="Dead letters")
            await dead.get_by_role("link", name=console.dlq).first.click()
            await expect(
                page.get_by_role("heading", name=f"Dead letters of {console.dlq}")
            ).to_be_visible()
            await page.get_by_role("button", name=ref, exact=True).click()
            details = page.locator("#letter")
            await expect(details).to_contain_text("Error (from the letter's headers)")
            await expect(details).to_contain_text(f"c-{uid}")  # the decoded data
            await expect(page.locator("#letter-title")).to_be_focused()
            await page.screenshot(path=screenshot_path("dead-letter"), full_page=True)

            await page.get_by_label(f"Select letter {ref}").check()
            await page.get_by_role("button", name="Redrive selected").click()
            dialog = page.get_by_role("dialog")
            await expect(dialog).to_contain_text("1 record will move")
            await dialog.get_by_role("button", name="Redrive").click()
            await expect(page.get_by_role("status")).to_have_text("Redriven: 1.")
            history = page.get_by_role("region", name="Redrive history")
            await expect(history.get_by_role("cell", name=ref, exact=True)).to_be_visible()
            await page.screenshot(path=screenshot_path("dead-letter-redriven"), full_page=True)

        async def redriven() -> bool:
            return bool([x for x in await lettered() if x["redriven"]])

        await eventually(redriven)

    # Tenant B sees none of tenant A's letters, and cannot open one.
    async with page_of(browser, console, KEY_B) as page:
        await page.goto(f"/console/dlq/{console.dlq}")
        await expect(page.get_by_text("0 letters shown.")).to_be_visible()
        await expect(page.get_by_role("link", name=event_id)).to_have_count(0)
        status = await page.evaluate(
            "async (url) => (await fetch(url)).status",
            f"/dlq/{console.dlq}/letters/{ref}",
        )
        assert status == 404


async def test_a_replay_from_the_page_dry_run_first_then_confirmed(browser, console):
    from playwright.async_api import expect

    uid = console.uid
    async with api(console, KEY_A) as http:
        await produce(http, f"rp-{uid}", PLACED, order_data(f"rp-{uid}"))
    async with page_of(browser, console, KEY_A) as page:
        await page.goto("/console/replays")
        await page.get_by_label("Topic").fill(console.topics["orders"])
        await page.get_by_label("Routes (comma-separated; empty: all)").fill("start")
        await page.get_by_role("button", name="Dry run").click()
        dry = page.locator("#dry-run")
        await expect(dry.get_by_role("heading", name="Dry run completed")).to_be_visible()
        await expect(dry.get_by_role("cell", name="start", exact=True).first).to_be_visible()
        await page.screenshot(path=screenshot_path("replay-dry-run"), full_page=True)
        await page.get_by_role("button", name="Start the replay").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("records would be acted on")
        await dialog.get_by_role("button", name="Start replay").click()
        await expect(page).to_have_url(re.compile(f"/console/replays/{ID_PREFIX}[0-9a-f]{{12}}$"))
        replay_id = page.url.rsplit("/", 1)[1]
        await expect(page.get_by_role("heading", name="Final report")).to_be_visible()
        await expect(
            page.get_by_role("heading", name=f"Replay {replay_id} completed")
        ).to_be_visible()
        assert await page.get_by_role("progressbar").get_attribute(
            "value"
        ) == await page.get_by_role("progressbar").get_attribute("max")
        await page.screenshot(path=screenshot_path("replay-report"), full_page=True)

    async with api(console, KEY_A) as http:
        view = (await http.get(f"/replays/{replay_id}")).json()
        assert (view["state"], view["dry_run"], view["topic"]) == (
            "completed",
            False,
            console.topics["orders"],
        )
        assert view["report"]["read"] >= 1
    async with page_of(browser, console, KEY_B) as page:
        await page.goto(f"/console/replays/{replay_id}")
        await expect(page.get_by_role("alert")).to_contain_text("Not found")


async def test_a_paused_partition_skipped_and_a_parked_key_released_from_the_pages(
    browser, console, catalog, client
):
    from playwright.async_api import expect

    uid = console.uid
    paused, parked = console.topics["paused"], console.topics["parked"]
    services = Services(console.settings, catalog, client)
    await services.start()
    try:
        await poison(console, services, paused, "k")
        await poison(console, services, parked, "k")
        # The same key after the poison record: parked behind its letter.
        await services.produce(parked, PLACED, order_data(f"pk-{uid}"), key="k",
                               tenant=console.tenant(KEY_A))  # fmt: skip
    finally:
        await services.stop()
    async with api(console, KEY_A) as http:

        async def parked_now() -> list[dict[str, Any]]:
            return (await http.get("/parked", params={"topic": parked})).json()["records"]

        await eventually(parked_now, timeout=60)
        async with page_of(browser, console, KEY_A) as page:
            await page.goto("/console")
            pauses = page.get_by_role("region", name="Paused partitions")
            row = pauses.get_by_role("row").filter(has_text=paused)
            await expect(row).to_have_count(1)
            await expect(page.get_by_role("region", name="Parked keys")).to_contain_text(parked)
            await page.screenshot(path=screenshot_path("overview-paused-parked"), full_page=True)
            await row.get_by_role("button", name="Skip").click()
            dialog = page.get_by_role("dialog")
            await expect(dialog).to_contain_text("1 record will move to the dead-letter topic")
            await dialog.get_by_role("button", name="Skip it").click()
            await expect(page.get_by_role("status")).to_have_text(f"Partition {paused} [0]: skip.")
            # The bridge acts on the decision; the overview (refreshed) no longer lists it.
            await expect(row).to_have_count(0)

            await (
                page.get_by_role("region", name="Parked keys")
                .get_by_role("link", name=parked)
                .click()
            )
            await expect(
                page.get_by_role("heading", name=f"Dead letters of {parked}.dlq")
            ).to_be_visible()
            parked_list = page.get_by_role("region", name=f"Parked on {parked}")
            await expect(parked_list.get_by_role("row")).to_have_count(2)  # header and one
            letters = page.locator("input[data-letter]")
            await expect(letters).to_have_count(1)
            await letters.check()
            await page.get_by_role("button", name="Discard selected").click()
            await expect(dialog).to_contain_text("keys they block are released")
            await dialog.get_by_role("button", name="Discard").click()
            await expect(page.get_by_role("status")).to_have_text("Discarded 1; released keys: 1.")

        async def released() -> bool:
            return await parked_now() == []

        await eventually(released, timeout=60)

        async def started() -> bool:
            response = await http.get(f"/processes/{console.tenant(KEY_A)}:parked-{uid}-pk-{uid}")
            return response.status_code == 200

        await eventually(started, timeout=60)


async def test_state_changing_requests_need_the_csrf_token(browser, console):
    redrive = {"topic": console.dlq, "offsets": ["0:999999"]}
    async with httpx.AsyncClient(base_url=console.url, timeout=30) as http:
        signed = await http.post("/session", json={"api_key": KEY_A})
        assert signed.status_code == 200, signed.text
        csrf = signed.json()["csrf_token"]
        assert signed.json()["tenant"] == console.tenant(KEY_A)
        assert (await http.get("/processes")).status_code == 200
        refused = await http.post("/dlq/redrive", json=redrive)
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"] == "urn:ktb:problem:csrf-token-missing"
        wrong = await http.post("/dlq/redrive", json=redrive, headers={"X-CSRF-Token": "x"})
        assert wrong.status_code == 403
        allowed = await http.post("/dlq/redrive", json=redrive, headers={"X-CSRF-Token": csrf})
        assert allowed.status_code == 422, allowed.text  # past the guard: no such letter
        form = await http.post("/session", content=f"api_key={KEY_A}",
                               headers={"Content-Type": "text/plain"})  # fmt: skip
        assert form.status_code == 422, form.text
        out = await http.delete("/session")
        assert out.status_code == 204
        assert (await http.get("/processes")).status_code == 401

    async with page_of(browser, console, KEY_A) as page:
        statuses = await page.evaluate(
            """async (body) => {
                const post = (headers) => fetch('/dlq/redrive', {method: 'POST',
                    headers: {'Content-Type': 'application/json', ...headers},
                    body: JSON.stringify(body)}).then((r) => r.status);
                const token = (await (await fetch('/session')).json()).csrf_token;
                return [await post({}), await post({'X-CSRF-Token': token})];
            }""",
            redrive,
        )
        assert statuses == [403, 422]


async def test_docs_render_with_every_other_host_blocked(browser, console):
    from playwright.async_api import expect

    elsewhere: list[str] = []
    context = await browser.new_context(base_url=console.url)
    try:

        async def only_here(route: Any) -> None:
            if route.request.url.startswith(console.url):
                await route.continue_()
            else:
                elsewhere.append(route.request.url)
                await route.abort()

        await context.route("**/*", only_here)
        page = await context.new_page()
        await page.goto("/docs")
        await expect(page.locator(".opblock").first).to_be_visible(timeout=TIMEOUT_MS)
        await expect(page.locator(".opblock-summary-path", has_text="/overview")).to_have_count(1)
        await page.screenshot(path=screenshot_path("docs"), full_page=False)
        await page.goto("/console")
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        await context.close()
    assert elsewhere == []
