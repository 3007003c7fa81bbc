"""The suite's own mosquitto broker works (MQTT tests later depend on it)."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt


def test_broker_round_trip(mosquitto) -> None:
    received = threading.Event()
    payloads: list[bytes] = []

    def on_message(client, userdata, message) -> None:
        payloads.append(message.payload)
        received.set()

    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        client.subscribe("sitectl/test", qos=1)
        assert subscribed.wait(5)
        client.publish("sitectl/test", b"hello", qos=1).wait_for_publish(5)
        assert received.wait(5)
        assert payloads == [b"hello"]
    finally:
        client.loop_stop()
        client.disconnect()
