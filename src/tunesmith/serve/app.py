"""The OpenAI-compatible HTTP API over one finished run (FastAPI on uvicorn).

What a run serves follows from its task card's model kind, never from a list of task names: causal-LM
runs answer `/v1/chat/completions` and `/v1/completions`; classifier runs answer `/v1/classify`, or
`/v1/rerank` when they learnt relevance scores. Every run answers `/v1/models` and `/health`.

Errors have OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), so the official clients
raise their usual exceptions (BadRequestError, AuthenticationError) with our message in them.

This module imports fastapi at the top: `tunesmith serve` (cli.py) checks the `serve` extra with
`tunesmith.extras.require` before it imports this module, so a missing extra is a clear error.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tunesmith.data.chat_template import render, template_for
from tunesmith.data.readers import RawRecord
from tunesmith.errors import TunesmithError
from tunesmith.pipeline import TunedModel, load_tuned
from tunesmith.serve.generation import Generator, Output, PromptTooLong, Sampling
from tunesmith.serve.worker import ModelWorker
from tunesmith.taskcards import get_card
from tunesmith.tasks import get_task


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None  # None: no key asked (fine on 127.0.0.1; set one before binding 0.0.0.0)
    max_batch: int = 8  # greedy requests generated together in one padded batch
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # a request's max_tokens when it gives none (capped at the limit)
    max_body_bytes: int = 1_000_000  # larger request bodies get 413 before they are parsed


# ---------------------------------------------------------------------------------------------------
# Errors in OpenAI's shape


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


def error_json(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """400 naming the first bad field the way a user wrote it (`messages.0.role`), not pydantic's path."""
    first = exc.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return error_json(400, f"the request body is not valid JSON: {first.get('msg')}")
    if param is None:  # the body as a whole: not an object, or sent as a form
        return error_json(400, f"the request body must be a JSON object ({first.get('msg')})")
    return error_json(400, f"{param}: {first.get('msg')}", param=param)


class BodySizeLimit:
    """413 for request bodies over `limit` bytes, counted as they arrive (a missing or false
    Content-Length cannot get a larger body past it); the body is then replayed to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                response = error_json(
                    413, f"the request body is over this server's limit of {self.limit} bytes", code="body_too_large"
                )
                return await response(scope, receive, send)
            if not message.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for a disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


# ---------------------------------------------------------------------------------------------------
# Requests (OpenAI's parameters; unknown ones are ignored, as OpenAI-compatible servers do)


class _Generation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # newer clients' name for max_tokens
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's default; 0 is greedy
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None  # OpenAI allows up to 4
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart]

    def as_turn(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        # OpenAI's newer models call the system turn "developer"; chat templates know only "system".
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(_Generation):
    messages: list[_Message] = Field(min_length=1)


class CompletionRequest(_Generation):
    prompt: str | list[str]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str | list[str]


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    query: str
    documents: list[str] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True


# ---------------------------------------------------------------------------------------------------
# The app


def build_app(tuned: TunedModel, name: str, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The app serving `tuned` as model `name`. Its lifespan starts and stops the model's worker thread
    (app.state.worker)."""
    model, tokenizer, config, meta = tuned
    kind = get_card(config.task).model_kind
    if kind not in ("causal-lm", "classifier"):
        raise TunesmithError(
            f"tunesmith serve answers causal-LM (chat, completions) and text-classifier runs; this run's task "
            f"{config.task!r} trains a {kind} model",
            fix="use `tunesmith predict RUN INPUT --output OUT` for it",
        )
    generates = kind == "causal-lm"
    worker = ModelWorker(Generator(model, tokenizer) if generates else None, settings.max_batch)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title=f"tunesmith: {name}", lifespan=lifespan)
    app.state.worker = worker
    app.add_exception_handler(RequestValidationError, lambda _, exc: _validation_error(exc))  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, lambda _, exc: error_json(exc.status_code, str(exc.detail)))  # type: ignore[arg-type,attr-defined]
    app.add_exception_handler(TunesmithError, lambda _, exc: error_json(400, exc.render()))  # type: ignore[arg-type,attr-defined]
    # Anything else is a bug, but the client still gets an error it can read, in the shape it expects.
    app.add_exception_handler(Exception, lambda _, exc: error_json(500, f"internal error: {exc!r}"))
    app.add_exception_handler(ApiError, lambda _, exc: error_json(exc.status, exc.message, exc.param, exc.code))  # type: ignore[arg-type,attr-defined]

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send the header `Authorization: Bearer KEY`", code="invalid_api_key"
            )

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise ApiError(
                404, f"this server serves model {name!r}, not {requested!r}", param="model", code="model_not_found"
            )

    def sampling_of(request: _Generation, strip: bool) -> Sampling:
        max_tokens = request.max_completion_tokens or request.max_tokens
        field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        if max_tokens is not None and max_tokens > settings.max_tokens_limit:
            raise ApiError(
                400,
                f"{field} is {max_tokens}, above this server's limit of {settings.max_tokens_limit} "
                "(ask for fewer, or start the server with a larger --max-tokens-limit)",
                param=field,
            )
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        return Sampling(
            max_tokens=max_tokens or min(settings.default_max_tokens, settings.max_tokens_limit),
            temperature=request.temperature,
            top_p=request.top_p,
            n=request.n,
            seed=request.seed,
            stop=tuple(s for s in stop if s),
            strip=strip,
        )

    router = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": name, "task": config.task, "batches": len(worker.batch_sizes)}

    @router.get("/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "tunesmith"}],
        }

    if generates:
        template = template_for(tokenizer, config.data.chat_template)

        @router.post("/chat/completions")
        def chat_completions(request: ChatRequest):
            check_model(request.model)
            turns = [m.as_turn() for m in request.messages]
            # The model learnt its answers under the run's data.system_prompt (chat, predict and eval give it too).
            if config.data.system_prompt is not None and not any(t["role"] == "system" for t in turns):
                turns.insert(0, {"role": "system", "content": config.data.system_prompt})
            try:
                prompt = render(tokenizer, turns, template, add_generation_prompt=True)
            except Exception as exc:  # jinja's TemplateError: e.g. roles that must alternate
                raise ApiError(400, f"the run's chat template refused these messages: {exc}", param="messages") from exc
            return _answer(worker, name, prompt, sampling_of(request, strip=True), request, chat=True)

        @router.post("/completions")
        def completions(request: CompletionRequest):
            check_model(request.model)
            prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
            sampling = sampling_of(request, strip=False)
            if len(prompts) == 1:
                return _answer(worker, name, prompts[0], sampling, request, chat=False)
            if request.stream:
                raise ApiError(400, "streaming answers one prompt at a time: send a single prompt", param="prompt")
            return _completion_body(name, _generate_many(worker, prompts, sampling), chat=False)

    else:
        task = get_task(config.task)
        # The server's inputs use the canonical columns (text, text_pair), not the run's data.columns.
        data_cfg = config.data.model_copy(update={"columns": {}, "on_bad_record": "error"})

        def predict(records: list[dict]) -> list[dict]:
            raw = [RawRecord(r, f"input[{i}]") for i, r in enumerate(records)]
            try:
                examples, _ = task.normalise_prompts(raw, data_cfg)
            except TunesmithError as exc:
                raise ApiError(400, exc.message, param="input") from exc
            return worker.call(lambda: task.predict(model, tokenizer, examples, config, meta))

        if meta.get("scores"):

            @router.post("/rerank")
            def rerank(request: RerankRequest) -> dict:
                check_model(request.model)
                rows = predict([{"text": request.query, "text_pair": d} for d in request.documents])
                ranked = sorted(range(len(rows)), key=lambda i: -rows[i]["score"])[: request.top_n]
                results = []
                for i in ranked:
                    result: dict[str, Any] = {"index": i, "relevance_score": rows[i]["score"]}
                    if request.return_documents:
                        result["document"] = {"text": request.documents[i]}
                    results.append(result)
                return {"id": f"rerank-{uuid.uuid4().hex}", "model": name, "results": results}

        else:

            @router.post("/classify")
            def classify(request: ClassifyRequest) -> dict:
                check_model(request.model)
                texts = [request.input] if isinstance(request.input, str) else request.input
                if not texts:
                    raise ApiError(400, "input: give one text or a list of texts", param="input")
                rows = predict([{"text": t} for t in texts])
                data = []
                for i, row in enumerate(rows):
                    item = {"index": i, **{k: row[k] for k in ("label", "labels", "scores") if k in row}}
                    data.append(item)
                return {"object": "list", "model": name, "data": data}

    app.include_router(router)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    return app


# ---------------------------------------------------------------------------------------------------
# Generation responses


def _generate(worker: ModelWorker, prompt: str, sampling: Sampling) -> list[Output]:
    return _generate_many(worker, [prompt], sampling)[0]


def _generate_many(worker: ModelWorker, prompts: list[str], sampling: Sampling) -> list[list[Output]]:
    """All prompts queued at once, so greedy ones share a batch."""
    try:
        return worker.generate_many(prompts, sampling)
    except PromptTooLong as exc:
        raise ApiError(400, str(exc), param="max_tokens", code="context_length_exceeded") from exc


def _completion_body(name: str, outputs_per_prompt: list[list[Output]], chat: bool) -> dict:
    choices: list[dict] = []
    for output in (o for outputs in outputs_per_prompt for o in outputs):
        choice: dict[str, Any] = {"index": len(choices), "finish_reason": output.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": output.text}
        else:
            choice["text"] = output.text
        choices.append(choice)
    prompt_tokens = sum(outputs[0].prompt_tokens for outputs in outputs_per_prompt)
    completion_tokens = sum(o.completion_tokens for outputs in outputs_per_prompt for o in outputs)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _answer(worker: ModelWorker, name: str, prompt: str, sampling: Sampling, request: _Generation, chat: bool):
    if not request.stream:
        return _completion_body(name, [_generate(worker, prompt, sampling)], chat)
    # n choices stream as n generations, one after another in the worker, each chunk naming its choice
    # (OpenAI's `index`). A seed is offset per choice so that sampled choices differ yet repeat.
    sinks = [worker.stream(prompt, _choice_sampling(sampling, k)) for k in range(sampling.n)]
    streams = [(sink, iter(sink)) for sink in sinks]
    try:
        next(streams[0][1])  # the worker accepted the prompt; a refused one is still a 400, not a broken stream
    except PromptTooLong as exc:
        for sink in sinks:
            sink.cancelled.set()
        raise ApiError(400, str(exc), param="max_tokens", code="context_length_exceeded") from exc
    include_usage = bool((request.stream_options or {}).get("include_usage"))
    return StreamingResponse(_events(name, streams, chat, include_usage), media_type="text/event-stream")


def _choice_sampling(sampling: Sampling, k: int) -> Sampling:
    seed = None if sampling.seed is None else sampling.seed + k
    return replace(sampling, n=1, seed=seed)


def _events(name: str, streams: list[tuple[Any, Iterator[str]]], chat: bool, include_usage: bool) -> Iterator[str]:
    """OpenAI's server-sent events: per choice, one chunk per text piece and a last chunk with its finish
    reason; then (when asked) one with the usage of all choices, then `data: [DONE]`."""
    ident, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(index: int, text: str | None, finish_reason: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        body = {"id": ident, "object": kind, "created": created, "model": name, "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    prompt_tokens = completion_tokens = 0
    try:
        for index, (sink, pieces) in enumerate(streams):
            if chat:
                yield chunk(index, None, None, first=True)
            try:
                for piece in pieces:
                    if piece:  # "" marks a generation's start (the first choice's was read above)
                        yield chunk(index, piece, None)
            except Exception as exc:  # headers are sent: the error can only be an event of its own
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
                return
            output = sink.output
            yield chunk(index, None, output.finish_reason)
            prompt_tokens = output.prompt_tokens  # the same prompt for every choice, counted once as OpenAI does
            completion_tokens += output.completion_tokens
        if include_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            body = {"id": ident, "object": kind, "created": created, "model": name, "choices": [], "usage": usage}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        for sink, _ in streams:
            sink.cancelled.set()  # the client went away (or all is sent): stop generating for nobody


# ---------------------------------------------------------------------------------------------------
# Entry point


def serve(
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings = ServeSettings(),
    allow_pickle: bool = False,
) -> None:
    """Load the run once and answer requests until interrupted."""
    import uvicorn

    tuned = load_tuned(run_dir, allow_pickle=allow_pickle)
    name = Path(run_dir).resolve().name
    app = build_app(tuned, name, settings)
    if host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"warning: serving on {host} without an API key: anyone who can reach it can use the model")
    print(f"serving {name} ({tuned.config.task}) on http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")
