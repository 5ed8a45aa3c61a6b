"""`tunesmith serve` (issue 16, part 4): the OpenAI-compatible server, tested end to end with the official
`openai` client against a real uvicorn server on a free local port, serving a tiny trained run."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import TINY_ENCODER, _save_tiny, save_tiny_encoder, tiny_llama_config, train_chat_run

from tunesmith import pipeline
from tunesmith.config import load_config

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from tunesmith.serve.app import ServeSettings, build_app  # noqa: E402
from tunesmith.serve.generation import Generator, Sampling  # noqa: E402
from tunesmith.serve.worker import ModelWorker, _Generate  # noqa: E402

KEY = "test-key"
LIMIT = 64
QUESTIONS = [
    "My printer is offline again.",
    "How do I reset my password?",
    "The VPN disconnects every hour.",
    "Can I get a second monitor?",
]


@contextmanager
def running(app):
    """A real uvicorn server for `app` on a free local port, in a background thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; the server takes the bound socket over
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tokenizer) -> Path:
    """A tiny LoRA chat run whose answers differ from prompt to prompt. conftest's tiny_llama_dir (tied
    embeddings, small init) answers every prompt with nothing after a few steps, which would make every
    comparison below pass trivially; untied weights drawn wider give long, prompt-dependent text."""
    folder = tmp_path_factory.mktemp("serve")
    config = tiny_llama_config(tokenizer, tie_word_embeddings=False, initializer_range=0.3)
    model = _save_tiny(folder / "model", config, tokenizer)
    return train_chat_run(folder, model, "train.learning_rate=1e-3", "eval.compare_base=false")


@pytest.fixture(scope="module")
def tuned(chat_run):
    return pipeline.load_tuned(chat_run)


@pytest.fixture(scope="module")
def server(chat_run, tuned):
    app = build_app(tuned, chat_run.name, ServeSettings(api_key=KEY, max_tokens_limit=LIMIT, max_batch=4))
    with running(app) as port:
        yield port, app


@pytest.fixture(scope="module")
def client(server):
    port, _ = server
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)


def _reference(tuned, messages, max_new_tokens=16) -> str:
    """`tunesmith chat`'s answer: tasks/chat.py generate (called while the server is idle)."""
    from tunesmith.tasks.chat import generate

    model, tokenizer, config, _ = tuned
    return generate(
        model,
        tokenizer,
        [messages],
        max_new_tokens=max_new_tokens,
        batch_size=1,
        chat_template=config.data.chat_template,
    )[0]


def _ask(client, run, question, **params):
    return client.chat.completions.create(
        model=run.name, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=16, **params
    )


def test_chat_at_temperature_0_equals_tunesmith_generate(client, chat_run, tuned):
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    expected = _reference(tuned, messages)
    reply = _ask(client, chat_run, QUESTIONS[0])
    assert expected, "the tiny run answers something, so the comparison means something"
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == chat_run.name
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chunks_join_to_the_non_streamed_answer(client, chat_run):
    for params in ({}, {"stop": ["e"]}):
        whole = _ask(client, chat_run, QUESTIONS[1], **params).choices[0]
        chunks = list(
            _ask(client, chat_run, QUESTIONS[1], stream=True, stream_options={"include_usage": True}, **params)
        )
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(pieces) == whole.message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_concurrent_requests_each_equal_their_single_answer(client, chat_run):
    singles = [_ask(client, chat_run, q).choices[0].message.content for q in QUESTIONS]
    assert len(set(singles)) == len(QUESTIONS), "distinct answers, so a mix-up between requests would show"
    answers: dict[int, str] = {}

    def ask(i):
        answers[i] = _ask(client, chat_run, QUESTIONS[i]).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [answers[i] for i in range(len(QUESTIONS))] == singles


def test_waiting_greedy_requests_run_as_one_batch_with_the_single_answers(tuned):
    # Queue four before the worker starts, so it certainly finds them waiting together.
    model, tokenizer, config, _ = tuned
    from tunesmith.data.chat_template import render, template_for

    template = template_for(tokenizer, config.data.chat_template)
    prompts = [render(tokenizer, [{"role": "user", "content": q}], template, True) for q in QUESTIONS]
    sampling = Sampling(max_tokens=12, temperature=0, strip=True)
    generator = Generator(model, tokenizer)
    singles = [generator.batch([p], [sampling])[0][0].text for p in prompts]
    worker = ModelWorker(generator, max_batch=8)
    jobs = [_Generate(p, sampling) for p in prompts]
    for job in jobs:
        worker._queue.put(job)
    worker.start()
    try:
        assert [job.result.result(timeout=120)[0].text for job in jobs] == singles
    finally:
        worker.stop()
    assert worker.batch_sizes == [4]
    assert singles[0] == _reference(tuned, [{"role": "user", "content": QUESTIONS[0]}], 12)


def test_stop_strings_cut_the_answer(client, chat_run):
    whole = _ask(client, chat_run, QUESTIONS[2]).choices[0].message.content
    assert len(whole) >= 10
    stop = whole[3:10]
    cut = _ask(client, chat_run, QUESTIONS[2], stop=stop).choices[0]
    assert cut.message.content == whole[: whole.index(stop)].strip()
    assert cut.finish_reason == "stop"


def test_completions_n_and_seed(client, chat_run):
    greedy = client.completions.create(model=chat_run.name, prompt="Hello", max_tokens=8, temperature=0, n=2)
    assert len(greedy.choices) == 2 and greedy.choices[0].text == greedy.choices[1].text
    assert greedy.usage.completion_tokens == 2 * (greedy.usage.completion_tokens // 2)

    def sampled():
        params = dict(model=chat_run.name, prompt="Hello", max_tokens=8, temperature=1.0, seed=7)
        return client.completions.create(**params).choices[0].text

    assert sampled() == sampled()

    def single(prompt):
        return client.completions.create(model=chat_run.name, prompt=prompt, max_tokens=8, temperature=0).choices[0]

    many = client.completions.create(model=chat_run.name, prompt=["Hello", "Goodbye"], max_tokens=8, temperature=0)
    assert [c.text for c in many.choices] == [single("Hello").text, single("Goodbye").text]
    assert [c.index for c in many.choices] == [0, 1]


def test_models_lists_the_run(client, chat_run):
    assert [m.id for m in client.models.list().data] == [chat_run.name]


def test_api_key_is_required(server, chat_run):
    port, _ = server
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    response = httpx.get(f"http://127.0.0.1:{port}/v1/models")
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"  # health needs no key


def test_limits_and_validation_give_clear_400s(server, client, chat_run):
    with pytest.raises(openai.BadRequestError) as above:
        client.chat.completions.create(
            model=chat_run.name, messages=[{"role": "user", "content": "hi"}], max_tokens=LIMIT + 1
        )
    assert f"limit of {LIMIT}" in str(above.value) and above.value.body["param"] == "max_tokens"

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=chat_run.name, messages=[{"role": "user", "content": "hi"}], temperature=5)
    assert bad.value.body["param"] == "temperature"

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])

    port, _ = server
    huge = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        content=b'{"prompt": "' + b"x" * 1_100_000 + b'"}',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]
    broken = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        content=b'{"prompt": ',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------------
# A classifier run: /v1/classify


def _classifier_run(folder: Path, rows: list[dict], tokenizer) -> Path:
    """A tiny BERT on `tokenizer` (MiniLM's) trained a few steps on `rows` (a csv of their columns)."""
    import csv

    from transformers import BertConfig

    save_tiny_encoder(folder / "bert", BertConfig(vocab_size=len(tokenizer), **TINY_ENCODER), tokenizer)
    with (folder / "data.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    overrides = [
        "task=text-classification",
        f"model.name={folder / 'bert'}",
        f"data.train={folder / 'data.csv'}",
        "data.max_length=32",
        f"output.dir={folder / 'runs'}",
        "train.batch_size=16",
        "train.max_steps=6",
        "train.eval_every=6",
        "train.learning_rate=1e-2",
        "train.precision=fp32",
        "method.name=full",
    ]
    return pipeline.train(load_config(None, overrides)).run_dir


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, minilm_tokenizer):
    rows = [{"text": f"{word} item {i}", "label": word} for i in range(40) for word in ("apple", "car")]
    return _classifier_run(tmp_path_factory.mktemp("serve-classifier"), rows, minilm_tokenizer)


def test_classify_answers_labels_with_scores(classifier_run):
    tuned = pipeline.load_tuned(classifier_run)
    app = build_app(tuned, classifier_run.name)
    with running(app) as port:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"input": ["apple item 3", "car item 5"]})
        single = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"input": "apple item 3"})
        chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": []})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert all(d["label"] in ("apple", "car") and set(d["scores"]) == {"apple", "car"} for d in data)
    assert abs(sum(data[0]["scores"].values()) - 1) < 1e-3
    assert single.json()["data"][0] == data[0]
    assert chat.status_code == 404  # a classifier serves no generation
    assert "message" in chat.json()["error"]


# ---------------------------------------------------------------------------------------------------
# The command


def test_serve_command_defaults_to_localhost_and_reads_the_key_from_the_environment(monkeypatch):
    import argparse

    import tunesmith.serve.app as app_module
    from tunesmith.serve.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    calls = []
    monkeypatch.setattr(app_module, "serve", lambda run_dir, **kwargs: calls.append((run_dir, kwargs)))
    monkeypatch.setenv("TUNESMITH_API_KEY", "from-env")
    args = parser.parse_args(["serve", "runs/x", "--max-batch", "2"])
    args.func(args)
    run_dir, kwargs = calls[0]
    assert run_dir == "runs/x" and kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8000
    assert kwargs["settings"].api_key == "from-env" and kwargs["settings"].max_batch == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "runs/x", "--max-batch", "0"])


def test_rerank_returns_documents_sorted_by_score(tmp_path, minilm_tokenizer):
    rows = [
        {"text": f"which {topic} {i}", "text_pair": f"{doc} {i}", "score": float(topic == doc)}
        for i in range(20)
        for topic in ("apple", "car")
        for doc in ("apple", "car")
    ]
    run = _classifier_run(tmp_path, rows, minilm_tokenizer)
    app = build_app(pipeline.load_tuned(run), run.name)
    documents = ["car 3", "apple 3", "car 7"]
    with running(app) as port:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/rerank", json={"query": "which apple 3", "documents": documents, "top_n": 2}
        )
        classify = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"input": "x"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 2
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(r["document"]["text"] == documents[r["index"]] for r in results)
    assert classify.status_code == 404  # a reranker serves /v1/rerank only


def test_streaming_n_choices_each_join_to_their_non_streamed_answer(client, chat_run):
    # Greedy: both choices are the single answer. Sampled with a seed: each streamed choice repeats.
    whole = _ask(client, chat_run, QUESTIONS[0]).choices[0].message.content
    chunks = list(_ask(client, chat_run, QUESTIONS[0], stream=True, n=2, stream_options={"include_usage": True}))
    joined = {0: "", 1: ""}
    finished = {}
    for c in chunks:
        for choice in c.choices:
            joined[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert joined == {0: whole, 1: whole} and set(finished) == {0, 1}
    single = _ask(client, chat_run, QUESTIONS[0]).usage
    assert chunks[-1].usage.completion_tokens == 2 * single.completion_tokens
    assert chunks[-1].usage.prompt_tokens == single.prompt_tokens

    def sampled_stream():
        params = dict(model=chat_run.name, prompt="Hello", max_tokens=8, temperature=1.0, seed=7, n=2, stream=True)
        texts = {0: "", 1: ""}
        for c in client.completions.create(**params):
            for choice in c.choices:
                texts[choice.index] += choice.text
        return texts

    first = sampled_stream()
    assert first == sampled_stream()
