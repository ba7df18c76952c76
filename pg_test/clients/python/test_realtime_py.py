"""The Python `realtime` client (V1 JSON) against the live worker."""
import asyncio
import json

import pytest
from realtime import AsyncRealtimeClient

from conftest import URL, jwt, psql, unique

WAIT = 5


async def connected(token=None):
    client = AsyncRealtimeClient(URL, token or jwt("anon"), auto_reconnect=True)
    await client.connect()
    return client


async def subscribed(channel):
    states = []
    await channel.subscribe(lambda state, err: states.append((str(state), err)))
    return states


async def next_item(queue: asyncio.Queue, wait=WAIT):
    return await asyncio.wait_for(queue.get(), wait)


async def test_broadcast_self_between_two_clients_with_utf8():
    a, b = await connected(), await connected()
    topic = unique("py-room")
    got_a, got_b = asyncio.Queue(), asyncio.Queue()
    ch_a = a.channel(topic, {"config": {"broadcast": {"self": True, "ack": True}}})
    ch_a.on_broadcast("msg", lambda m: got_a.put_nowait(m))
    ch_b = b.channel(topic, {"config": {"broadcast": {"self": False}}})
    ch_b.on_broadcast("msg", lambda m: got_b.put_nowait(m))
    assert "SUBSCRIBED" in str(await subscribed(ch_a))
    assert "SUBSCRIBED" in str(await subscribed(ch_b))
    payload = {"text": "héllo wörld — 你好 🎉", "n": 1}
    await ch_a.send_broadcast("msg", payload)
    for queue in (got_a, got_b):
        message = await next_item(queue)
        assert message["payload"] == payload
        assert message["event"] == "msg"
    await a.close()
    await b.close()


async def test_presence_across_two_clients():
    a, b = await connected(), await connected()
    topic = unique("py-lobby")
    joins = asyncio.Queue()
    ch_a = a.channel(topic, {"config": {"presence": {"key": "alice", "enabled": True}}})
    ch_a.on_presence_join(lambda key, current, new: joins.put_nowait(key))
    ch_b = b.channel(topic, {"config": {"presence": {"key": "bob", "enabled": True}}})
    await subscribed(ch_a)
    await subscribed(ch_b)
    await ch_b.track({"status": "online"})
    assert await next_item(joins) == "bob"
    state = ch_a.presence_state()
    assert state["bob"][0]["status"] == "online"
    await ch_b.untrack()
    for _ in range(50):
        if "bob" not in ch_a.presence_state():
            break
        await asyncio.sleep(0.1)
    assert "bob" not in ch_a.presence_state()
    await a.close()
    await b.close()


async def test_private_channel_denied_then_allowed():
    client = await connected(jwt("authenticated", sub="py-user"))
    denied = client.channel(unique("py-secret"), {"config": {"private": True}})
    states = await subscribed(denied)
    assert "CHANNEL_ERROR" in str(states)
    assert "Unauthorized" in str(states)
    await client.remove_channel(denied)
    allowed = client.channel(unique("py-private:room"), {"config": {"private": True}})
    assert "SUBSCRIBED" in str(await subscribed(allowed))
    await client.close()


async def test_http_send_reaches_subscribers():
    sender = AsyncRealtimeClient(URL, jwt("anon"))
    receiver = await connected()
    topic = unique("py-rest")
    got = asyncio.Queue()
    ch = receiver.channel(topic)
    ch.on_broadcast("rest", lambda m: got.put_nowait(m))
    await subscribed(ch)
    await sender.channel(topic).http_send("rest", {"via": "http"})
    assert (await next_item(got))["payload"] == {"via": "http"}
    await receiver.close()


async def test_database_broadcast_reaches_python():
    client = await connected()
    topic = unique("py-db")
    got = asyncio.Queue()
    ch = client.channel(topic)
    ch.on_broadcast("from_sql", lambda m: got.put_nowait(m))
    await subscribed(ch)
    psql(f"SELECT realtime.send('{{\"a\": 1}}', 'from_sql', '{topic}', false)")
    message = await next_item(got, 10)
    assert message["payload"]["a"] == 1
    assert message["payload"]["id"] == message["meta"]["id"]
    await client.close()


async def test_token_refresh_and_expiry():
    client = await connected()
    topic = unique("py-token")
    errors = asyncio.Queue()
    ch = client.channel(topic)
    await subscribed(ch)
    await client.set_auth(jwt("anon", ttl=2))
    ch.on_system(lambda payload: errors.put_nowait(payload))
    # The refreshed token expires; the server ends the channel with a system error.
    for _ in range(60):
        if not ch.is_joined:
            break
        await asyncio.sleep(0.1)
    assert not ch.is_joined
    await client.close()


async def test_reconnects_after_the_server_closes_the_socket():
    client = await connected()
    topic = unique("py-reconnect")
    got = asyncio.Queue()
    ch = client.channel(topic, {"config": {"broadcast": {"self": True}}})
    ch.on_broadcast("after", lambda m: got.put_nowait(m))
    await subscribed(ch)
    pid = psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'")
    psql(f"SELECT pg_terminate_backend({pid})")
    # The client reconnects on its own and rejoins its channels.
    for _ in range(150):
        await asyncio.sleep(0.1)
        if client.is_connected and ch.is_joined and psql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'realtime'") == "1":
            try:
                await ch.send_broadcast("after", {"back": True})
                message = await next_item(got, 1)
                assert message["payload"] == {"back": True}
                break
            except (asyncio.TimeoutError, Exception):
                continue
    else:
        pytest.fail("the client did not get back a working channel within 15 s")
    await client.close()


async def test_postgres_changes_with_a_filter():
    table = unique("py_pc").replace("-", "_")
    psql(f"""CREATE TABLE {table} (id int PRIMARY KEY, title text);
             ALTER PUBLICATION supabase_realtime ADD TABLE {table};
             GRANT SELECT ON {table} TO service_role;""")
    client = await connected(jwt("service_role"))
    everything, filtered = asyncio.Queue(), asyncio.Queue()
    ch = client.channel(table)
    ch.on_postgres_changes("*", lambda p: everything.put_nowait(p), table=table, schema="public")
    ch.on_postgres_changes("INSERT", lambda p: filtered.put_nowait(p), table=table, schema="public", filter="id=eq.2")
    assert "SUBSCRIBED" in str(await subscribed(ch))
    psql(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')")
    psql(f"UPDATE {table} SET title = 'c' WHERE id = 1")
    psql(f"DELETE FROM {table} WHERE id = 2")
    changes = [await next_item(everything, 10) for _ in range(4)]
    kinds = [c["data"]["type"] for c in changes]
    assert kinds == ["INSERT", "INSERT", "UPDATE", "DELETE"]
    assert changes[0]["data"]["record"] == {"id": 1, "title": "a"}
    assert changes[2]["data"]["old_record"] == {"id": 1}
    assert changes[3]["data"]["old_record"] == {"id": 2}
    assert "record" not in changes[3]["data"] or changes[3]["data"]["record"] is None
    only = await next_item(filtered)
    assert only["data"]["record"]["id"] == 2
    assert filtered.empty()
    await client.close()


async def test_filters_beyond_eq_and_a_malformed_filter():
    table = unique("py_ops").replace("-", "_")
    psql(f"""CREATE TABLE {table} (id int PRIMARY KEY, name text, flag boolean);
             ALTER PUBLICATION supabase_realtime ADD TABLE {table};
             GRANT SELECT ON {table} TO service_role;""")
    client = await connected(jwt("service_role"))
    ilike, both, selected, errors = asyncio.Queue(), asyncio.Queue(), asyncio.Queue(), asyncio.Queue()
    ch = client.channel(table)
    ch.on_postgres_changes("INSERT", lambda p: ilike.put_nowait(p), table=table, schema="public", filter="name=ilike.A%")
    ch.on_postgres_changes("INSERT", lambda p: both.put_nowait(p), table=table, schema="public",
                           filter="id=gt.1,flag=not.is.null")
    ch.on_postgres_changes("INSERT", lambda p: selected.put_nowait(p), table=table, schema="public",
                           filter="id=eq.1", select=["name"])
    assert "SUBSCRIBED" in str(await subscribed(ch))
    psql(f"INSERT INTO {table} VALUES (1, 'apple', true), (2, 'b', null), (3, 'Ant', false)")
    assert [(await next_item(ilike, 10))["data"]["record"]["id"] for _ in range(2)] == [1, 3]
    assert (await next_item(both))["data"]["record"]["id"] == 3
    assert (await next_item(selected))["data"]["record"] == {"id": 1, "name": "apple"}
    assert ilike.empty() and both.empty()

    # supabase-py reports a system error as CHANNEL_ERROR, carrying Supabase's text.
    bad = client.channel(unique("py_bad"))
    bad.on_postgres_changes("*", lambda p: None, table=table, schema="public", filter="id=eq")
    await bad.subscribe(lambda state, err: errors.put_nowait((str(state), str(err))))
    while True:
        state, err = await next_item(errors)
        if "CHANNEL_ERROR" in state:
            break
    assert json.loads(err)["message"] == 'Error parsing `filter` params: ["eq"]'
    await client.close()


async def test_a_binary_database_broadcast_is_not_sent_to_v1_clients():
    # V1 frames are JSON and cannot carry bytes; as in Supabase, V1 sockets skip them.
    topic = unique("py_bin")
    client = await connected(jwt("service_role"))
    got = asyncio.Queue()
    ch = client.channel(topic)
    ch.on_broadcast("e", lambda m: got.put_nowait(m))
    assert "SUBSCRIBED" in str(await subscribed(ch))
    psql(f"SELECT realtime.send_binary('\\x0102'::bytea, 'e', '{topic}', false)")
    psql(f"""SELECT realtime.send('{{"after": 1}}', 'e', '{topic}', false)""")
    first = await next_item(got, 10)
    assert first["payload"]["after"] == 1
    await client.close()
