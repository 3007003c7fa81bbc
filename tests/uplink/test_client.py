"""The paho client factory (reference M9 settings) and the connection diagnostics."""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sitectl.config import MqttConfig
from sitectl.uplink.client import describe_connect_error, describe_refusal, make_client


def build(config: MqttConfig) -> mqtt.Client:
    return make_client(
        config,
        client_id="sitectl-depot",
        will_topic="sitectl/depot/status",
        will_payload=b'{"status":"offline"}',
        window=100,
        reconnect_delay_s=(1.0, 60.0),
    )


def test_paho_settings() -> None:
    client = build(MqttConfig(username="depot", password="secret-password-1"))
    assert client.callback_api_version is mqtt.CallbackAPIVersion.VERSION2
    assert client.protocol == mqtt.MQTTv5
    assert client._client_id == b"sitectl-depot"
    assert client._will and client._will_topic == b"sitectl/depot/status"
    assert client._will_payload == b'{"status":"offline"}'
    assert (client._will_qos, client._will_retain) == (1, True)
    assert client._max_inflight_messages == 100
    assert client._max_queued_messages == 228
    assert (client._reconnect_min_delay, client._reconnect_max_delay) == (1.0, 60.0)
    assert client._username == b"depot" and client._password == b"secret-password-1"
    assert client.suppress_exceptions is True
    assert client._ssl_context is None


def test_tls_settings(tmp_path) -> None:
    from tests.ocpp.certs import Pki

    pki = Pki(tmp_path)
    issued = pki.issue("sitectl-client")
    client = build(
        MqttConfig(tls=True, ca_file=pki.ca.cert, cert_file=issued.cert, key_file=issued.key)
    )
    context = client._ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_connect_error_descriptions() -> None:
    refused = describe_connect_error(ConnectionRefusedError(111, "refused"), "broker", 8883)
    assert refused == "connection refused: nothing listening on broker:8883"
    unknown = describe_connect_error(socket.gaierror(-2, "Name or service not known"), "nx", 1)
    assert "cannot resolve host 'nx'" in unknown
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "certificate has expired"
    assert "not trusted (certificate has expired)" in describe_connect_error(verify, "b", 1)
    plain = ssl.SSLError(1, "wrong version")
    plain.reason = "WRONG_VERSION_NUMBER"
    assert "does not speak TLS" in describe_connect_error(plain, "b", 1883)
    assert describe_connect_error(TimeoutError(), "b", 1) == "no answer from b:1 (timed out)"


def test_refusal_descriptions() -> None:
    bad = describe_refusal(ReasonCode(PacketTypes.CONNACK, "Bad user name or password"))
    assert "0x86" in bad and "mqtt.password" in bad
    banned = describe_refusal(ReasonCode(PacketTypes.CONNACK, "Banned"))
    assert "banned" in banned
