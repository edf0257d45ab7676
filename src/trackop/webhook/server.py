"""The admission webhooks served over HTTPS: AdmissionReview requests in, responses out.

The decisions are pure (``injection.mutate``, ``validation.validate_request``) and read
only the in-memory index (``index``); this module turns reviews into responses
(:class:`Handlers`) and serves them with aiohttp on an event loop of its own, in its own
thread (kopf's loop is never blocked by a client), within :class:`ServerLimits`: a read
timeout for the handshake, the headers and the body, a body-size limit, a connection limit
and bounded keep-alive. The certificate can be swapped while it serves (rotation).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import metrics
from ..api import v1alpha1
from ..api.policy import Policy
from ..settings import ServerLimits
from ..specs.webhook_configurations import MUTATE_PATH, VALIDATE_PATH
from . import injection
from .index import Index
from .validation import validate_request

log = logging.getLogger(__name__)

# How long start waits for the server's loop, and stop for requests in progress.
STOP_SECONDS = 5.0


def review_response(uid: str, allowed: bool, *, message: str = "", patch: list | None = None,
                    warnings: list[str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 403, "message": message}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


@dataclass
class Handlers:
    """Turns AdmissionReview requests into responses, reading only the index."""

    index: Index
    operator_namespace: str | None
    fail_closed: bool
    on_warning: Callable[[str, str | None, str], None] = lambda namespace, backend, message: None
    policy: Policy = Policy()  # what tenants' backends may use: refused at admission too
    copy_scope: frozenset[str] | None = None  # where the operator may keep Secret copies (None: anywhere)

    def mutate_pod(self, request: Mapping[str, Any]) -> dict[str, Any]:
        pod = request.get("object") or {}
        namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        reference = injection.parse_backend_reference(annotations.get(v1alpha1.BACKEND_ANNOTATION), namespace)
        backend = self.index.backend(*reference) if reference else None
        decision = injection.mutate(pod, namespace, backend, self.index.namespace_labels(namespace),
                                    operator_namespace=self.operator_namespace, fail_closed=self.fail_closed,
                                    copy_scope=self.copy_scope)
        if decision.warnings or not decision.allowed:
            self.on_warning(namespace, backend.reference if backend else None, decision.reason)
        return review_response(request["uid"], decision.allowed, message=decision.reason, patch=decision.patch,
                               warnings=decision.warnings)

    def validate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        allowed, message = validate_request(request, self.index, self.policy)
        return review_response(request["uid"], allowed, message=message)


def _outcome(webhook: str, response: Mapping[str, Any]) -> str:
    if not response.get("allowed"):
        return "rejected" if webhook == "mutate" else "denied"
    if webhook == "validate":
        return "allowed"
    return "injected" if response.get("patch") else "unchanged"


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the limits aiohttp lacks around it.

    It holds a slot of the connection limit until the connection is lost, and aborts a
    connection whose request headers have not all arrived ``read_timeout`` after it was
    established or after the first byte of a later request (aiohttp's keep-alive timer alone
    would give them ``keepalive_timeout``). Everything else goes to aiohttp unchanged."""

    def __init__(self, inner: asyncio.Protocol, read_timeout: float, open_connections: set[_Connection],
                 release: Callable[[], None]) -> None:
        self._inner = inner
        self._read_timeout = read_timeout
        self._open_connections = open_connections
        self._release = release
        self._transport: asyncio.Transport | None = None
        self._headers_due: asyncio.TimerHandle | None = None
        self._between_requests = True
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._open_connections.add(self)
        self._inner.connection_made(transport)
        self._expect_headers()

    def data_received(self, data: bytes) -> None:
        if self._between_requests and self._headers_due is None:
            self._expect_headers()  # the first bytes of the next request
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self._open_connections.discard(self)
        try:
            self._inner.connection_lost(exc)
        finally:
            self._release()

    def request_started(self) -> int:
        """The headers are in (the body has its own timeout); the requests so far."""
        self._between_requests = False
        self._cancel_deadline()
        self.requests += 1
        return self.requests

    def request_done(self) -> None:
        self._between_requests = True

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _expect_headers(self) -> None:
        self._headers_due = asyncio.get_running_loop().call_later(self._read_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._headers_due = None
        self.abort()  # no TLS close_notify: a client that sends nothing would not answer it either

    def _cancel_deadline(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None


def _closing(status: int) -> web.Response:
    """An error response after which the connection is closed, the rest of the body unread."""
    response = web.Response(status=status)
    response.force_close()
    return response


class WebhookServer:
    """The HTTPS server of the webhooks; ``load_certificate`` swaps the certificate for new
    connections while existing ones finish (rotation without a failed admission).

    Each certificate gets a context of its own, swapped in whole: loading a new chain into a
    context in use leaves a moment with the new certificate and no key, and a handshake in
    that moment fails. Connections are accepted here, not by ``loop.create_server``, so that
    each takes the context current at its accept, and so that at most ``max_connections`` are
    open: the next waits in the listen backlog until one closes (as Go's LimitListener)."""

    def __init__(self, host: str, port: int, handlers: Handlers, limits: ServerLimits | None = None) -> None:
        self.handlers = handlers
        self.limits = limits or ServerLimits()
        self._address = (host, port)
        self._context: ssl.SSLContext | None = None
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._accepting: asyncio.Task | None = None
        self._handshakes: set[asyncio.Task] = set()
        self._connections: set[_Connection] = set()
        self._port = 0

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one the system chose for 0)."""
        return self._port

    def load_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # load_cert_chain wants files; they live only for the call, readable by us alone.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(cert_pem)
            key.touch(mode=0o600)
            key.write_bytes(key_pem)
            context.load_cert_chain(str(cert), str(key))
        self._context = context  # one reference swap: a handshake sees the old pair or the new

    # ---- lifecycle (called from other threads) -----------------------------------------------
    def start(self) -> None:
        """Bind, then serve from a thread of its own. A failed start leaves nothing bound."""
        if self._context is None:
            raise RuntimeError("load_certificate before start")
        if self._thread is not None:
            raise RuntimeError("the webhook server is already started")
        # create_server sets SO_REUSEADDR: a restart binds again while old connections linger.
        # Connections beyond max_connections wait in the backlog, so it is the system's largest.
        self._listener = socket.create_server(self._address, backlog=socket.SOMAXCONN)
        try:
            self._listener.setblocking(False)
            self._port = self._listener.getsockname()[1]
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="trackop-webhook", daemon=True)
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=STOP_SECONDS)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close the port at once, let requests in progress finish (briefly), close the rest.
        Safe to call more than once, and before or after a failed start."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        try:
            if loop is not None and loop.is_running():
                try:
                    asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=2 * STOP_SECONDS)
                except Exception:  # noqa: BLE001 (stopping anyway)
                    log.exception("the webhook server did not stop cleanly")
                loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=STOP_SECONDS)
            if loop is not None and not loop.is_running():
                loop.close()
        finally:
            if self._listener is not None:
                self._listener.close()  # already closed by _close, unless the loop never ran it
                self._listener = None

    # ---- on the server's loop ------------------------------------------------------------------
    async def _open(self) -> None:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_route("*", "/{path:.*}", self._admit)
        # No access log (pod specs may carry values users consider private), no decompression
        # (the API server sends plain JSON), and no lingering read of a body left unread.
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.limits.keepalive_timeout,
                                     lingering_time=0, auto_decompress=False, shutdown_timeout=STOP_SECONDS)
        await self._runner.setup()
        self._accepting = asyncio.create_task(self._accept(), name="trackop-webhook-accept")

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.limits.max_connections)
        while True:
            await slots.acquire()
            try:
                client, _ = await loop.sock_accept(self._listener)
            except OSError as error:  # out of file descriptors, say: the next accept may work
                slots.release()
                log.warning("the webhook server could not accept a connection: %s", error)
                await asyncio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            connection = _Connection(self._runner.server(), self.limits.read_timeout, self._connections,
                                     slots.release)
            handshake = loop.create_task(self._handshake(client, connection, slots.release))
            self._handshakes.add(handshake)
            handshake.add_done_callback(self._handshakes.discard)

    async def _handshake(self, client: socket.socket, connection: _Connection, release: Callable[[], None]) -> None:
        """TLS with the certificate current now; from its end the connection releases its slot."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: connection, client, ssl=self._context,
                ssl_handshake_timeout=self.limits.read_timeout, ssl_shutdown_timeout=self.limits.read_timeout)
        except OSError:  # failed, or too slow (ConnectionAbortedError): it never reached aiohttp
            client.close()
            release()

    async def _close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        self._listener.close()  # the port is free from here on
        if self._runner is not None:
            await self._runner.cleanup()  # requests in progress finish, for STOP_SECONDS at most
        for connection in list(self._connections):
            connection.abort()  # idle ones, and those still waiting for a TLS close_notify
        # What is left (handshakes, aiohttp's connection tasks) ends here, not in loop.close().
        rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await asyncio.sleep(0)  # the aborted connections' connection_lost callbacks

    async def _admit(self, request: web.Request) -> web.StreamResponse:
        connection = request.transport.get_protocol() if request.transport is not None else None
        known = isinstance(connection, _Connection)
        requests = connection.request_started() if known else 0
        try:
            response = await self._answer(request)
        finally:
            if known:
                connection.request_done()
        if not known or requests >= self.limits.keepalive_requests:
            response.force_close()
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        name = "mutate" if request.path.startswith(MUTATE_PATH) else \
            "validate" if request.path.startswith(VALIDATE_PATH) else None
        if name is None:
            return web.Response(status=404)
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        if (request.content_length or 0) > self.limits.max_body_bytes:
            metrics.ADMISSIONS.labels(name, "error").inc()
            return _closing(413)  # said before a byte of the body is read
        try:
            async with asyncio.timeout(self.limits.read_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:  # no Content-Length (chunked): stopped at the limit
            metrics.ADMISSIONS.labels(name, "error").inc()
            return _closing(413)
        except TimeoutError:
            metrics.ADMISSIONS.labels(name, "error").inc()
            return _closing(408)
        try:
            with metrics.admission_timer(name):
                review = json.loads(raw)["request"]
                body = self.handlers.mutate_pod(review) if name == "mutate" else self.handlers.validate(review)
        except Exception:  # a bad request must not take the server down
            log.exception("admission request failed")
            metrics.ADMISSIONS.labels(name, "error").inc()
            return web.Response(status=400)
        metrics.ADMISSIONS.labels(name, _outcome(name, body["response"])).inc()
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")
