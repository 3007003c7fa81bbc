"""The VTN's API through the `openadr3` library: token, paging, VEN, events, subscriptions, reports.

Synchronous, like the library (httpx): `sitectl.openadr.ven` calls it in a worker thread with a
timeout, never on the event loop. Every answer the VTN can give ends in a value or in one of
three errors, each with a sentence for the log:

- `VtnUnreachable`: no connection, a timeout, a 5xx — the VTN is not there (heartbeat counts).
- `VtnAuthError`: the token endpoint refused, or 401/403 after a fresh token (heartbeat counts).
- `VtnBadAnswer`: a 4xx for one request, or a body that is not the JSON the spec says.

The access token is fetched with the client credentials grant (`openadr3.fetch_token`; the token
endpoint from GET /auth/server unless configured) and fetched again once when a request is
answered 401 (an expired token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import openadr3
from openadr3.api import DEFAULT_USER_AGENT, OpenADRClient

from sitectl import __version__
from sitectl.config import OpenAdrConfig

__all__ = [
    "PAGE_SIZE",
    "VtnAuthError",
    "VtnBadAnswer",
    "VtnClient",
    "VtnError",
    "VtnUnreachable",
]

log = logging.getLogger(__name__)

#: The spec's largest ``limit`` for every search (openadr3.yaml: ``maximum: 50``).
PAGE_SIZE = 50
#: Pages read of one search at most: a VTN that ignores ``skip`` must not loop us for ever.
MAX_PAGES = 40


class VtnError(Exception):
    """The VTN did not give what was asked; ``str()`` says what, without secrets."""


class VtnUnreachable(VtnError):
    """No connection, a timeout, or a 5xx answer."""


class VtnAuthError(VtnError):
    """The token endpoint refused the credentials, or the VTN refused the token (401/403)."""


class VtnBadAnswer(VtnError):
    """A 4xx answer to one request, or a body that is not what the spec says."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _problem(response: httpx.Response) -> str:
    """The spec's problem body (title/detail) or the OAuth2 error, in a few words."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or ""
    if not isinstance(body, dict):
        return ""
    parts = [
        str(body[key])
        for key in ("title", "detail", "error", "error_description")
        if isinstance(body.get(key), str | int)
    ]
    return ": ".join(parts)[:200]


class VtnClient:
    """One VEN's view of one VTN.

    Args:
        config: the ``grid_signals.openadr`` section (enabled, so url and credentials are set).
        ven_name: the venName and the reports' clientName.
    """

    def __init__(self, config: OpenAdrConfig, ven_name: str) -> None:
        assert config.vtn_url and config.client_id and config.client_secret
        self.config = config
        self.ven_name = ven_name
        self.ven_id: str | None = None
        self._api: OpenADRClient | None = None

    def close(self) -> None:
        """Close the HTTP connections (a new token opens new ones)."""
        if self._api is not None:
            self._api.close()
            self._api = None

    # Token and requests.

    def _fetch_token(self) -> None:
        config = self.config
        assert config.vtn_url and config.client_id and config.client_secret
        try:
            token = openadr3.fetch_token(
                config.vtn_url,
                config.client_id,
                config.client_secret.get_secret_value(),
                token_url=config.token_url,
            )
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            what = f"token endpoint answered HTTP {status} {_problem(exc.response)}".rstrip()
            if status >= 500:
                raise VtnUnreachable(what) from None
            raise VtnAuthError(f"{what} (client id '{config.client_id}')") from None
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            raise VtnUnreachable(f"token endpoint: {type(exc).__name__}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:  # no tokenURL / access_token, not JSON
            raise VtnAuthError(f"token endpoint answered without a token ({exc!r})") from None
        if not isinstance(token, str) or not token:
            raise VtnAuthError("token endpoint answered an empty token")
        self.close()
        self._api = openadr3.create_ven_client(
            config.vtn_url, token, user_agent=f"sitectl/{__version__} {DEFAULT_USER_AGENT}"
        )
        # The library builds its httpx.Client with httpx's default timeout and takes none.
        self._api._http.timeout = httpx.Timeout(config.request_timeout_s)
        log.info("OpenADR: token fetched for client id '%s'", config.client_id)

    def call(self, what: str, request: Callable[[OpenADRClient], httpx.Response]) -> httpx.Response:
        """Run one request of the library, with a token (fetched again once on a 401)."""
        for attempt in (1, 2):
            if self._api is None:
                self._fetch_token()
            assert self._api is not None
            try:
                response = request(self._api)
            except (httpx.RequestError, httpx.InvalidURL) as exc:
                raise VtnUnreachable(f"{what}: {type(exc).__name__}: {exc}") from None
            status = response.status_code
            if status == 401 and attempt == 1:
                log.info("OpenADR: %s answered 401: fetching a new token", what)
                self.close()
                continue
            if status >= 500:
                raise VtnUnreachable(f"{what}: HTTP {status} {_problem(response)}".rstrip())
            if status in (401, 403):
                raise VtnAuthError(f"{what}: HTTP {status} {_problem(response)}".rstrip())
            if status >= 400:
                raise VtnBadAnswer(f"{what}: HTTP {status} {_problem(response)}".rstrip(), status)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def body(response: httpx.Response, what: str) -> Any:
        """The JSON body, or `VtnBadAnswer`."""
        try:
            return response.json()
        except (ValueError, json.JSONDecodeError):
            raise VtnBadAnswer(f"{what}: the answer is not JSON") from None

    def search(
        self, what: str, get: Callable[..., httpx.Response], **params: Any
    ) -> list[dict[str, Any]]:
        """Every object of a search, page by page (``skip``/``limit``) to the first empty one."""
        found: list[dict[str, Any]] = []
        seen: set[Any] = set()
        for _ in range(MAX_PAGES):
            skip = len(found)
            response = self.call(
                what, lambda api, skip=skip: get(api, skip=skip, limit=PAGE_SIZE, **params)
            )
            page = self.body(response, what)
            if not isinstance(page, list) or not all(isinstance(item, dict) for item in page):
                raise VtnBadAnswer(f"{what}: the answer is not a list of objects")
            ids = {item.get("id") for item in page}
            if page and ids <= seen:
                log.warning("OpenADR: %s: the VTN repeats a page (skip ignored?): stopped", what)
                break
            if not page:
                return found
            seen |= ids
            found += page
            # Not "a short page is the last": a VTN may cap pages below the limit asked.
        else:
            log.warning("OpenADR: %s: more than %d pages: the rest is not read", what, MAX_PAGES)
        return found

    # What the VEN does.

    def register(self) -> str:
        """Find this VEN by name, or create it; returns its id (kept in ``ven_id``)."""
        name = self.ven_name
        for ven in self.search("GET /vens", lambda api, **p: api.get_vens(**p), venName=name):
            if ven.get("venName") == name and isinstance(ven.get("id"), str):
                self.ven_id = ven["id"]
                return self.ven_id
        response = self.call(
            "POST /vens",
            lambda api: api.create_ven({"objectType": "VEN_VEN_REQUEST", "venName": name}),
        )
        created = self.body(response, "POST /vens")
        if not isinstance(created, dict) or not isinstance(created.get("id"), str):
            raise VtnBadAnswer("POST /vens: the answer has no id")
        self.ven_id = created["id"]
        log.info("OpenADR: registered as VEN '%s' (id %s)", name, self.ven_id)
        return self.ven_id

    def programs(self) -> list[dict[str, Any]]:
        """Every program the VTN shows this VEN (raw JSON objects)."""
        return self.search("GET /programs", lambda api, **p: api.get_programs(**p))

    def events(self, program_id: str) -> list[dict[str, Any]]:
        """Every event of a program (raw JSON objects)."""
        return self.search(
            f"GET /events?programID={program_id}",
            lambda api, **p: api.get_events(**p),
            programID=program_id,
        )

    def subscribe(self, program_id: str, callback_url: str, bearer_token: str) -> str:
        """Make sure one subscription of ours calls `callback_url` on event and program changes.

        An existing one (same client name and callback URL, e.g. from before a restart) gets the
        new bearer token; returns the subscription's id.
        """
        operation = {
            "objects": ["EVENT", "PROGRAM"],
            "operations": ["CREATE", "UPDATE", "DELETE"],
            "callbackUrl": callback_url,
            "bearerToken": bearer_token,
        }
        request = {
            "clientName": self.ven_name,
            "programID": program_id,
            "objectOperations": [operation],
        }
        existing = self.search(
            "GET /subscriptions",
            lambda api, **p: api.get_subscriptions(**p),
            programID=program_id,
            clientName=self.ven_name,
        )
        for subscription in existing:
            operations = subscription.get("objectOperations")
            ours = isinstance(operations, list) and any(
                isinstance(op, dict) and op.get("callbackUrl") == callback_url for op in operations
            )
            if ours and isinstance(subscription.get("id"), str):
                sid = subscription["id"]
                self.call(
                    f"PUT /subscriptions/{sid}",
                    lambda api, sid=sid: api.update_subscription(sid, request),
                )
                return sid
        response = self.call("POST /subscriptions", lambda api: api.create_subscription(request))
        created = self.body(response, "POST /subscriptions")
        if not isinstance(created, dict) or not isinstance(created.get("id"), str):
            raise VtnBadAnswer("POST /subscriptions: the answer has no id")
        log.info("OpenADR: subscribed to program %s at %s", program_id, callback_url)
        return created["id"]

    def report(self, report: dict[str, Any]) -> str | None:
        """Create a report; returns its id when the VTN says it."""
        response = self.call("POST /reports", lambda api: api.create_report(report))
        created = self.body(response, "POST /reports")
        return created.get("id") if isinstance(created, dict) else None
