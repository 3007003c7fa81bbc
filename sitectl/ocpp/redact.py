"""Redaction of OCPP frames before they are kept for the commissioning view.

The latest frames of each charger are served by ``/api/chargers/{id}``, which is open to the
LAN by default: nothing in them may be a credential or personal data. The rules follow the
fields of the OCPP 1.6 (with the security whitepaper) and 2.0.1 schemas, by name and place,
for calls, results and errors alike (a result does not say its action, so the rules are
keyed by field, not by message type):

- credentials: 2.0.1 ``SetNetworkProfile`` ``vpn.password``/``vpn.key``,
  ``apn.apnPassword``/``apn.simPin``; any field named ``password``, ``basicAuthPassword``,
  ``authorizationKey``; ISO 15118 ``exiRequest``/``exiResponse`` (contract key material);
- configuration values whose key or variable names a credential (1.6 ``ChangeConfiguration``
  and ``GetConfiguration`` ``AuthorizationKey``; 2.0.1 ``SetVariables``, ``GetVariables``,
  ``NotifyReport`` ``BasicAuthPassword``; vendor keys named like a password, PIN or token);
- id tokens (1.6 ``idTag``/``parentIdTag``, 2.0.1 ``idToken.idToken``, ``additionalIdToken``,
  ``customerIdentifier``, eMAIDs among them) hashed like the uplink does (`hash_id_tag`), so a
  reader may follow a session without learning an RFID;
- whole lists and free data: ``SendLocalList`` entries, ``DataTransfer`` and
  ``NotifyCustomerInformation`` ``data``, certificates of a customer or contract;
- user and password in URLs (``ocppCsmsUrl``, firmware locations).

A frame that is not JSON is not shown at all (only its length): its content is unknown.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_frame"]

REDACTED = "<redacted>"

#: Fields whose value is a credential wherever they appear (compared lower-case).
_SECRET_FIELDS = frozenset(
    {
        "password",
        "apnpassword",
        "simpin",
        "basicauthpassword",
        "authorizationkey",
        "exirequest",
        "exiresponse",
        "customercertificate",
        "privatekey",
    }
)
#: Fields that are a credential inside a given parent object (SetNetworkProfile vpn.key).
_SECRET_IN = {"vpn": frozenset({"key", "password"})}
#: Fields holding an id token: hashed, not hidden, so sessions stay traceable.
_ID_FIELDS = frozenset({"idtag", "parentidtag", "additionalidtoken", "customeridentifier"})
#: Names of configuration keys and device-model variables that hold a secret.
_SECRET_NAME = re.compile(
    r"password|passwd|passphrase|secret|authorizationkey|authkey|privatekey|apikey|token$|"
    r"(^|[^a-z])pin($|[^a-z])|pincode|simpin",
    re.IGNORECASE,
)
_URL_WITH_USER = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*@", re.IGNORECASE)


def _hash(site_id: str, tag: str) -> str:
    # The same pseudonym as `sitectl.ocpp.observe.hash_id_tag` (and the uplink's sessions).
    return "#" + hashlib.sha256(f"{site_id}:{tag}".encode()).hexdigest()[:16]


def _strip_user(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, ""))


class _Walker:
    """One frame's walk: copies the payload with every sensitive value replaced."""

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id

    def value(self, value: Any, key: str = "", parent: str = "", root: bool = False) -> Any:
        name = key.lower()
        if name in _SECRET_FIELDS or name in _SECRET_IN.get(parent, ()):
            return REDACTED
        if root and name == "data":  # DataTransfer, NotifyCustomerInformation: free content
            return f"<redacted: {len(json.dumps(value))} characters>"
        if name == "localauthorizationlist" and isinstance(value, list):
            return f"<redacted: {len(value)} entries>"
        if root and name == "certificate":
            # Authorize's contract certificate names the driver (its eMAID); InstallCertificate's
            # CA certificate is public, but a field alone does not tell them apart.
            return REDACTED
        if isinstance(value, str):
            if name in _ID_FIELDS or name == "idtoken":
                return _hash(self.site_id, value)
            if _URL_WITH_USER.match(value):
                return _strip_user(value)
            if "PRIVATE KEY" in value:
                return REDACTED
            return value
        if isinstance(value, list):
            return [self.value(item, key, parent) for item in value]
        if isinstance(value, dict):
            return self.obj(value, name)
        return value

    def obj(self, obj: dict[str, Any], parent: str = "", root: bool = False) -> dict[str, Any]:
        out = {k: self.value(v, k, parent, root) for k, v in obj.items()}
        # 1.6 ChangeConfiguration / GetConfiguration entries: {"key": name, "value": ...}.
        key = obj.get("key")
        if isinstance(key, str) and _SECRET_NAME.search(key) and "value" in out:
            out["value"] = REDACTED
        # 2.0.1 SetVariables / GetVariables / NotifyReport: {"variable": {"name": ...}, ...}.
        variable = obj.get("variable")
        if isinstance(variable, dict) and _SECRET_NAME.search(str(variable.get("name", ""))):
            if "attributeValue" in out:
                out["attributeValue"] = REDACTED
            attributes = out.get("variableAttribute")
            if isinstance(attributes, list):
                out["variableAttribute"] = [
                    {**a, "value": REDACTED} if isinstance(a, dict) and "value" in a else a
                    for a in attributes
                ]
        return out


def redact_frame(text: str, site_id: str) -> str:
    """An OCPP-J frame with its credentials and personal data replaced (compact JSON).

    Args:
        text: the frame as it went over the socket.
        site_id: salts the id-token hashes (as the uplink does).
    """
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return f"[not JSON: {len(text)} characters, not shown]"
    walker = _Walker(site_id)
    try:
        if isinstance(message, list) and message and message[0] in (2, 3, 4):
            out = list(message)
            body = {2: 3, 3: 2, 4: 4}[message[0]]  # where the payload is (4: errorDetails)
            for i, item in enumerate(out):
                if i == body and isinstance(item, dict):
                    out[i] = walker.obj(item, root=True)
                elif i >= 2:  # an error's description is free text a charger fills
                    out[i] = walker.value(item)
        else:
            out = walker.value(message)
    except RecursionError:
        return f"[nested too deeply: {len(text)} characters, not shown]"
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)
