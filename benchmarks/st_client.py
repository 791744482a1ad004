"""A light Streamlit client: one simulated student speaking the page's own WebSocket protocol, without a browser.

It does what the browser's frontend does for the steps of a class (and nothing it draws): it opens
``/_stcore/stream``, sends ``rerun_script`` back-messages with the widget states a click would produce, reads
the forward-messages until ``script_finished``, fetches the images the page references (as the browser
does), and uploads a file through ``/_stcore/upload_file`` the way ``st.file_uploader`` does (URL request,
multipart PUT with the XSRF cookie and header, then a rerun carrying the file's id).

Widgets are found by their user ``key`` (the tail of the widget id) or a button's label, so the client
follows the app's own keys and labels. It keeps every widget value it has set and sends them all with
each rerun, as the frontend does, so a rerun never resets a choice made earlier.

Used by ``benchmarks/load_test.py`` and ``tests/test_serving.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

ERROR_WORDS = ("failed", "could not be used", "ran out of memory", "No usable checkpoint")
FINISHED = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR}


class StepError(RuntimeError):
    """The page showed an exception or an error message, or the server did not answer."""


@dataclass
class Page:
    """What one run of the script put on the page, as far as the load test needs it."""

    widgets: dict[str, str] = field(default_factory=dict)  # user key (or "button:<label>") -> widget id
    url_keys: dict[str, str] = field(default_factory=dict)  # user key -> its query parameter (bound widgets)
    texts: list[str] = field(default_factory=list)  # markdown, captions and alerts
    errors: list[str] = field(default_factory=list)  # exception elements and error alerts
    media: list[str] = field(default_factory=list)  # image URLs the browser would fetch
    bytes_in: int = 0  # forward-message bytes received
    figures: int = 0  # charts, images and tables drawn

    def text(self) -> str:
        return "\n".join(self.texts)


def _user_key(widget_id: str) -> str | None:
    """Streamlit's widget ids end in the user key: ``$$ID-<hash>-<key>`` (``None`` for key-less widgets)."""
    head, sep, tail = widget_id.rpartition("-")
    return tail if sep and head.startswith("$$ID") and tail != "None" else None


def _read_element(el, page: Page) -> None:
    kind = el.WhichOneof("type")
    if kind is None:
        return
    body = getattr(el, kind)
    wid = getattr(body, "id", "") if hasattr(body, "id") else ""
    if wid:
        key = _user_key(wid)
        if key:
            page.widgets[key] = wid
            if getattr(body, "query_param_key", ""):
                page.url_keys[key] = body.query_param_key
        if kind == "button":
            page.widgets[f"button:{body.label}"] = wid
    if kind == "exception":
        page.errors.append(f"exception: {body.type}: {body.message[:300]}")
    elif kind == "alert":
        page.texts.append(body.body)
        if body.format == body.ERROR or any(w in body.body for w in ERROR_WORDS):
            page.errors.append(f"error message: {body.body[:300]}")
    elif kind == "markdown":
        page.texts.append(body.body)
    elif kind == "progress":  # "maps ready", "attack done"
        page.texts.append(body.text)
    if kind in ("plotly_chart", "imgs", "dataframe"):
        page.figures += 1
    elif kind == "imgs":
        page.media += [img.url for img in body.imgs if img.url.startswith("/media/")]


class StudentSession:
    """One browser tab's worth of protocol on ``base_url`` (``http://host:port`` or ``.../prefix``)."""

    def __init__(self, base_url: str, query_string: str = "", timeout_s: float = 600):
        self.base = base_url.rstrip("/")
        self.query_string = query_string
        self.timeout_s = timeout_s
        self.states: dict[str, object] = {}  # widget id -> value to send with every rerun
        self.session_id = ""
        self.page = Page()
        self.upstream: str | None = None  # which replica answered (nginx's X-Upstream header), if known
        self._ws = None
        self.cookies: dict[str, str] = {}
        self._file_urls: asyncio.Future | None = None

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _http(self, path: str, data: bytes | None = None, headers: dict | None = None, method: str = "GET"):
        """One HTTP request with this tab's cookies (Streamlit's XSRF cookie, a proxy's routing cookie)."""
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            for cookie in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = cookie.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            self.upstream = resp.headers.get("X-Upstream") or self.upstream
            return resp.read(), resp.headers

    async def _get(self, path: str, **kw):
        return await asyncio.to_thread(self._http, path, **kw)

    # -- WebSocket -----------------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Load what the browser loads first (the health check sets the XSRF cookie), then open the stream."""
        await self._get("/_stcore/health")
        xsrf = self.cookies.get("_streamlit_xsrf", "")
        # The frontend passes the XSRF token (and, on a reconnect, its old session id) as extra subprotocols.
        protocols = ["streamlit"] + ([xsrf] if xsrf else []) + ([self.session_id] if self.session_id else [])
        self._ws = await websockets.connect(
            "ws" + self.base[4:] + "/_stcore/stream",
            subprotocols=protocols,
            origin="http://" + urllib.parse.urlsplit(self.base).netloc,
            additional_headers={"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())},
            max_size=None,
            compression=None,
        )
        self.upstream = self._ws.response.headers.get("X-Upstream") or self.upstream

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def widget(self, key: str) -> str:
        try:
            return self.page.widgets[key]
        except KeyError:
            raise StepError(f"no widget {key!r} on the page (have: {sorted(self.page.widgets)[:40]})") from None

    def _client_state(self, triggers: dict[str, object]):
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = self.query_string
        cs.page_script_hash = ""
        for wid, value in {**self.states, **triggers}.items():
            w = cs.widget_states.widgets.add()
            w.id = wid
            if value is True and wid in triggers:
                w.trigger_value = True
            elif isinstance(value, str):
                w.string_value = value
            elif isinstance(value, bool):
                w.bool_value = value
            elif isinstance(value, int):
                w.int_value = value
            elif isinstance(value, float):
                w.double_value = value
            elif isinstance(value, list):  # an uploaded file: [(file_id, name, size, upload_url, delete_url)]
                for file_id, name, size, up, down in value:
                    info = w.file_uploader_state_value.uploaded_file_info.add()
                    info.file_id, info.name, info.size = file_id, name, size
                    info.file_urls.file_id, info.file_urls.upload_url, info.file_urls.delete_url = file_id, up, down
        return msg

    async def rerun(self, **triggers) -> Page:
        """Send one rerun (with the stored widget states plus one-shot ``triggers``) and read the page it draws,
        fetching its images. Raises StepError on an exception element or an error message."""
        await self._ws.send(
            self._client_state(
                {self.widget(k) if not k.startswith("$$") else k: v for k, v in triggers.items()}
            ).SerializeToString()
        )
        page = Page()
        deadline = time.monotonic() + self.timeout_s
        while True:
            raw = await asyncio.wait_for(self._ws.recv(), max(1.0, deadline - time.monotonic()))
            page.bytes_in += len(raw)
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                self.session_id = msg.new_session.initialize.session_id
            elif kind == "delta":
                d = msg.delta
                if d.WhichOneof("type") == "new_element":
                    _read_element(d.new_element, page)
                elif d.WhichOneof("type") == "add_block":
                    block = d.add_block
                    which = block.WhichOneof("type")
                    if which == "tab_container" and block.tab_container.id:
                        key = _user_key(block.tab_container.id)
                        if key:
                            page.widgets[key] = block.tab_container.id
                            if block.tab_container.query_param_key:
                                page.url_keys[key] = block.tab_container.query_param_key
            elif kind == "page_info_changed":  # the script set st.query_params: the browser's address bar
                self.query_string = msg.page_info_changed.query_string
            elif kind == "file_urls_response" and self._file_urls is not None:
                self._file_urls.set_result(msg.file_urls_response)
            elif kind == "script_finished" and msg.script_finished in FINISHED:
                break
        for url in dict.fromkeys(page.media):  # the browser loads each image once
            body, _ = await self._get(url)
            page.bytes_in += len(body)
        page.widgets = {**self.page.widgets, **page.widgets}
        page.url_keys = {**self.page.url_keys, **page.url_keys}
        self.page = page
        if page.errors:
            raise StepError("; ".join(page.errors[:3]))
        return page

    # -- the steps of a class ------------------------------------------------------------------------------
    async def open(self) -> Page:
        await self.connect()
        return await self.rerun()

    async def set(self, key: str, value) -> Page:
        """Change a widget (a radio, select box or tab by its label) and let the page rerun. A widget bound to
        the URL changes the address bar's query string too, as the frontend does."""
        self.states[self.widget(key)] = value
        if key in self.page.url_keys:
            params = dict(urllib.parse.parse_qsl(self.query_string))
            params[self.page.url_keys[key]] = str(value)
            self.query_string = urllib.parse.urlencode(params)
        return await self.rerun()

    async def click(self, label: str) -> Page:
        return await self.rerun(**{self.widget(f"button:{label}"): True})

    async def upload(self, key: str, name: str, data: bytes, mime: str = "image/jpeg") -> Page:
        """st.file_uploader's protocol: ask for an upload URL, PUT the file (multipart), rerun with its id."""
        wid = self.widget(key)
        loop = asyncio.get_running_loop()
        self._file_urls = loop.create_future()
        req = BackMsg()
        req.file_urls_request.request_id = uuid.uuid4().hex
        req.file_urls_request.session_id = self.session_id
        req.file_urls_request.file_names.append(name)
        await self._ws.send(req.SerializeToString())
        # The answer arrives on the stream; nothing else is running, so read until it comes.
        while not self._file_urls.done():
            raw = await asyncio.wait_for(self._ws.recv(), self.timeout_s)
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            if msg.WhichOneof("type") == "file_urls_response":
                self._file_urls.set_result(msg.file_urls_response)
        resp = self._file_urls.result()
        if resp.error_msg or not resp.file_urls:
            raise StepError(f"upload URL refused: {resp.error_msg}")
        urls = resp.file_urls[0]
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: {mime}\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        path = urllib.parse.urlsplit(urls.upload_url).path if "://" in urls.upload_url else urls.upload_url
        prefix = urllib.parse.urlsplit(self.base).path
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :]
        await self._get(
            path,
            data=body,
            method="PUT",
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "X-Xsrftoken": self.cookies.get("_streamlit_xsrf", ""),
            },
        )
        self.states[wid] = [(urls.file_id, name, len(data), urls.upload_url, urls.delete_url)]
        return await self.rerun()

    def query_params(self) -> dict:
        """The view's settings as the page last put them in the address bar."""
        return dict(urllib.parse.parse_qsl(self.query_string))


def summary(page: Page) -> str:
    return json.dumps({"widgets": len(page.widgets), "media": len(page.media), "kB": page.bytes_in // 1024})
