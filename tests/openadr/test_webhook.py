"""Push: a subscription on the VTN calls sitectl's endpoint, and a notification makes it read."""

from __future__ import annotations

import aiohttp

from tests.helpers import wait_for
from tests.openadr.conftest import KW, at, limit_interval, running

HOOK = {"enabled": True, "listen_host": "127.0.0.1", "listen_port": 0}


def kws(state) -> list[float | None]:
    return sorted(w.limit_kw for w in state.limits.in_force(state.clock()))


async def test_a_notification_makes_the_ven_read_the_new_event(vtn, make_ven) -> None:
    flex = vtn.add_program("flex")
    ven, state = make_ven(webhook=HOOK)  # polls once an hour: only the notification can wake it
    async with running(ven):
        await wait_for(lambda: ven.reads == 1, message="the first read, which subscribes")
        (subscription,) = vtn.subscriptions.values()
        assert subscription["programID"] == flex["id"]
        assert subscription["clientName"] == "depot-north"
        (operation,) = subscription["objectOperations"]
        assert operation["callbackUrl"] == ven.webhook.callback_url
        assert operation["callbackUrl"].startswith("http://127.0.0.1:")
        assert set(operation["objects"]) >= {"EVENT"} and "CREATE" in operation["operations"]
        reads = ven.reads
        event = vtn.add_event(
            flex["id"], [limit_interval(0, 275, at(-1), "PT1H")], payloadDescriptors=KW
        )
        assert await vtn.notify("EVENT", "CREATE", event) == [200]
        await wait_for(lambda: kws(state) == [275], message="the notified event's limit")
        assert ven.reads == reads + 1


async def test_the_endpoint_refuses_a_wrong_token_and_garbage(vtn, make_ven) -> None:
    vtn.add_program("flex")
    ven, _ = make_ven(webhook=HOOK)
    async with running(ven):
        await wait_for(lambda: len(vtn.subscriptions) == 1, message="the subscription")
        url = ven.webhook.callback_url
        token = {"Authorization": f"Bearer {ven.webhook.bearer_token}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={}, headers={"Authorization": "Bearer x"}) as r:
                assert r.status == 401
            async with session.post(url, data=b"{nope", headers=token) as r:
                assert r.status == 400
            async with session.post(url, json={"objectType": "EVENT"}, headers=token) as r:
                assert r.status == 400
        assert ven.webhook.received == 0


async def test_a_restarted_ven_updates_its_subscription_instead_of_adding_one(
    vtn, make_ven, caplog
) -> None:
    vtn.add_program("flex")
    hook = {**HOOK, "callback_url": "http://127.0.0.1:9/openadr/notifications"}
    first, _ = make_ven(webhook=hook)
    async with running(first):
        await wait_for(lambda: len(vtn.subscriptions) == 1, message="the subscription")
    (sid,) = vtn.subscriptions
    second, _ = make_ven(webhook=hook)
    async with running(second):
        await wait_for(lambda: vtn.requests("PUT", f"/subscriptions/{sid}"), message="the update")
    (subscription,) = vtn.subscriptions.values()
    assert subscription["objectOperations"][0]["bearerToken"] == second.webhook.bearer_token
    # Deleted on the VTN meanwhile (404 to the update): said, and the VEN polls on.
    third, _ = make_ven(webhook=hook)
    vtn.fail(404, prefix=f"/subscriptions/{sid}")
    await third.webhook.start()
    try:
        assert await third.read_once(), third.failure
    finally:
        await third.webhook.stop()
    assert "HTTP 404" in caplog.text and third.failure is None


async def test_a_vtn_refusing_the_subscription_is_polled(vtn, make_ven, caplog) -> None:
    flex = vtn.add_program("flex")
    vtn.add_event(flex["id"], [limit_interval(0, 310, at(-1), "PT1H")], payloadDescriptors=KW)
    vtn.fail(403, prefix="/subscriptions")
    ven, state = make_ven(webhook=HOOK)
    await ven.webhook.start()
    try:
        assert await ven.read_once()
    finally:
        await ven.webhook.stop()
    assert "no subscription" in caplog.text and "polling only" in caplog.text
    assert kws(state) == [310] and vtn.subscriptions == {}
